# cython: language_level=3
"""The proxy core of one worker: what Python builds and drives.

The compiled core is split along its seams, each module with its ``.pxd``
interface, dependencies running one way::

    _http, _routes      heads (collect, analyse, serialize); the route table
    _writer             writing to a transport, held pieces
    _worker             per-worker state: loop, read buffer, counters, limits
    _upstream           the pool, the upstream protocol, handlers' calls
    _client             client connections, exchanges, handler hand-off
    _core               this: builds the rest; protocol factory, sweep, drain

Passthrough traffic never leaves the compiled modules; only a request that
matches a route crosses into Python, whole (see ``_client``).
"""
from selproxy._routes cimport RouteTable
from selproxy._worker cimport Worker, Counters, monotonic
from selproxy._upstream cimport UpstreamPool, live_upstreams
from selproxy._client cimport (
    new_client, check_client_deadlines, drain_clients, abort_clients, live_clients,
    live_exchanges,
)
from selproxy._debug cimport SELPROXY_DEBUG

from selproxy._upstream import CoreUpstream
# What the metrics and the shared block read of the counters (the Counters
# class itself is selproxy._worker.Counters).
from selproxy._worker import read_cells, ERROR_KINDS, ROUTE_KINDS, DURATION_BOUNDS, CELLS_SIZE

__all__ = ("ProxyCore", "debug_counts", "read_cells",
           "ERROR_KINDS", "ROUTE_KINDS", "DURATION_BOUNDS", "CELLS_SIZE")


def debug_counts():
    """Live core objects (debug builds), or None in a release build."""
    if not SELPROXY_DEBUG:
        return None
    return {"clients": live_clients(), "upstreams": live_upstreams(),
            "exchanges": live_exchanges()}


cdef class ProxyCore:
    """One worker's proxy: its configuration in C fields, its routes, its
    upstream pool, its counters and its open client connections."""

    def __init__(self, config, loop, routes=(), handler_runner=None, logger=None, access_hook=None):
        scheme, host, port = config.upstream_address
        self.config = config
        self.loop = loop
        self.worker = Worker(config, loop, RouteTable(routes), handler_runner, logger, access_hook)
        self.counters = self.worker.counters
        self.pool = UpstreamPool(self.worker, scheme, host, port, config.upstream_ssl_context())

    def protocol_factory(self):
        return new_client(self.worker, self.pool)

    def add_listen_authority(self, str host, int port):
        for name in {host, "localhost" if host in ("127.0.0.1", "::1") else host}:
            self.worker.listen_authorities.add(f"{name}:{port}".lower().encode("idna"))
            if port == 80:
                self.worker.listen_authorities.add(name.lower().encode("idna"))

    def upstream(self):
        """The object handlers receive to call the upstream."""
        return CoreUpstream(self.pool)

    def start(self):
        self.sweeper = self.loop.call_later(self.worker.sweep_interval, self._sweep_cb)

    def _sweep_cb(self):
        self._sweep()

    cdef void _sweep(self):
        """Fire the deadlines that have passed.  PERF: one timer per worker,
        instead of two timer calls per request (a design choice, not
        measured on its own)."""
        cdef double now = monotonic()
        if self.pool.waiters:
            self.pool.expire_waiters(now)
        check_client_deadlines(self.worker, now)
        self.pool.check_deadlines(now)
        self.sweeper = self.loop.call_later(self.worker.sweep_interval, self._sweep_cb)

    def drain(self):
        """Stop taking new requests: idle connections close now, busy ones
        after the exchange in flight."""
        self.worker.draining = True
        drain_clients(self.worker)
        self.pool.close_idle()

    def open_clients(self):
        return len(self.worker.clients)

    def abort_all(self):
        abort_clients(self.worker)
        self.pool.abort_all()

    def stop(self):
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
