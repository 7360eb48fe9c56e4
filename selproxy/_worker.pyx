# cython: language_level=3
"""Per-worker state: what every connection of one worker shares.

Both protocols read into the worker's one read buffer (see ``_client`` and
``_upstream``): every read is consumed before ``buffer_updated`` returns, so
one buffer serves every connection.
"""
cimport cython

from selproxy._writer cimport TransportWriter
from selproxy._metrics cimport (
    sp_cells, sp_histogram, sp_reset_gauges, sp_duration_bounds,
    SP_ROUTE_PASSTHROUGH, SP_ROUTE_SEARCH, SP_ROUTE_MSEARCH, SP_ROUTE_PARAMS, SP_ROUTE_STATUS,
    SP_ROUTE_OTHER, SP_ROUTE_KINDS, SP_STATUS_CLASSES, SP_ERROR_KINDS, SP_DURATION_BOUNDS,
    SP_DURATION_BUCKETS,
)

__all__ = ("Counters", "read_cells", "ERROR_KINDS", "ROUTE_KINDS", "DURATION_BOUNDS", "CELLS_SIZE")

cdef Py_ssize_t READ_BUFFER_SIZE = 256 * 1024
# A client read between request bodies (see ClientProtocol.get_buffer).
cdef Py_ssize_t HEAD_READ_SIZE = 8 * 1024


# Error kinds the core counts (Counters.count_error), each at a fixed index
# of sp_cells.errors: the core's own words for what went wrong, then the
# ProxyError class names its answers carry; anything else counts as "other".
ERROR_KINDS = (
    "other", "upstream_queue_full", "upstream_queue_timeout", "upstream_connect_timeout",
    "upstream_connect_failed", "upstream_closed", "handler_error", "handler_bad_response",
    "client_send_timeout", "body_timeout", "header_timeout",
    "ProxyError", "BadRequest", "RequestLineTooLong", "HeadersTooLarge", "BodyTooLarge",
    "MethodNotAllowed", "MisdirectedRequest", "UpstreamUnavailable", "UpstreamProtocolError",
    "UpstreamTimeout", "RequestTimeout", "ProxyOverloaded", "UpstreamQueueFull",
    "BodyBudgetExceeded", "UpstreamQueueTimeout", "HandlerError",
)
assert len(ERROR_KINDS) <= SP_ERROR_KINDS
cdef dict ERROR_INDEX = {kind: i for i, kind in enumerate(ERROR_KINDS)}

# The route kinds of sp_cells, by index, and the route names that map to
# each (a search route is named after its kind; "solr" is a params route).
ROUTE_KINDS = ("passthrough", "search", "msearch", "params", "status", "other")
cdef dict ROUTE_KIND_OF_NAME = {
    "search": SP_ROUTE_SEARCH, "msearch": SP_ROUTE_MSEARCH, "params": SP_ROUTE_PARAMS,
    "solr": SP_ROUTE_PARAMS, "status": SP_ROUTE_STATUS, "metrics": SP_ROUTE_STATUS,
    "livez": SP_ROUTE_STATUS, "readyz": SP_ROUTE_STATUS}
#: Bucket upper bounds of the core's duration histograms (seconds).
DURATION_BOUNDS = tuple(sp_duration_bounds[i] for i in range(SP_DURATION_BOUNDS))
#: Bytes a worker's slot needs for its counters (Counters.attach).
CELLS_SIZE = sizeof(sp_cells)


cdef int route_kind(RouteMatch claim):
    """The kind a claimed request counts under: by its route's name."""
    if claim is None:
        return SP_ROUTE_PASSTHROUGH
    return ROUTE_KIND_OF_NAME.get(getattr(claim.route, "name", ""), SP_ROUTE_OTHER)


cdef dict _histogram_dict(sp_histogram* h):
    return {"counts": [h.counts[i] for i in range(SP_DURATION_BUCKETS)], "sum": h.sum}


cdef dict _cells_dict(sp_cells* c):
    cdef int i, j
    return {
        "requests_passed": c.requests_passed,
        "requests_claimed": c.requests_claimed,
        "client_connections": c.client_connections,
        "client_connections_total": c.client_connections_total,
        "upstream_connections": c.upstream_connections,
        "upstream_idle": c.upstream_idle,
        "upstream_connects": c.upstream_connects,
        "upstream_waiters": c.upstream_waiters,
        "upstream_waits": c.upstream_waits,
        "buffered_bodies": c.buffered_bodies,
        "client_bytes_in": c.client_bytes_in,
        "client_bytes_out": c.client_bytes_out,
        "requests": {ROUTE_KINDS[i]: c.requests[i] for i in range(SP_ROUTE_KINDS)},
        "responses": {ROUTE_KINDS[i]: {f"{j + 1}xx": c.responses[i][j]
                                       for j in range(SP_STATUS_CLASSES)}
                      for i in range(SP_ROUTE_KINDS)},
        "errors": {ERROR_KINDS[i]: c.errors[i] for i in range(len(ERROR_KINDS)) if c.errors[i]},
        "upstream_duration": _histogram_dict(&c.upstream_duration),
        "upstream_queue_duration": _histogram_dict(&c.upstream_queue_duration),
    }


