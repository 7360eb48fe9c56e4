# One worker's state, shared by its client and upstream connections: the
# loop, the one read buffer, the counters, the limits, draining.
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from selproxy._http cimport MessageHead
from selproxy._routes cimport RouteTable, RouteMatch
from selproxy._metrics cimport sp_cells


cdef inline double monotonic() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# What a connection's one deadline currently guards.
cdef enum Deadline:
    DEADLINE_NONE = 0
    DEADLINE_IDLE = 1        # keep-alive client between requests; an idle tunnel
    DEADLINE_HEAD = 2        # client sending a request head (slowloris)
    DEADLINE_RESPONSE = 3    # upstream owes us (more of) a response
    DEADLINE_BODY = 4        # client owes us (more of) a request body, at a
                             # minimum rate over each body_timeout window


cdef class Counters:
    # The figures live in ``cells``: the struct below until attach() points
    # it into the worker's slot of the group's shared block (_metrics.h).
    # The gauges are written from their containers' sizes where those change.
    cdef sp_cells* cells
    cdef sp_cells own
    cdef object shared             # the buffer ``cells`` points into, kept alive

    cdef void count_error(self, str kind)


cdef class Worker:
    cdef readonly object loop
    cdef readonly Counters counters
    cdef RouteTable routes
    cdef object handler_runner     # async (route, request) -> response
    cdef object logger             # warnings about exchanges; None: quiet
    cdef bint access_log           # access_hook is not None
    cdef object access_hook        # selproxy._logs.AccessLog: request ids and lines
    cdef set clients               # open client connections
    cdef set listen_authorities    # absolute-form targets that name this proxy
    cdef bytearray read_buffer     # every connection's reads land here
    cdef object read_view
    cdef object head_view          # its first HEAD_READ_SIZE bytes
    cdef bint draining
    cdef bint holding_upstream_writes   # a client read is being parsed
    cdef list held_writers         # the upstream writers it held writes in
    # Limits, copied from the Config once (config.py documents each).
    cdef Py_ssize_t max_request_line, max_header_bytes, max_buffered_body
    cdef Py_ssize_t max_buffered_response, request_buffer_size
    cdef Py_ssize_t max_upstream, max_idle, max_upstream_waiters
    cdef long long max_buffered_bodies
    cdef Py_ssize_t body_window_min     # bytes each body_timeout window must bring
    cdef double header_timeout, idle_timeout, connect_timeout, response_timeout
    cdef double body_timeout, upstream_idle_timeout, send_timeout
    cdef double upstream_queue_timeout, sweep_interval
    cdef bint forwarded_headers

    cdef bint take_budget(self, Py_ssize_t size)
    cdef void release_budget(self, Py_ssize_t size)
    cdef void release_held_writes(self)
    cdef void notify(self, RouteMatch match, MessageHead head, bint done)


# ``data_received`` for loops that do not call get_buffer/buffer_updated.
cdef void feed_copied(object protocol, object data) except *
cdef str error_kind(object exc)
# The route kind a request counts under in the cells (None: passthrough).
cdef int route_kind(RouteMatch claim)
