"""Stubs for the compiled proxy core (``selproxy/_core.pyx``)."""
import asyncio
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, final
from typing_extensions import disjoint_base

from .config import Config
from .handler import Request, Response, Route

__all__ = ('Counters', 'UpstreamPool', 'CoreUpstream', 'ProxyCore', 'debug_counts', 'read_cells',
           'ERROR_KINDS', 'ROUTE_KINDS', 'DURATION_BOUNDS', 'CELLS_SIZE')

#: Error kinds the core counts, by their index in the counters.
ERROR_KINDS: Tuple[str, ...]
#: Route kinds requests and responses are counted by.
ROUTE_KINDS: Tuple[str, ...]
#: Upper bounds (seconds) of the core's duration histogram buckets.
DURATION_BOUNDS: Tuple[float, ...]
#: Bytes of a worker's counters in its slot of the shared block.
CELLS_SIZE: int

def read_cells(buffer: Any) -> Dict[str, Any]:
    """The counters a worker keeps in ``buffer``, as ``Counters.snapshot`` gives them."""

def debug_counts() -> Optional[Dict[str, int]]:
    """Live clients, upstream connections and exchanges in a debug build
    (None in a release build); tests assert they return to zero."""

@disjoint_base
class Counters:
    """Per-worker counters; the status endpoint shows :meth:`snapshot`."""

    @property
    def requests_passed(self) -> int: ...
    @property
    def requests_claimed(self) -> int: ...
    @property
    def client_connections_total(self) -> int: ...
    @property
    def client_connections(self) -> int: ...
    @property
    def upstream_connections(self) -> int: ...
    @property
    def upstream_idle(self) -> int: ...
    @property
    def upstream_connects(self) -> int: ...
    @property
    def upstream_waiters(self) -> int:
        """Requests waiting for a free upstream connection now."""
    @property
    def buffered_bodies(self) -> int:
        """Bytes of claimed request bodies and handlers' upstream responses
        held now (bounded by ``max_buffered_bodies``)."""
    @property
    def errors(self) -> Dict[str, int]: ...
    def snapshot(self) -> Dict[str, Any]:
        """The counters as a JSON-ready dict."""
    def attach(self, buffer: Any) -> None:
        """Count into ``buffer`` (a worker's slot of the shared block) from now on."""

@final
class UpstreamPool:
    """A worker's pooled upstream connections."""

    def close_idle(self) -> None:
        """Close every idle connection."""

@disjoint_base
class CoreUpstream:
    """The engine as handlers see it."""

    async def request(self, method: str, target: str, headers: List[Tuple[str, str]],
                      body: bytes = b"", *, timeout: Optional[float] = None) -> Response:
        """Send one request over a pooled connection; return the whole response."""

@disjoint_base
class ProxyCore:
    """One worker's proxy: configuration in C fields, routes, pool, counters."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 routes: Sequence[Route] = (),
                 handler_runner: Optional[Callable[[Route, Request], Awaitable[Response]]] = None,
                 logger: Any = None, access_hook: Any = None) -> None: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def config(self) -> Config: ...
    @property
    def pool(self) -> UpstreamPool: ...
    def protocol_factory(self) -> asyncio.BaseProtocol:
        """A new client connection's protocol (for ``loop.create_server``)."""
    def add_listen_authority(self, host: str, port: int) -> None:
        """Accept absolute-form targets that name this proxy's own address."""
    def upstream(self) -> CoreUpstream:
        """The object handlers receive to call the upstream."""
    def start(self) -> None:
        """Start the worker's deadline sweeper."""
    def drain(self) -> None:
        """Close idle connections now and busy ones after their exchange."""
    def open_clients(self) -> int: ...
    def abort_all(self) -> None:
        """Cut every client and upstream connection."""
    def stop(self) -> None:
        """Stop the sweeper."""