cdef sp_cells* _cells_in(object buffer) except NULL:
    cdef unsigned char[::1] view = buffer
    if view.shape[0] < <Py_ssize_t>sizeof(sp_cells):
        raise ValueError(f"the buffer holds {view.shape[0]} bytes; the counters need {sizeof(sp_cells)}")
    return <sp_cells*>&view[0]


def read_cells(buffer):
    """The counters a worker keeps in ``buffer`` (its slot of the shared
    block), as :meth:`Counters.snapshot` gives them."""
    return _cells_dict(_cells_in(buffer))


cdef class Counters:
    """A worker's counters, read by the status page and the metrics.

    They live in a C struct (``_metrics.h``): the core adds to its fields
    directly, and sets each gauge from the size of the container it
    describes (the pool's idle list, its waiters...) where that container
    changes, so a gauge never drifts from it.  :meth:`attach` moves them into the worker's slot of the
    block the process group shares, before the worker serves."""

    def __cinit__(self):
        self.cells = &self.own

    def attach(self, buffer):
        """Count into ``buffer`` (writable, at least ``CELLS_SIZE`` bytes)
        from now on.  What it holds already is kept (a slot taken over from
        a worker that died goes on counting from there), but for the gauges,
        which describe a live process and start at zero."""
        cdef sp_cells* cells = _cells_in(buffer)
        self.shared = buffer
        sp_reset_gauges(cells)
        self.cells = cells

    cdef void count_error(self, str kind):
        self.cells.errors[<int>ERROR_INDEX.get(kind, 0)] += 1

    def snapshot(self):
        return _cells_dict(self.cells)

    @property
    def requests_passed(self):
        return self.cells.requests_passed

    @property
    def requests_claimed(self):
        return self.cells.requests_claimed

    @property
    def client_connections(self):
        return self.cells.client_connections

    @property
    def client_connections_total(self):
        return self.cells.client_connections_total

    @property
    def upstream_connections(self):
        return self.cells.upstream_connections

    @property
    def upstream_idle(self):
        return self.cells.upstream_idle

    @property
    def upstream_connects(self):
        return self.cells.upstream_connects

    @property
    def upstream_waiters(self):
        return self.cells.upstream_waiters

    @property
    def buffered_bodies(self):
        return self.cells.buffered_bodies

    @property
    def errors(self):
        return _cells_dict(self.cells)["errors"]


@cython.final
cdef class Worker:
    """One worker's shared state; built by ProxyCore from a Config."""

    def __cinit__(self, config, loop, RouteTable routes, handler_runner, logger, access_hook):
        self.loop = loop
        self.counters = Counters()
        self.routes = routes
        self.handler_runner = handler_runner
        self.logger = logger
        self.clients = set()
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
        self.access_hook = access_hook
        self.access_log = access_hook is not None
        self.sweep_interval = min(1.0, max(0.05, min(
            self.header_timeout, self.idle_timeout, self.response_timeout, self.body_timeout,
            self.upstream_idle_timeout, self.send_timeout, self.upstream_queue_timeout) / 4.0))

    cdef bint take_budget(self, Py_ssize_t size):
        """Count ``size`` more buffered bytes; False once over the budget."""
        self.counters.cells.buffered_bodies += size
        return self.counters.cells.buffered_bodies <= self.max_buffered_bodies

    cdef void release_budget(self, Py_ssize_t size):
        self.counters.cells.buffered_bodies -= size

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

    cdef void notify(self, RouteMatch match, MessageHead head, bint done):
        """Tell a notify route's handler of a request passing through:
        ``handler(method, target, params, done)``, at its head (done False)
        and when its exchange ends (done True).  It runs on the loop and
        must be quick; an error in it is logged, never the request's."""
        try:
            match.route.handler(head.method.decode("latin-1"), head.target.decode("latin-1"),
                                match.params, done)
        except Exception as exc:
            if self.logger is not None:
                self.logger.warning("notify route %s failed: %s", match.route.path, type(exc).__name__)


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
