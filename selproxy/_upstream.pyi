"""Stubs for ``selproxy/_upstream.pyx``: the upstream pool and handlers' calls."""
from typing import List, Optional, Tuple, final
from typing_extensions import disjoint_base

from .handler import Response

__all__ = ('UpstreamPool', 'CoreUpstream')

@final
class UpstreamPool:
    """A worker's pooled upstream connections (driven from the compiled core)."""

@disjoint_base
class CoreUpstream:
    """The engine as handlers see it (``selproxy.handler.Upstream``)."""

    async def request(self, method: str, target: str, headers: List[Tuple[str, str]],
                      body: bytes = b"", *, timeout: Optional[float] = None) -> Response:
        """Send one request over a pooled connection; return the whole response.
        The core sets its framing (Content-Length) and Host when absent."""
