"""The proxy's own pages: ``GET /_selproxy/status`` (JSON), ``/_selproxy/metrics``
(Prometheus text), and the probes ``/_selproxy/livez`` and ``/_selproxy/readyz``.

Each answers for the whole process group, whichever worker took the
connection: the figures come from the block the workers share
(:mod:`selproxy.shared_stats`), which this worker refreshes with its own
Python figures first.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from . import metrics
from ._version import __version__
from .handler import Request, Response, Upstream
from .shared_stats import RETIRING, SERVING, SharedStats, SlotView, WorkerSlot

__all__ = ("StatusPage",)

JSON = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


class StatusPage:
    """Renders the group's counters plus any section a layer above adds
    (the search layer adds its rerank counters and timings)."""

    def __init__(self, core: Any, config: Any) -> None:
        self.core = core
        self._config = config
        self._started = time.monotonic()
        self.sections: Dict[str, Callable[[], Any]] = {}
        #: This worker's model is warm (its warm-up is done, or it needs none).
        self.ready: Callable[[], bool] = lambda: True
        #: Resolves to None while the upstream accepts connections, else to
        #: why not; the page then says ``"ready": false``.
        self.check_upstream: Optional[Callable[[], Awaitable[Optional[str]]]] = None
        self.upstream_error: Optional[str] = None
        #: The group's block and this worker's slot (set by Proxy.start).
        self.shared: Optional[SharedStats] = None
        self.slot: Optional[WorkerSlot] = None
        self.worker_index = 0
        #: Copies this worker's Python figures into its slot.
        self.publish: Callable[[], None] = lambda: None
        #: This worker is draining (Proxy.draining).
        self.draining: Callable[[], bool] = lambda: False
        #: readyz also requires the upstream to accept connections.
        self.readyz_upstream = bool(getattr(config, "readyz_upstream", False))

    # -- the group ---------------------------------------------------------

    def group(self) -> Tuple[List[SlotView], int]:
        """Every worker's slot, fresh for this one, and how many should serve."""
        self.publish()
        if self.shared is None:
            return [], 1
        return self.shared.read(), self.shared.expected_workers

    def not_ready(self, views: List[SlotView], expected: int) -> List[str]:
        """Why the group is not ready (empty when it is); the upstream is
        the caller's to add."""
        reasons = []
        # A worker a reload replaced finishes its requests apart from the group.
        live = [v for v in views if v.alive and v.state != RETIRING]
        if self.draining() or any(v.draining for v in live):
            reasons.append("draining")
        serving = sum(v.state == SERVING for v in live)
        if self.shared is not None and serving < expected:
            reasons.append(f"{serving} of {expected} workers serving")
        cold = [v for v in live if v.state == SERVING and not v.warm]
        if not self.ready() or cold:
            reasons.append("model warming up")
        return reasons

    # -- pages -------------------------------------------------------------

    def document(self, views: Optional[List[SlotView]] = None, expected: int = 1) -> Dict[str, Any]:
        if views is None:
            views, expected = self.group()
        reasons = self.not_ready(views, expected)
        if self.upstream_error is not None:
            reasons.append(f"upstream unreachable: {self.upstream_error}")
        doc: Dict[str, Any] = {
            "name": "selproxy",
            "version": __version__,
            "ready": not reasons,
            "pid": os.getpid(),
            "worker_index": self.worker_index,
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "config": self._config.public_dict(),
            "proxy": (metrics.group_totals(views) if views
                      else self.core.counters.snapshot()),
        }
        if reasons:
            doc["not_ready"] = reasons
        if self.check_upstream is not None:
            doc["upstream"] = {"reachable": self.upstream_error is None}
            if self.upstream_error is not None:
                doc["upstream"]["error"] = self.upstream_error
        for name, section in self.sections.items():
            doc[name] = section()
        if "search" in doc and len(views) > 1:
            doc["search"] = _group_search(doc["search"], views)
        now = time.time()
        doc["workers"] = {
            "expected": expected,
            "serving": sum(v.alive and v.state == SERVING for v in views),
            "each": [_worker_entry(v, now) for v in views],
        }
        return doc

    async def handle(self, request: Request, upstream: Upstream) -> Response:
        if self.check_upstream is not None:
            self.upstream_error = await self.check_upstream()
        body = json.dumps(self.document(), indent=2).encode() + b"\n"
        return Response(200, JSON, body)

    async def handle_metrics(self, request: Request, upstream: Upstream) -> Response:
        views, expected = self.group()
        body = metrics.render(views, expected, not self.not_ready(views, expected))
        return Response(200, [("Content-Type", metrics.CONTENT_TYPE), ("Cache-Control", "no-store")],
                        body)

    async def handle_livez(self, request: Request, upstream: Upstream) -> Response:
        """200 while this process serves: its loop runs and answers."""
        return Response(200, JSON, b'{"live":true}\n')

    async def handle_readyz(self, request: Request, upstream: Upstream) -> Response:
        """200 when every worker serves, the model is warm and nothing
        drains (and, with ``readyz_upstream``, the upstream is reachable);
        503 with the reasons otherwise."""
        views, expected = self.group()
        reasons = self.not_ready(views, expected)
        if self.readyz_upstream and self.check_upstream is not None:
            self.upstream_error = await self.check_upstream()
            if self.upstream_error is not None:
                reasons.append(f"upstream unreachable: {self.upstream_error}")
        if reasons:
            body = json.dumps({"ready": False, "reasons": reasons}).encode() + b"\n"
            return Response(503, JSON, body)
        return Response(200, JSON, b'{"ready":true}\n')


def _worker_entry(view: SlotView, now: float) -> Dict[str, Any]:
    entry: Dict[str, Any] = {
        "index": view.index, "pid": view.pid, "state": view.state_name, "alive": view.alive,
        "warm": view.warm, "draining": view.draining,
        "uptime_seconds": round(max(0.0, now - view.started), 3) if view.alive else None,
        "proxy": view.cells,
    }
    if "search" in view.doc:
        entry["search"] = view.doc["search"]
    return entry


def _group_search(own: Dict[str, Any], views: List[SlotView]) -> Dict[str, Any]:
    """The search section for the group: the counts (integers) summed over
    the workers' last published sections; settings, rates and percentiles
    stay this worker's (each worker's own section is under ``workers``)."""
    sections = [v.doc["search"] for v in views if isinstance(v.doc.get("search"), dict)]
    if not sections:
        return own

    def combine(mine: Any, theirs: List[Any], key: str) -> Any:
        if isinstance(mine, dict) and key not in ("rank_ms", "upstream_ms"):
            keys = set(mine)
            for item in theirs:
                if isinstance(item, dict):
                    keys.update(item)
            return {k: combine(mine.get(k), [t.get(k) for t in theirs if isinstance(t, dict)], k)
                    for k in keys}
        if isinstance(mine, int) and not isinstance(mine, bool) or mine is None:
            counts = [t for t in theirs if isinstance(t, int) and not isinstance(t, bool)]
            if counts and key not in ("topn", "max_length", "max_entries"):
                return sum(counts)
        return mine

    merged: Dict[str, Any] = combine(own, sections, "")
    merged["workers_summed"] = len(sections)
    return merged
