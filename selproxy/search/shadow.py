"""Shadow mode: rerank every claimed search, answer in the engine's order.

With ``SearchConfig.shadow`` (``--shadow``, or ``SearchRoute.shadow`` for one
route) a claimed ``_search`` is sent to the engine exactly as the client sent
it (selproxy's own overrides stripped, as always) and the engine's response is
the client's, byte for byte: ``X-Selproxy-Rerank: skipped; reason=shadow``.
After the answer is handed to the core, a background task asks the engine for
the window live mode would have asked for, reranks it and records both orders:

* in a ring of the newest :attr:`ShadowMode.ring` records, on the status page
  (``search.shadow.recent``), with the query's text only when
  ``shadow_record_queries`` allows it (a hash otherwise);
* to every listener in :attr:`ShadowMode.listeners` (``callable(record)``,
  the full :class:`ShadowRecord`): the hook for capture;
* in a debug log line (logger ``selproxy.search``).

The client's latency stays the engine's: the task starts after the response
is written, at most ``shadow_concurrency`` run at once and ``shadow_queue``
wait; past that a shadow rerank is dropped (counted), never waited for.  A
failure in it is counted and logged at debug, never the client's.  The cost is
one more engine search per shadowed search (the widened one), and the model's
time off the client's path.  ``_msearch`` and parameter-described (Solr)
searches are passed through unranked under shadow mode, and not recorded.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set

from ..handler import Request, Response, Upstream
from . import _json
from .respond import decode_body, hits_at

__all__ = ("ShadowMode", "ShadowRecord")

log = logging.getLogger("selproxy.search")


@dataclasses.dataclass
class ShadowRecord:
    """One shadowed search: the engine's order and the ranker's, of its window."""

    #: Wall-clock time of the search (seconds since the epoch).
    time: float
    route: str
    indices: List[str]
    query: str
    offset: int
    size: int
    #: ``_id`` of each hit of the window, in the engine's order.
    engine_ids: List[str]
    #: The same hits in the order live mode would have used (the ranked ones
    #: first, the rest of the window in engine order).
    ranked_ids: List[str]
    #: ``applied``, ``applied; partial=K/N``, ``fallback; reason=...``.
    outcome: str
    engine_scores: Optional[List[float]]
    ranker_scores: Optional[List[float]]
    upstream_ms: float
    rank_ms: float
    #: SHA-1 of the text the ranker got for each hit of the window, in engine
    #: order (the embedding store keys texts the same way).
    text_hashes: List[str] = dataclasses.field(default_factory=list)

    @property
    def client_page(self) -> List[str]:
        return self.engine_ids[self.offset:self.offset + self.size]

    @property
    def ranked_page(self) -> List[str]:
        return self.ranked_ids[self.offset:self.offset + self.size]

    def public(self, with_query: bool) -> Dict[str, Any]:
        """What the status page shows: the ids and the page's difference."""
        page, ranked = self.client_page, self.ranked_page
        doc: Dict[str, Any] = {
            "time": round(self.time, 3), "route": self.route, "indices": self.indices,
            "query_sha1": hashlib.sha1(self.query.encode("utf-8", "surrogatepass")).hexdigest()[:16],
            "from": self.offset, "size": self.size, "outcome": self.outcome,
            "engine_ids": self.engine_ids, "ranked_ids": self.ranked_ids,
            "page_changed": page != ranked,
            "page_overlap": round(len(set(page) & set(ranked)) / len(page), 3) if page else 1.0,
            "upstream_ms": round(self.upstream_ms, 3), "rank_ms": round(self.rank_ms, 3),
        }
        if with_query:
            doc["query"] = self.query[:200]
        return doc


def _hit_id(hit: Any) -> str:
    value = hit.get("_id", hit.get("id")) if isinstance(hit, dict) else None
    return "" if value is None else str(value)


