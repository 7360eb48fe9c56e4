"""Stubs for ``selproxy/_worker.pyx``: per-worker state."""
from typing import Any, Dict, Tuple
from typing_extensions import disjoint_base

__all__ = ('Counters', 'read_cells', 'ERROR_KINDS', 'ROUTE_KINDS', 'DURATION_BOUNDS', 'CELLS_SIZE')

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

@disjoint_base
class Counters:
    """Per-worker counters; the status endpoint shows :meth:`snapshot`.
    The gauges (connections, idle, waiters) are set from the sizes of the
    containers they count, where those change."""

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
