"""Relevance operations on the search path: interleaving, capture, the click beacon.

:class:`RelevanceOps` is what :class:`~selproxy.search.service.SearchService`
calls from a few marked hook lines (``# [relevance]``) when ``--interleave`` or
``--capture`` is on; the algorithms live in :mod:`.interleave` and
:mod:`.capture`.  Only Elasticsearch ``_search`` routes are interleaved and
captured (not ``_msearch`` items, not Solr).

Every search this module answers gets ``X-Selproxy-Result-Set`` when it was
interleaved or captured: the id a front end sends back with a click
(``POST /_selproxy/click``, body ``{"result_set": ID, "_id": HIT_ID}``).
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import secrets
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import error_body
from ..handler import Request, Response, Route, Upstream
from ..rankers.adapter import RankerAdapter, RankFailed, RankJob, RankTiming
from .capture import CaptureConfig, CaptureWriter, Sampler
from .interleave import (ENGINE_ARM, MAX_CREDITED, CoinSource, ClickBook, InterleaveConfig,
                         ResultSetToken, TokenError, id_digest, page_in_order, ranked_order,
                         team_draft)

__all__ = ("RelevanceOps", "RESULT_SET_HEADER", "CLICK_PATH", "MAX_CLICK_BODY")

log = logging.getLogger("selproxy.search")

RESULT_SET_HEADER = "X-Selproxy-Result-Set"
CLICK_PATH = "/_selproxy/click"
#: Largest click body read; a beacon's is under 600 bytes.
MAX_CLICK_BODY = 4096
#: Longest ``_id`` or ``_index`` a click may name (Elasticsearch's ``_id``
#: limit is 512 bytes).
MAX_CLICK_ID = 512
#: How long a capture-only result-set id takes clicks.
DEFAULT_CLICK_TTL = 1800.0

_JSON = [("Content-Type", "application/json")]


def _error(status: int, es_type: str, reason: str) -> Response:
    # Answered here, not raised: a hostile beacon must not write a log line each.
    return Response(status, list(_JSON), error_body(status, es_type, reason))


def _text_hash(text: str) -> str:
    # The same hash as the embedding store's keys (service.document_key).
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


class _Arm:
    __slots__ = ("name", "adapter", "owned")

    def __init__(self, name: str, adapter: Optional[RankerAdapter], owned: bool) -> None:
        self.name = name
        self.adapter = adapter  # None: the engine's order
        self.owned = owned


class RelevanceOps:
    """Interleaving and capture for one :class:`SearchService`."""

    def __init__(self, service: Any, interleave: Optional[InterleaveConfig],
                 capture: Optional[CaptureConfig]) -> None:
        self.service = service
        self.interleave = interleave
        self.capture = capture
        self.arms: Tuple[_Arm, ...] = ()
        self.book: Optional[ClickBook] = None
        secret_source = interleave if interleave is not None else capture
        assert secret_source is not None
        self.secret = secret_source.secret
        self.click_ttl = interleave.ttl if interleave is not None else DEFAULT_CLICK_TTL
        self.result_sets = 0
        self.not_interleaved: Dict[str, int] = collections.Counter()
        self.clicks_rejected: Dict[str, int] = collections.Counter()
        self.clicks = 0
        if interleave is not None:
            self.arms = tuple(self._arm(spec) for spec in interleave.arms)
            self.book = ClickBook(interleave.max_open, interleave.ttl)
            self.coins = CoinSource(interleave.seed)
        self.writer: Optional[CaptureWriter] = None
        if capture is not None:
            self.writer = CaptureWriter(capture.resolved_path(), capture.max_bytes, capture.backups,
                                        capture.queue)
            self.sampler = Sampler(capture.rate, capture.seed)

    @classmethod
    def from_config(cls, service: Any) -> Optional["RelevanceOps"]:
        config = service.config
        if config.interleave is None and config.capture is None:
            return None
        return cls(service, config.interleave, config.capture)

    def _arm(self, spec: str) -> _Arm:
        if spec == ENGINE_ARM:
            return _Arm(spec, None, False)
        assert self.interleave is not None
        if spec in ("ranker", self.interleave.primary):
            return _Arm(spec, self.service.adapter, False)
        from ..rankers.registry import RankerSpecError, RankerUnavailable, resolve_ranker
        try:
            ranker = resolve_ranker(spec, None)
        except RankerSpecError:
            raise
        except Exception as exc:
            raise RankerUnavailable(f"cannot build the interleaving arm {spec!r}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        config = self.service.config
        return _Arm(spec, RankerAdapter(ranker, threads=config.ranker_threads,
                                        max_pending=config.max_pending_ranks), True)

    # -- surface for the service ----------------------------------------------

    def routes(self) -> List[Route]:
        return [Route(("POST",), CLICK_PATH, self.click, "click")]

    def status(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {}
        if self.interleave is not None and self.book is not None:
            section = self.book.snapshot([arm.name for arm in self.arms])
            section.update(result_sets=self.result_sets, not_interleaved=dict(self.not_interleaved),
                           clicks=self.clicks, rejected_clicks=dict(self.clicks_rejected),
                           ttl=self.interleave.ttl)
            doc["interleaving"] = section
        if self.writer is not None and self.capture is not None:
            section = self.writer.snapshot()
            section.update(rate=self.capture.rate, texts=self.capture.texts)
            doc["capture"] = section
        return doc

    async def aclose(self) -> None:
        for arm in self.arms:
            if arm.owned and arm.adapter is not None:
                aclose = getattr(arm.adapter.ranker, "aclose", None)
                if callable(aclose):
                    await aclose()
        if self.writer is not None:
            # Flushing what is queued takes the writer thread's time, not the loop's.
            await asyncio.get_running_loop().run_in_executor(None, self.writer.close)
        self.close()

    def close(self) -> None:
        for arm in self.arms:
            if arm.owned and arm.adapter is not None:
                arm.adapter.close()
        if self.writer is not None:
            self.writer.close()

    # -- capture ----------------------------------------------------------------

    def sample(self, prep: Any, plan: Any, window: Sequence[Dict[str, Any]],
               texts: Sequence[str]) -> Optional[Dict[str, Any]]:
        """The start of a capture record for this search, or None when it is
        not sampled.  Taken before the page is cut: the window is whole."""
        if self.writer is None or self.capture is None or not self.sampler():
            return None
        hits = []
        for hit, text in zip(window, texts):
            entry: Dict[str, Any] = {"_index": hit.get("_index"), "_id": hit.get("_id"),
                                     "text_sha1": _text_hash(text), "engine_score": hit.get("_score")}
            if self.capture.texts:
                entry["text"] = text
            hits.append(entry)
        return {"type": "search", "v": 1, "time": round(time.time(), 3), "path": prep.path,
                "indices": list(prep.indices), "query": plan.query,
                "page": {"from": plan.offset, "size": plan.size}, "window": hits,
                "started": prep.started}

    def captured(self, record: Dict[str, Any], answer: Response, doc: Any,
                 scores: Optional[Sequence[float]], outcome: str, timing: RankTiming,
                 upstream_s: float, token: Optional[ResultSetToken] = None,
                 interleaving: Optional[Dict[str, Any]] = None) -> Response:
        """Finish ``record`` with what the ranker did and queue it; give the
        answer a result-set id (for clicks) when it has none yet."""
        assert self.writer is not None
        window = len(record["window"])
        if token is None:
            token = self._token(doc, record["page"]["from"], None)
            if token is not None:
                answer.headers.append((RESULT_SET_HEADER, token.encode(self.secret)))
        started = record.pop("started")
        record.update(
            result_set=token.name if token is not None else None,
            ranker=self._ranker_name(), outcome=outcome,
            ranker_scores=[float(s) for s in scores] if scores is not None else None,
            order=ranked_order(scores, window),
            timings_ms={"upstream": _ms(upstream_s), "queue": _ms(timing.queue), "rank": _ms(timing.rank),
                        "encode": _ms(timing.encode), "score": _ms(timing.score),
                        "total": _ms(time.perf_counter() - started)},
            interleaving=interleaving)
        self.writer.put(record)
        return answer

    def _ranker_name(self) -> str:
        ranker = self.service.adapter.ranker
        model = getattr(ranker, "ranker", ranker)  # the model a micro-batcher wraps
        return str(getattr(model, "name", None) or type(model).__name__)

    def _token(self, doc: Any, offset: int, teams: Optional[Sequence[int]]) -> Optional[ResultSetToken]:
        try:
            page = doc["hits"]["hits"]
        except (KeyError, TypeError):
            return None
        # An interleaved page credits the hits the draft placed (not those
        # past the window, which no arm contributed).
        shown = page[:MAX_CREDITED if teams is None else min(MAX_CREDITED, len(teams))]
        digests = tuple(id_digest(str(hit.get("_id", ""))) for hit in shown)
        team_bits = tuple(teams[:len(shown)]) if teams is not None else ()
        return ResultSetToken(secrets.randbits(64), int(time.time()), offset, team_bits, digests,
                              interleaved=teams is not None)

    # -- interleaving -------------------------------------------------------------

    def job_for(self, adapter: RankerAdapter, plan: Any, window: Sequence[Any],
                texts: List[str]) -> RankJob:
        from .service import _engine_scores, document_key
        keys = [document_key(h, t) for h, t in zip(window, texts)] if adapter.wants_keys else None
        engine = _engine_scores(window) if adapter.wants_engine_scores else None
        return RankJob(plan.query, texts, keys, engine)

    async def _rank_arm(self, arm: _Arm, route: Any, plan: Any, window: Sequence[Any],
                        texts: List[str]) -> Tuple[Optional[List[float]], str, RankTiming]:
        """An arm's scores (None for the engine), and why it has none."""
        if arm.adapter is None:
            return None, "", RankTiming()
        started = time.perf_counter()
        try:
            ranked, timing = await arm.adapter.rank([self.job_for(arm.adapter, plan, window, texts)],
                                                    self.service._deadline(route))
        except RankFailed as failure:
            return None, failure.reason, RankTiming(rank=time.perf_counter() - started)
        self.service.stats.rank_seconds.append(timing.rank)
        scores = ranked[0]
        return scores, ("" if scores else "deadline"), timing

    async def interleaved(self, route: Any, request: Request, response: Response, prep: Any,
                          plan: Any, doc: Dict[str, Any], window: List[Dict[str, Any]],
                          texts: List[str], upstream_s: float) -> Response:
        """Answer one ``_search`` with the two arms' orders interleaved."""
        assert self.interleave is not None and self.book is not None
        record = self.sample(prep, plan, window, texts)
        results = await asyncio.gather(*(self._rank_arm(arm, route, plan, window, texts)
                                         for arm in self.arms))
        timing = RankTiming(*(max(getattr(t, f) for _, _, t in results)
                              for f in ("queue", "rank", "encode", "score")))
        failed = [reason for (scores, reason, _), arm in zip(results, self.arms)
                  if arm.adapter is not None and reason]
        hits = doc["hits"]
        if failed:
            # An arm without its order is no comparison: the engine's page,
            # as the proxy gives it whenever its ranker fails.
            self.not_interleaved[failed[0]] += 1
            outcome = ("fallback", failed[0])
            hits["hits"] = page_in_order(hits["hits"], list(range(len(window))), plan.offset, plan.size,
                                         plan.explain, plan.source_filter)
            answer: Response = self.service._answer(request, response, prep, doc, [outcome],
                                                    upstream_s, timing)
            if record is not None:
                answer = self.captured(record, answer, doc, None, f"fallback; reason={failed[0]}",
                                       timing, upstream_s)
            return answer
        orders = [ranked_order(scores, len(window)) for scores, _, _ in results]
        seed = self.coins.next_seed()
        draft = team_draft(orders[0], orders[1], CoinSource.coins(seed))
        names = [arm.name for arm in self.arms]
        hits["hits"] = page_in_order(hits["hits"], list(draft.order), plan.offset, plan.size,
                                     plan.explain, plan.source_filter, draft.teams, names)
        partial = [f"partial={len(s)}/{len(window)}" for s, _, _ in results
                   if s is not None and len(s) < len(window)]
        outcome = ("applied", "; ".join(["interleaved"] + partial[:1]))
        answer = self.service._answer(request, response, prep, doc, [outcome], upstream_s, timing)
        assert isinstance(answer, Response)
        token = self._token(doc, plan.offset, draft.teams[plan.offset:])
        self.result_sets += 1
        if token is not None:
            answer.headers.append((RESULT_SET_HEADER, token.encode(self.secret)))
        if record is not None:
            live = results[0][0] if self.arms[0].adapter is self.service.adapter else (
                results[1][0] if self.arms[1].adapter is self.service.adapter else None)
            answer = self.captured(
                record, answer, doc, live, "applied; interleaved", timing, upstream_s, token,
                {"arms": names, "seed": seed, "orders": orders, "order": list(draft.order),
                 "teams": list(draft.teams)})
        return answer

    # -- the click beacon -----------------------------------------------------------

    def _reject(self, reason: str, status: int = 400, es_type: str = "illegal_argument_exception",
                text: str = "") -> Response:
        self.clicks_rejected[reason] += 1
        return _error(status, es_type, text or reason)

    async def click(self, request: Request, upstream: Upstream) -> Response:
        """``POST /_selproxy/click`` ``{"result_set": ID, "_id": HIT_ID[, "_index": INDEX]}``."""
        if len(request.body) > MAX_CLICK_BODY:
            return self._reject("too_large", 413, "content_too_long_exception",
                                f"a click body is at most {MAX_CLICK_BODY} bytes")
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return self._reject("not_json", text="the click body is not JSON")
        if not isinstance(body, dict):
            return self._reject("not_object", text="the click body is not a JSON object")
        unknown = set(body) - {"result_set", "_id", "_index"}
        if unknown:
            return self._reject("unknown_field", text="a click takes result_set, _id and _index only")
        result_set, doc_id, index = body.get("result_set"), body.get("_id"), body.get("_index", "")
        if not isinstance(result_set, str) or not isinstance(doc_id, str) or not doc_id \
                or not isinstance(index, str):
            return self._reject("missing_field", text="a click needs result_set and _id (and an _index, "
                                                      "if any), as strings")
        if len(doc_id) > MAX_CLICK_ID or len(index) > MAX_CLICK_ID:
            return self._reject("too_long", text=f"_id and _index are at most {MAX_CLICK_ID} characters")
        try:
            token = ResultSetToken.decode(result_set, self.secret)
        except TokenError as exc:
            return self._reject(exc.reason, text=f"result_set is not one this proxy issued ({exc.reason})")
        if not 0 <= time.time() - token.issued <= self.click_ttl:
            return self._reject("expired", 404, "resource_not_found_exception",
                                "the result set has expired")
        position = token.position_of(doc_id)
        if position is None:
            return self._reject("not_shown", 404, "resource_not_found_exception",
                                "no hit with that _id was credited in that result set")
        self.clicks += 1
        team: Optional[int] = None
        repeat = False
        if token.interleaved and self.book is not None and position < len(token.teams):
            team = self.book.credit(token, position)
            repeat = team is None
            if repeat:
                team = token.teams[position]
        arm = "AB"[team] if team is not None else None
        if self.writer is not None:
            self.writer.put({"type": "click", "v": 1, "time": round(time.time(), 3),
                             "result_set": token.name, "_id": doc_id, "_index": body.get("_index"),
                             "position": token.offset + position, "arm": arm,
                             "arm_name": self.arms[team].name if team is not None and self.arms else None,
                             "repeat": repeat})
        reply = {"result_set": token.name, "position": token.offset + position, "arm": arm,
                 "credited": team is not None and not repeat}
        return Response(200, list(_JSON), json.dumps(reply).encode())
