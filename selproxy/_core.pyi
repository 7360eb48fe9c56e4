"""Stubs for the compiled proxy core (``selproxy/_core.pyx``)."""
import asyncio
from typing import Any, Awaitable, Callable, Dict, Optional, Sequence
from typing_extensions import disjoint_base

from ._upstream import CoreUpstream, UpstreamPool
from ._worker import Counters
from ._worker import (
    CELLS_SIZE as CELLS_SIZE, DURATION_BOUNDS as DURATION_BOUNDS, ERROR_KINDS as ERROR_KINDS,
    ROUTE_KINDS as ROUTE_KINDS, read_cells as read_cells,
)
from .config import Config
from .handler import Request, Response, Route

__all__ = ('ProxyCore', 'debug_counts', 'read_cells',
           'ERROR_KINDS', 'ROUTE_KINDS', 'DURATION_BOUNDS', 'CELLS_SIZE')

def debug_counts() -> Optional[Dict[str, int]]:
    """Live clients, upstream connections and exchanges in a debug build
    (None in a release build); tests assert they return to zero."""

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
