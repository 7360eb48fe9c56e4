"""The search service: handlers for the claimed search routes.

``SearchService(ranker, config)`` builds the :class:`~selproxy.handler.Route`\\ s
that the core claims (:meth:`SearchService.routes`), and keeps the counters that
``GET /_selproxy/status`` shows (:meth:`SearchService.status`).  Each handler
runs the sans-io steps (:mod:`.overrides`, :mod:`.rewrite`, :mod:`.extract`,
:mod:`.respond`) around two awaits: the engine, then the ranker.

The ranker fails open: an exception, a missed deadline or too many pending
rank calls give the client the engine's order, cut to its page, never an error.
Errors reaching the engine (:class:`~selproxy.errors.UpstreamUnavailable` ...)
propagate to the core, which answers them in Elasticsearch's error shape.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import time
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from .._trace import TRACE_CONTEXT, trace_context
from ..handler import Headers, NotifyRoute, Request, Response, Route, Upstream, header_value
from ..metrics import DurationHistogram, outcome_labels
from ..rankers.adapter import RankerAdapter, RankFailed, RankJob, RankTiming, aclose_method
from ..rankers.base import Ranker
from . import _json
from .config import SearchConfig, SearchRoute
from .extract import FieldSpec, document_text, parse_field_spec
from .overrides import Overrides, extract_overrides
from .relevance import RelevanceOps
from .respond import (accepts_gzip, apply_es, apply_params, client_response, decode_body,
                      format_server_timing, hits_at, passthrough_response, skip_reason)
from .rewrite import (SearchPlan, plan_msearch, plan_params_search, plan_search, query_params,
                      request_body, rewrite_query_string)
from .routes import default_routes, split_indices
from .shadow import ShadowMode
from .source_filter import SourceFilterTooCostly
from .window_cache import WindowCache, WriteLog

__all__ = ("SearchService", "SearchStats", "document_key", "hit_texts")

log = logging.getLogger("selproxy.search")

Outcome = Tuple[str, str]  # ("applied" | "skipped" | "fallback", reason)
APPLIED: Outcome = ("applied", "")


def _header(outcome: Outcome) -> str:
    kind, reason = outcome
    if not reason:
        return kind
    # An applied search's details are parameters of their own (partial=4/50).
    return f"{kind}; {reason}" if kind == "applied" else f"{kind}; reason={reason}"


class SearchStats:
    """Counters and recent timings of the claimed searches (one per ``_msearch`` item)."""

    def __init__(self, samples: int = 2048) -> None:
        self.searches = 0
        self.reranked = 0
        self.partial = 0
        self.skipped: Dict[str, int] = collections.Counter()
        self.fallback: Dict[str, int] = collections.Counter()
        self.rank_seconds: Deque[float] = collections.deque(maxlen=samples)
        self.upstream_seconds: Deque[float] = collections.deque(maxlen=samples)
        # For the metrics (selproxy.metrics): outcomes by (outcome, reason)
        # label, and the rank durations as histograms.
        self.outcomes: Dict[Tuple[str, str], int] = collections.Counter()
        self.rank_duration = DurationHistogram()
        self.rank_queue_duration = DurationHistogram()
        self._reasons: Dict[str, Set[str]] = {}

    def record(self, outcome: Outcome) -> None:
        self.searches += 1
        kind, reason = outcome
        self.outcomes[outcome_labels(kind, reason, self._reasons)] += 1
        if kind == "applied":
            self.reranked += 1
            if "partial=" in reason:
                self.partial += 1
        elif kind == "skipped":
            self.skipped[reason] += 1
        else:
            self.fallback[reason] += 1

    @staticmethod
    def _percentiles(samples: Sequence[float]) -> Dict[str, Any]:
        if not samples:
            return {"count": 0}
        ordered = sorted(samples)

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)

        return {"count": len(ordered), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
                "max": round(ordered[-1] * 1e3, 3)}

    def snapshot(self) -> Dict[str, Any]:
        return {
            "searches": self.searches,
            "reranked": self.reranked,
            "partial": self.partial,
            "skipped": dict(self.skipped),
            "fallback": dict(self.fallback),
            "rank_ms": self._percentiles(self.rank_seconds),
            "upstream_ms": self._percentiles(self.upstream_seconds),
        }


def document_key(hit: Any, text: str) -> Tuple[str, str, str]:
    """A hit's key in the embedding store: its index, its ``_id`` and a hash
    of the exact text the ranker gets for it, so a changed document misses.
    ``selproxy embed`` keys what it stores the same way."""
    doc_id = hit.get("_id", hit.get("id")) if isinstance(hit, dict) else None
    index = hit.get("_index") if isinstance(hit, dict) else None
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
    return (str(index or ""), str(doc_id if doc_id is not None else ""), digest)


def hit_texts(hits: Sequence[Any], fields: Sequence[FieldSpec], max_chars: int,
              source_key: str = "_source", drop: Sequence[str] = ()) -> List[str]:
    """The text the ranker gets for each hit: ``fields`` (parsed
    ``--text-field`` specs; empty: every string of the source), each truncated
    to ``max_chars``.  The search path and ``selproxy embed`` both call this,
    so the text hashes in their store keys agree.  ``drop`` names keys of a
    hit that is itself the document (Solr) that are not its text."""
    texts = []
    for hit in hits:
        if not isinstance(hit, dict):
            texts.append("")
        elif drop and not fields:
            doc = {k: v for k, v in hit.items() if k not in drop}
            texts.append(document_text({"_source": doc}, None, max_chars))
        else:
            texts.append(document_text(hit, fields, max_chars, source_key))
    return texts


def _applied(scores: Sequence[float], window: int) -> Outcome:
    """``applied``, with ``partial=K/N`` when only a prefix was scored and
    ``fusion=off`` when fusion was configured but had no engine scores.  A
    ranker that scored nothing has failed its deadline."""
    if not scores:
        return ("fallback", "deadline")
    details = []
    if len(scores) < window:
        details.append(f"partial={len(scores)}/{window}")
    if getattr(scores, "fusion", "") == "off":
        details.append("fusion=off")
    return ("applied", "; ".join(details))


def _engine_scores(hits: Sequence[Any]) -> Optional[List[float]]:
    """The engine's score of each hit (``_score`` in Elasticsearch, ``score``
    in Solr), or None when any hit has none (a sort, an unscored query):
    fusion then falls back to the model alone."""
    scores = []
    for hit in hits:
        score = hit.get("_score", hit.get("score")) if isinstance(hit, dict) else None
        if not isinstance(score, (int, float)) or isinstance(score, bool) or score != score:
            return None
        scores.append(float(score))
    return scores


def _with_body(headers: Headers, body: bytes) -> Headers:
    """``headers`` for a new, uncompressed ``body`` (the core frames it:
    Content-Length is its to set, see :mod:`selproxy.handler`)."""
    return [(k, v) for k, v in headers if k.lower() != "content-encoding"]


class _Prepared:
    """What every claimed request shares: overrides stripped, body decoded."""

    __slots__ = ("overrides", "target", "headers", "path", "query_string", "indices", "started")

    def __init__(self, request: Request, max_topn: int) -> None:
        # When the search reached the service: a capture line's total time.
        self.started = time.perf_counter()
        self.overrides, self.target, self.headers = extract_overrides(
            request.target, request.headers, max_topn)
        self.path, _, self.query_string = self.target.partition("?")
        # The core's RouteMatch captured the route's segments.
        self.indices = split_indices(request.params.get("index", ""))

    def target_with(self, changes: Mapping[str, Optional[str]]) -> str:
        query = rewrite_query_string(self.query_string, changes)
        return self.path + ("?" + query if query else "")


class SearchService:
    """Handlers and counters for the claimed search routes.

    ``ranker`` is any object with ``rank(query, docs)``; the rest of the
    contract is optional (see :mod:`selproxy.rankers.base`).
    """

    def __init__(self, ranker: Ranker, config: Optional[SearchConfig] = None, *,
                 write_log: Optional[WriteLog] = None) -> None:
        self.config = config or SearchConfig()
        self.adapter = RankerAdapter(ranker, threads=self.config.ranker_threads,
                                     max_pending=self.config.max_pending_ranks)
        self.stats = SearchStats()
        self._fields: Dict[SearchRoute, Tuple[FieldSpec, ...]] = {}
        # A ranker (or the one a micro-batcher wraps) that can embed a query
        # ahead: it does so while the engine searches (see _prefetch).
        model = getattr(ranker, "ranker", ranker)
        prefetch = getattr(model, "prefetch_query", None)
        self._prefetch_query = prefetch if callable(prefetch) else None
        # -- window cache and shadow mode (window_cache.py, shadow.py) --
        cfg = self.config
        self._ranker_name = str(getattr(model, "name", None) or type(model).__name__)
        self.window_cache = WindowCache(
            max_entries=cfg.cache_entries, max_bytes=cfg.cache_bytes, ttl=cfg.cache_ttl,
            settle=cfg.cache_settle, by_index=cfg.cache_invalidation == "index",
            first_page=cfg.cache_first_page, write_log=write_log)
        self.shadow = ShadowMode(enabled=cfg.shadow, ring=cfg.shadow_ring,
                                 concurrency=cfg.shadow_concurrency, queue=cfg.shadow_queue,
                                 record_queries=cfg.shadow_record_queries)
        # -- end window cache and shadow mode --
        # [relevance] --interleave / --capture (issue 13); None when both are off.
        self.relevance = RelevanceOps.from_config(self)

    # -- public surface -------------------------------------------------

    def search_routes(self) -> Tuple[SearchRoute, ...]:
        routes = self.config.routes if self.config.routes is not None else default_routes()
        return tuple(routes) + tuple(self.config.extra_routes)

    def routes(self) -> List[Route]:
        """The core's routes, one per :class:`SearchRoute`."""
        routes = [Route(tuple(r.methods), r.path, self._handler(r), r.name or r.kind)
                  for r in self.search_routes()]
        if self.relevance is not None:  # [relevance] POST /_selproxy/click
            routes += self.relevance.routes()
        return routes

    def notify_routes(self) -> List[NotifyRoute]:
        """Writes the core passes through and tells the window cache of
        (listed after every claimed route); none when no route caches."""
        if not any(self._caches(r) for r in self.search_routes()):
            return []
        return self.window_cache.notify_routes()

    def status(self) -> Dict[str, Any]:
        """Counters for ``GET /_selproxy/status`` (JSON-ready)."""
        snapshot = self.stats.snapshot()
        ranker = self.adapter.ranker
        # The model, not its wrapper: a MicroBatcher holds the ranker it batches for.
        model = getattr(ranker, "ranker", ranker)
        snapshot["ranker"] = getattr(model, "name", None) or type(model).__name__
        owners = [("model", model)] if model is ranker else [("batching", ranker), ("model", model)]
        for key, owner in owners:
            stats = getattr(owner, "stats", None)
            if callable(stats):
                try:
                    snapshot[key] = stats()
                except Exception as exc:  # a status page never fails on a ranker's stats
                    snapshot[key] = {"error": type(exc).__name__}
        snapshot["pending_ranks"] = self.adapter.pending
        snapshot["topn"] = self.config.topn
        snapshot["rank_deadline"] = self.config.rank_deadline
        snapshot["window_cache"] = self.window_cache.stats()   # window cache
        snapshot["shadow"] = self.shadow.stats()               # shadow mode
        if self.relevance is not None:  # [relevance] "interleaving" and "capture" sections
            snapshot.update(self.relevance.status())
        return snapshot

    def close(self) -> None:
        self.shadow.close()
        if self.relevance is not None:  # [relevance] arm rankers, capture writer
            self.relevance.close()
        self.adapter.close()

    async def aclose(self) -> None:
        """Close the ranker too, where it has work of its own on the loop (a
        micro-batcher's worker), then the adapter's threads."""
        aclose = aclose_method(self.adapter.ranker)
        if aclose is not None:
            await aclose()
        if self.relevance is not None:  # [relevance]
            await self.relevance.aclose()
        self.close()

    # -- handlers -------------------------------------------------------

    def _handler(self, route: SearchRoute) -> Any:
        method = {"search": self._search, "msearch": self._msearch, "params": self._params}[route.kind]
        if route.kind == "params" and route.api is None:
            raise ValueError(f"route {route.path} of kind 'params' needs an api description")

        async def handle(request: Request, upstream: Upstream) -> Response:
            # The caller's trace context, for the calls a ranker makes on its
            # behalf (see selproxy._trace).
            token = TRACE_CONTEXT.set(trace_context(request.headers))
            try:
                return await method(route, request, upstream)
            finally:
                TRACE_CONTEXT.reset(token)

        handle.__qualname__ = f"SearchService.{route.kind}:{route.path}"
        return handle

    def _field_specs(self, route: SearchRoute) -> Tuple[FieldSpec, ...]:
        specs = self._fields.get(route)
        if specs is None:
            names = route.text_fields if route.text_fields is not None else self.config.text_fields
            specs = tuple(parse_field_spec(n, self.config.max_field_chars) for n in names)
            self._fields[route] = specs
        return specs

    def _prefetch(self, queries: Sequence[str]) -> None:
        """Let the ranker embed the queries while the engine searches: the
        query's own embedding is most of a warm search's rank time.  It
        never blocks, and a ranker that cannot take it now drops it."""
        if self._prefetch_query is not None:
            for query in queries:
                if query:
                    try:
                        self._prefetch_query(query)
                    except Exception as exc:  # a hint: the search embeds the query itself
                        log.debug("query prefetch failed: %s", type(exc).__name__)

    def _caches(self, route: SearchRoute) -> bool:
        """Whether the window cache serves ``route`` (only ``_search`` routes)."""
        wanted = self.config.window_cache if route.window_cache is None else route.window_cache
        return wanted and route.kind == "search" and not self.shadow.applies(route)

    def _deadline(self, route: SearchRoute) -> float:
        return route.rank_deadline or self.config.rank_deadline

    async def _forward(self, upstream: Upstream, method: str, target: str, headers: Headers,
                       body: bytes) -> Tuple[Response, float]:
        started = time.perf_counter()
        response = await upstream.request(method, target, headers, body,
                                          timeout=self.config.upstream_timeout)
        elapsed = time.perf_counter() - started
        self.stats.upstream_seconds.append(elapsed)
        return response, elapsed

    async def _skip(self, upstream: Upstream, request: Request, prep: _Prepared,
                    reasons: Sequence[str]) -> Response:
        """Send the request on as the client sent it (overrides stripped)."""
        response, elapsed = await self._forward(upstream, request.method, prep.target,
                                                prep.headers, request.body)
        outcomes = [("skipped", r) for r in reasons]
        for outcome in outcomes:
            self.stats.record(outcome)
        return passthrough_response(response, ", ".join(map(_header, outcomes)),
                                    format_server_timing(elapsed), prep.overrides.ignored)

    def _verbatim(self, response: Response, prep: _Prepared, outcomes: Sequence[Outcome],
                  upstream_s: float) -> Response:
        for outcome in outcomes:
            self.stats.record(outcome)
        return passthrough_response(response, ", ".join(map(_header, outcomes)),
                                    format_server_timing(upstream_s), prep.overrides.ignored)

    def _texts(self, hits: Sequence[Any], route: SearchRoute, source_key: str = "_source",
               drop: Sequence[str] = ()) -> List[str]:
        return hit_texts(hits, self._field_specs(route), self.config.max_field_chars,
                         source_key, drop)

    def _window_job(self, route: SearchRoute, plan: SearchPlan, hits: Sequence[Any],
                    source_key: str = "_source", drop: Sequence[str] = ()) -> Optional[RankJob]:
        """The rank job for the plan's window of ``hits``, or None when no hit
        of it has text to rank (reason ``no_doc_text``)."""
        window = hits[:plan.window]
        texts = self._texts(window, route, source_key, drop)
        return self._job(plan, window, texts) if any(texts) else None

    def _job(self, plan: SearchPlan, hits: Sequence[Any], texts: List[str]) -> RankJob:
        keys = None
        if self.adapter.wants_keys:
            keys = [document_key(h, t) for h, t in zip(hits, texts)]
        engine_scores = None
        if self.adapter.wants_engine_scores:
            engine_scores = _engine_scores(hits)
        return RankJob(plan.query, texts, keys, engine_scores)

    async def _rank(self, route: SearchRoute, jobs: Sequence[RankJob]
                    ) -> Tuple[Optional[List[List[float]]], List[Outcome], RankTiming]:
        """Scores and an outcome for each job (the same failure for all)."""
        started = time.perf_counter()
        try:
            scores, timing = await self.adapter.rank(jobs, self._deadline(route))
        except RankFailed as failure:
            # The time it waited, so a missed deadline shows as one.
            return (None, [("fallback", failure.reason)] * len(jobs),
                    RankTiming(rank=time.perf_counter() - started))
        self.stats.rank_seconds.append(timing.rank)
        self.stats.rank_duration.observe(timing.rank)
        self.stats.rank_queue_duration.observe(timing.queue)
        return scores, [_applied(s, len(job.docs)) for s, job in zip(scores, jobs)], timing

    async def _rank_one(self, route: SearchRoute, job: RankJob
                        ) -> Tuple[Optional[List[float]], Outcome, RankTiming]:
        ranked, outcomes, timing = await self._rank(route, [job])
        return (ranked[0] if ranked else None), outcomes[0], timing

    def _answer(self, request: Request, response: Response, prep: _Prepared, doc: Any,
                outcomes: Sequence[Outcome], upstream_s: float, timing: RankTiming) -> Response:
        for outcome in outcomes:
            self.stats.record(outcome)
        log.debug("search %s %s: %s", request.method, prep.path, outcomes)
        return client_response(response, _json.dumps(doc), gzip_ok=accepts_gzip(request.headers),
                               gzip_level=self.config.gzip_level,
                               rerank=", ".join(map(_header, outcomes)),
                               timing=format_server_timing(upstream_s, timing.queue, timing.rank,
                                                           timing.encode, timing.score),
                               ignored=prep.overrides.ignored)

    async def _rerank(self, route: SearchRoute, request: Request, upstream: Upstream, prep: _Prepared,
                      plan: SearchPlan, response: Response, upstream_s: float, hits_path: Sequence[str],
                      cut_page: Callable[[Any, Optional[List[float]]], None],
                      source_key: str = "_source", drop: Sequence[str] = (),
                      relevance: bool = False, cache_key: Optional[bytes] = None,
                      cache_started: float = 0.0) -> Response:
        """The rerank step of one search once the engine has answered, shared
        by ``_search`` and ``_params``: read the hits at ``hits_path``, rank
        the plan's window, cut the client's page (``cut_page(doc, scores)``,
        in place) and answer.  A response it cannot rerank goes back as the
        engine sent it.  ``relevance``: the relevance operations (interleaving,
        capture) apply; today only to Elasticsearch ``_search``.  ``cache_key``:
        the window cache keeps this search's window under it, once complete."""
        if response.status != 200:
            return self._verbatim(response, prep, [("skipped", "upstream_status")], upstream_s)
        try:
            decoded = decode_body(response, self.config.max_decoded_body)
            doc = _json.loads(decoded)
            hits = hits_at(doc, hits_path)
            if hits is None:
                raise TypeError(f"{'.'.join(hits_path)} is not a list of objects")
        except (ValueError, TypeError) as exc:
            return self._verbatim(response, prep, [("skipped", skip_reason(exc, "format"))], upstream_s)
        if not hits:
            return self._verbatim(response, prep, [("skipped", "no_hits")], upstream_s)

        window = hits[:plan.window]
        texts = self._texts(window, route, source_key, drop)
        ops = self.relevance if relevance else None  # [relevance] interleave, or sample for capture
        if ops is not None and ops.interleave is not None and any(texts):
            try:
                return await ops.interleaved(route, request, response, prep, plan, doc, window,
                                             texts, upstream_s)
            except SourceFilterTooCostly as exc:
                return await self._skip(upstream, request, prep, [exc.reason])
        captured = ops.sample(prep, plan, window, texts) if ops is not None else None
        if not any(texts):
            scores, outcome, timing = None, ("skipped", "no_doc_text"), RankTiming()
        else:
            scores, outcome, timing = await self._rank_one(route, self._job(plan, window, texts))
        try:
            cut_page(doc, scores)
        except SourceFilterTooCostly as exc:
            return await self._skip(upstream, request, prep, [exc.reason])
        if cache_key is not None:   # window cache: keep a complete ranking
            self.window_cache.keep(cache_key, response, decoded, scores, outcome, plan, hits=len(hits),
                                   started=cache_started, indices=prep.indices)
        answer = self._answer(request, response, prep, doc, [outcome], upstream_s, timing)
        if captured is not None and ops is not None:  # [relevance] queue the capture line
            answer = ops.captured(captured, answer, doc, scores, _header(outcome), timing, upstream_s)
        return answer

    def _plan_kwargs(self, route: SearchRoute, overrides: Overrides) -> Dict[str, Any]:
        return dict(topn=route.topn or self.config.topn, overrides=overrides,
                    include=self.config.include_indices, exclude=self.config.exclude_indices)

    async def _search(self, route: SearchRoute, request: Request, upstream: Upstream) -> Response:
        prep = _Prepared(request, self.config.max_topn)
        try:
            raw = request_body(request, self.config.max_decoded_body)
            body = _json.loads(raw) if raw.strip() else None
        except ValueError as exc:  # not JSON, or not gzip (_inflate.gunzip); too costly to decode
            return await self._skip(upstream, request, prep, [skip_reason(exc, "bad_request")])
        if body is not None and not isinstance(body, dict):
            return await self._skip(upstream, request, prep, ["bad_request"])
        plan = plan_search(body, query_params(prep.query_string), prep.indices,
                           query_path=route.query_path, **self._plan_kwargs(route, prep.overrides))
        if plan.skip:
            return await self._skip(upstream, request, prep, [plan.skip])
        # -- shadow mode (shadow.py): the engine's answer, the rerank after it --
        if self.shadow.applies(route):
            return await self.shadow.search(self, route, request, upstream, prep, plan)
        # -- window cache (window_cache.py): a later page from a kept window --
        cache_key, cache_started = None, time.monotonic()
        if self._caches(route):
            cache_key = self.window_cache.key_for(route, self._ranker_name, prep, plan, body)
            cached = self.window_cache.page(cache_key, plan) if self.window_cache.serves(plan.offset) else None
            if cached is not None:
                return self._answer(request, cached[0], prep, cached[1], [cached[2]], 0.0, RankTiming())
        # -- end window cache --
        self._prefetch([plan.query])

        if plan.body is not None:
            new_body = _json.dumps(plan.body)
            headers = _with_body(prep.headers, new_body)
        else:
            new_body, headers = request.body, prep.headers
        response, upstream_s = await self._forward(
            upstream, request.method, prep.target_with(plan.params), headers, new_body)
        return await self._rerank(route, request, upstream, prep, plan, response, upstream_s,
                                  ("hits", "hits"), lambda doc, scores: apply_es(doc, plan, scores),
                                  relevance=True, cache_key=cache_key, cache_started=cache_started)

    async def _msearch(self, route: SearchRoute, request: Request, upstream: Upstream) -> Response:
        prep = _Prepared(request, self.config.max_topn)
        if self.shadow.applies(route):   # shadow mode: passed through, not recorded
            return await self._skip(upstream, request, prep, ["shadow"])
        try:
            planned = plan_msearch(request_body(request, self.config.max_decoded_body), prep.indices,
                                   query_path=route.query_path, **self._plan_kwargs(route, prep.overrides))
        except ValueError as exc:  # not JSON, or not gzip (_inflate.gunzip); too costly to decode
            return await self._skip(upstream, request, prep, [skip_reason(exc, "bad_request")])
        if planned is None:
            return await self._skip(upstream, request, prep, ["bad_request"])
        plans, new_body = planned
        if all(p.skip for p in plans):
            return await self._skip(upstream, request, prep, [p.skip or "" for p in plans])
        self._prefetch([p.query for p in plans if not p.skip])

        response, upstream_s = await self._forward(
            upstream, request.method, prep.target, _with_body(prep.headers, new_body), new_body)
        if response.status != 200:
            return self._verbatim(response, prep, [("skipped", "upstream_status")] * len(plans),
                                  upstream_s)
        try:
            doc = _json.loads(decode_body(response, self.config.max_decoded_body))
            items = doc["responses"]
            if not isinstance(items, list) or len(items) != len(plans):
                raise TypeError("responses does not match the searches")
        except (ValueError, KeyError, TypeError) as exc:
            return self._verbatim(response, prep, [("skipped", skip_reason(exc, "format"))] * len(plans),
                                  upstream_s)

        outcomes: List[Outcome] = []
        jobs: List[RankJob] = []
        ranked_items: List[Tuple[int, SearchPlan, Dict[str, Any]]] = []
        unranked: List[Tuple[SearchPlan, Dict[str, Any]]] = []
        for i, (plan, item) in enumerate(zip(plans, items)):
            outcomes.append(("skipped", plan.skip) if plan.skip else APPLIED)
            if plan.skip:
                continue
            hits = hits_at(item, ("hits", "hits"))
            if not isinstance(item, dict) or "error" in item or item.get("status", 200) != 200:
                outcomes[i] = ("skipped", "upstream_status")
            elif hits is None:
                outcomes[i] = ("skipped", "format")
            elif not hits:
                outcomes[i] = ("skipped", "no_hits")
            else:
                job = self._window_job(route, plan, hits)
                if job is not None:
                    jobs.append(job)
                    ranked_items.append((i, plan, item))
                else:
                    outcomes[i] = ("skipped", "no_doc_text")
                    unranked.append((plan, item))

        timing = RankTiming()
        try:
            for plan, item in unranked:
                apply_es(item, plan, None)
            if jobs:
                scores, job_outcomes, timing = await self._rank(route, jobs)
                for n, (i, plan, item) in enumerate(ranked_items):
                    apply_es(item, plan, scores[n] if scores else None)
                    outcomes[i] = job_outcomes[n]
        except SourceFilterTooCostly as exc:
            return await self._skip(upstream, request, prep, [exc.reason] * len(plans))
        return self._answer(request, response, prep, doc, outcomes, upstream_s, timing)

    async def _params(self, route: SearchRoute, request: Request, upstream: Upstream) -> Response:
        api = route.api
        assert api is not None
        prep = _Prepared(request, self.config.max_topn)
        if self.shadow.applies(route):   # shadow mode: passed through, not recorded
            return await self._skip(upstream, request, prep, ["shadow"])
        form = ""
        content_type = (header_value(prep.headers, "content-type") or "").lower()
        if request.body and content_type.startswith("application/x-www-form-urlencoded"):
            form = request.body.decode("latin-1")
        client_params = query_params(form)
        client_params.update(query_params(prep.query_string))
        plan = plan_params_search(api, client_params, prep.indices,
                                  **self._plan_kwargs(route, prep.overrides))
        if plan.skip:
            return await self._skip(upstream, request, prep, [plan.skip])
        self._prefetch([plan.query])

        form_params = query_params(form)
        in_form = {k: v for k, v in plan.params.items() if k in form_params}
        in_url = {k: v for k, v in plan.params.items() if k not in form_params}
        body = rewrite_query_string(form, in_form).encode("latin-1") if in_form else request.body
        headers = _with_body(prep.headers, body) if in_form else prep.headers
        response, upstream_s = await self._forward(upstream, request.method,
                                                   prep.target_with(in_url), headers, body)
        return await self._rerank(route, request, upstream, prep, plan, response, upstream_s,
                                  api.hits_path,
                                  lambda doc, scores: apply_params(doc, api, plan, scores, client_params),
                                  source_key="", drop=api.id_fields)
