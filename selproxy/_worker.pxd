# One worker's state, shared by its client and upstream connections: the
# loop, the one read buffer, the counters, the limits, draining.
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from selproxy._routes cimport RouteTable


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
    cdef readonly unsigned long long requests_passed
    cdef readonly unsigned long long requests_claimed
    cdef readonly unsigned long long client_connections_total
    cdef readonly unsigned long long upstream_connects
    cdef readonly long long buffered_bodies   # claimed bodies and handler responses held
    cdef readonly dict errors
    # The gauges are these containers' sizes, never counts kept in step.
    cdef set clients               # Worker.clients
    cdef set upstreams             # UpstreamPool.connections
    cdef list idle_upstreams       # UpstreamPool.idle
    cdef object waiters            # UpstreamPool.waiters

    cdef void count_error(self, str kind)


cdef class Worker:
    cdef readonly object loop
    cdef readonly Counters counters
    cdef RouteTable routes
    cdef object handler_runner     # async (route, request) -> response
    cdef object logger             # warnings about exchanges; None: quiet
    cdef bint access_log
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


# ``data_received`` for loops that do not call get_buffer/buffer_updated.
cdef void feed_copied(object protocol, object data) except *
cdef str error_kind(object exc)
