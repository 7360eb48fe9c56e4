# cython: language_level=3
"""Per-worker state: what every connection of one worker shares.

Both protocols read into the worker's one read buffer (see ``_client`` and
``_upstream``): every read is consumed before ``buffer_updated`` returns, so
one buffer serves every connection.
"""
cimport cython

from selproxy._writer cimport TransportWriter

__all__ = ("Counters",)

cdef Py_ssize_t READ_BUFFER_SIZE = 256 * 1024
# A client read between request bodies (see ClientProtocol.get_buffer).
cdef Py_ssize_t HEAD_READ_SIZE = 8 * 1024


cdef class Counters:
    """Per-worker counters, read by the status endpoint."""

    def __cinit__(self):
        self.errors = {}

    cdef void count_error(self, str kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def client_connections(self):
        return len(self.clients) if self.clients is not None else 0

    @property
    def upstream_connections(self):
        return len(self.upstreams) if self.upstreams is not None else 0

    @property
    def upstream_idle(self):
        return len(self.idle_upstreams) if self.idle_upstreams is not None else 0

    @property
    def upstream_waiters(self):
        return len(self.waiters) if self.waiters is not None else 0

    def snapshot(self):
        return {
            "requests_passed": self.requests_passed,
            "requests_claimed": self.requests_claimed,
            "client_connections": self.client_connections,
            "client_connections_total": self.client_connections_total,
            "upstream_connections": self.upstream_connections,
            "upstream_idle": self.upstream_idle,
            "upstream_connects": self.upstream_connects,
            "upstream_waiters": self.upstream_waiters,
            "buffered_bodies": self.buffered_bodies,
            "errors": dict(self.errors),
        }


@cython.final
cdef class Worker:
    """One worker's shared state; built by ProxyCore from a Config."""

    def __cinit__(self, config, loop, RouteTable routes, handler_runner, logger):
        self.loop = loop
        self.counters = Counters()
        self.routes = routes
        self.handler_runner = handler_runner
        self.logger = logger
        self.clients = set()
        self.counters.clients = self.clients
        self.listen_authorities = set()
        self.read_buffer = bytearray(READ_BUFFER_SIZE)
        self.read_view = memoryview(self.read_buffer)
        self.head_view = self.read_view[:HEAD_READ_SIZE]
        self.held_writers = []

        self.max_request_line = config.max_request_line
        self.max_header_bytes = config.max_header_bytes
        self.max_buffered_body = config.max_buffered_body
        self.max_buffered_response = config.max_buffered_response
        self.max_upstream = config.max_upstream_connections
        self.max_idle = config.max_idle_upstream_connections
        self.header_timeout = config.header_timeout
        self.idle_timeout = config.idle_timeout
        self.connect_timeout = config.connect_timeout
        self.response_timeout = config.response_timeout
        self.body_timeout = config.body_timeout
        self.upstream_idle_timeout = config.upstream_idle_timeout
        self.send_timeout = config.send_timeout
        self.upstream_queue_timeout = config.upstream_queue_timeout
        self.max_upstream_waiters = config.max_upstream_waiters
        self.body_window_min = int(config.min_body_rate * config.body_timeout)
        self.request_buffer_size = config.request_buffer_size
        self.max_buffered_bodies = config.max_buffered_bodies
        self.forwarded_headers = config.forwarded_headers
        self.access_log = config.access_log
        self.sweep_interval = min(1.0, max(0.05, min(
            self.header_timeout, self.idle_timeout, self.response_timeout, self.body_timeout,
            self.upstream_idle_timeout, self.send_timeout, self.upstream_queue_timeout) / 4.0))

    cdef bint take_budget(self, Py_ssize_t size):
        """Count ``size`` more buffered bytes; False once over the budget."""
        self.counters.buffered_bodies += size
        return self.counters.buffered_bodies <= self.max_buffered_bodies

    cdef void release_budget(self, Py_ssize_t size):
        self.counters.buffered_bodies -= size

    cdef void release_held_writes(self):
        """A client read is parsed: the upstream writes it produced leave,
        one write per connection."""
        cdef list held = self.held_writers
        cdef TransportWriter out
        self.holding_upstream_writes = False
        if held:
            self.held_writers = []
            for out in held:
                out.release()


cdef void feed_copied(object protocol, object data) except *:
    """``data_received`` for asyncio's own loops, which call it on any
    protocol that is not an ``asyncio.BufferedProtocol`` (uvloop sees
    ``get_buffer`` and never does): copy into the buffer ``get_buffer``
    gives, as uvloop would have read into it, and go on as after a read."""
    cdef Py_ssize_t start = 0, size = len(data), n
    while start < size:
        read_view = protocol.get_buffer(size - start)
        n = min(len(read_view), size - start)
        read_view[:n] = data[start:start + n]
        protocol.buffer_updated(n)
        start += n


cdef str error_kind(object exc):
    return type(exc).__name__
