"""Stubs for ``selproxy/_worker.pyx``: per-worker state."""
from typing import Any, Dict
from typing_extensions import disjoint_base

__all__ = ('Counters',)

@disjoint_base
class Counters:
    """Per-worker counters; the status endpoint shows :meth:`snapshot`.
    The gauges (connections, idle, waiters) are the sizes of the containers
    they count."""

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