class ShadowMode:
    """The background reranks of shadowed searches, bounded, and their records."""

    def __init__(self, *, enabled: bool = False, ring: int = 32, concurrency: int = 2,
                 queue: int = 64, record_queries: bool = False) -> None:
        self.enabled = enabled
        self.ring = ring
        self.queue = queue
        self.record_queries = record_queries
        self.records: Deque[ShadowRecord] = collections.deque(maxlen=ring)
        self.listeners: List[Callable[[ShadowRecord], None]] = []
        self._slots: Optional[asyncio.Semaphore] = None
        self._concurrency = concurrency
        # References to the running tasks: the loop keeps only weak ones.
        self._tasks: Set["asyncio.Task[None]"] = set()
        self.searches = 0
        self.recorded = 0
        self.dropped = 0
        self.failed = 0
        self.unranked: Dict[str, int] = collections.Counter()
        self.page_changed = 0

    def applies(self, route: Any) -> bool:
        shadow = getattr(route, "shadow", None)
        return self.enabled if shadow is None else bool(shadow)

    async def search(self, service: Any, route: Any, request: Request, upstream: Upstream,
                     prep: Any, plan: Any) -> Response:
        """Answer ``request`` with the engine's response to it, unchanged, and
        start the rerank of its window behind it."""
        response, upstream_s = await service._forward(upstream, request.method, prep.target,
                                                      prep.headers, request.body)
        self.searches += 1
        if response.status == 200:
            self._start(service, route, upstream, request, prep, plan)
        answer: Response = service._verbatim(response, prep, [("skipped", "shadow")], upstream_s)
        return answer

    def _start(self, service: Any, route: Any, upstream: Upstream, request: Request,
               prep: Any, plan: Any) -> None:
        if len(self._tasks) >= self.queue:
            self.dropped += 1
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._concurrency)
        task = asyncio.ensure_future(self._run(service, route, upstream, request, prep, plan))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, service: Any, route: Any, upstream: Upstream, request: Request,
                   prep: Any, plan: Any) -> None:
        # The handler's answer is written by a callback of its task, which
        # the loop runs before this task's next step.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert self._slots is not None
        try:
            async with self._slots:
                record = await self._rerank(service, route, upstream, request, prep, plan)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never the client's: it has its answer
            self.failed += 1
            log.debug("shadow rerank failed: %s", type(exc).__name__)
            return
        if record is not None:
            self._record(record)

    async def _rerank(self, service: Any, route: Any, upstream: Upstream, request: Request,
                      prep: Any, plan: Any) -> Optional[ShadowRecord]:
        from .service import _engine_scores, _with_body

        if plan.body is not None:
            body = _json.dumps(plan.body)
            headers = _with_body(prep.headers, body)
        else:
            body, headers = request.body, prep.headers
        started = time.perf_counter()
        response = await upstream.request(request.method, prep.target_with(plan.params), headers, body,
                                          timeout=service.config.upstream_timeout)
        upstream_s = time.perf_counter() - started
        if response.status != 200:
            self.unranked["upstream_status"] += 1
            return None
        hits = hits_at(_json.loads(decode_body(response, service.config.max_decoded_body)),
                       ("hits", "hits"))
        if not hits:
            self.unranked["no_hits" if hits is not None else "format"] += 1
            return None
        window = hits[:plan.window]
        texts = service._texts(window, route)
        if not any(texts):
            self.unranked["no_doc_text"] += 1
            return None
        scores, outcome, timing = await service._rank_one(route, service._job(plan, window, texts))
        order = list(range(len(hits)))
        if scores is not None:
            n = min(len(window), len(scores))
            order = sorted(range(n), key=scores.__getitem__, reverse=True) + list(range(n, len(hits)))
        from .service import _header
        return ShadowRecord(
            time=time.time(), route=route.name or route.path, indices=list(prep.indices),
            query=plan.query, offset=plan.offset, size=plan.size,
            engine_ids=[_hit_id(h) for h in hits], ranked_ids=[_hit_id(hits[i]) for i in order],
            outcome=_header(outcome), engine_scores=_engine_scores(window),
            ranker_scores=[float(s) for s in scores] if scores is not None else None,
            upstream_ms=upstream_s * 1e3, rank_ms=timing.rank * 1e3,
            text_hashes=[hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts])

    def _record(self, record: ShadowRecord) -> None:
        self.recorded += 1
        if record.client_page != record.ranked_page:
            self.page_changed += 1
        if self.ring:
            self.records.append(record)
        log.debug("shadow %s: engine %s, ranker %s (%s)", record.route,
                  record.client_page, record.ranked_page, record.outcome)
        for listener in list(self.listeners):
            try:
                listener(record)
            except Exception as exc:  # a listener's failure is its own
                log.debug("shadow listener failed: %s", type(exc).__name__)

    async def wait_idle(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the running reranks: tests, shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def stats(self) -> Dict[str, Any]:
        return {
            "enabled": self.enabled,
            "searches": self.searches,
            "recorded": self.recorded,
            "page_changed": self.page_changed,
            "running": len(self._tasks),
            "dropped": self.dropped,
            "failed": self.failed,
            "unranked": dict(self.unranked),
            "recent": [r.public(self.record_queries) for r in self.records],
        }
