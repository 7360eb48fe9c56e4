"""``GET /_selproxy/status``: what a worker is doing, as JSON."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Awaitable, Callable, Dict, Optional

from ._version import __version__
from .handler import Request, Response, Upstream

__all__ = ("StatusPage",)


class StatusPage:
    """Renders the core's counters plus any section a layer above adds
    (the search layer adds its rerank counters and timings)."""

    def __init__(self, core: Any, config: Any) -> None:
        self.core = core
        self._config = config
        self._started = time.monotonic()
        self.sections: Dict[str, Callable[[], Any]] = {}
        self.ready: Callable[[], bool] = lambda: True
        #: Resolves to None while the upstream accepts connections, else to
        #: why not; the page then says ``"ready": false``.
        self.check_upstream: Optional[Callable[[], Awaitable[Optional[str]]]] = None
        self.upstream_error: Optional[str] = None

    def document(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {
            "name": "selproxy",
            "version": __version__,
            "ready": self.ready() and self.upstream_error is None,
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "config": self._config.public_dict(),
            "proxy": self.core.counters.snapshot(),
        }
        if self.check_upstream is not None:
            doc["upstream"] = {"reachable": self.upstream_error is None}
            if self.upstream_error is not None:
                doc["upstream"]["error"] = self.upstream_error
        for name, section in self.sections.items():
            doc[name] = section()
        return doc

    async def handle(self, request: Request, upstream: Upstream) -> Response:
        if self.check_upstream is not None:
            self.upstream_error = await self.check_upstream()
        body = json.dumps(self.document(), indent=2).encode() + b"\n"
        return Response(200, [("Content-Type", "application/json")], body)
