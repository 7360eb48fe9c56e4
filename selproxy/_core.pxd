# The compiled proxy core: connections, the upstream pool, the splice loop.
from selproxy._http cimport MessageHead, BodyFraming
from selproxy._routes cimport RouteTable, RouteMatch
from selproxy._metrics cimport sp_cells


# A client connection:
#
#   OPEN --upgrade request--> UPGRADING --101--> TUNNEL --close--> CLOSED
#     |                           |
#     |                           +--other final status--> CLOSING
#     +--parse error / Connection: close / drain--> CLOSING --flushed--> CLOSED
cdef enum ClientState:
    CLIENT_OPEN = 0
    CLIENT_UPGRADING = 1
    CLIENT_TUNNEL = 2
    CLIENT_CLOSING = 3
    CLIENT_CLOSED = 4

# What the connection-wide deadline currently guards.
cdef enum Deadline:
    DEADLINE_NONE = 0
    DEADLINE_IDLE = 1        # keep-alive client between requests
    DEADLINE_HEAD = 2        # client sending a request head (slowloris)
    DEADLINE_RESPONSE = 3    # upstream owes us (more of) a response
    DEADLINE_BODY = 4        # client owes us (more of) a request body, at a
                             # minimum rate over each body_timeout window

# An upstream connection:
#
#   CONNECTING --made--> IDLE <--released-- BUSY
#                          |  --acquired-->  |
#                          +--EOF/error/timeout--> CLOSED <--------+
cdef enum UpstreamState:
    UP_CONNECTING = 0
    UP_IDLE = 1
    UP_BUSY = 2
    UP_TUNNEL = 3
    UP_CLOSED = 4

# Reasons a client connection stops reading; reading resumes when none is left.
cdef enum PauseReason:
    PAUSE_UPSTREAM_FULL = 1     # the upstream's write buffer is over its high mark
    PAUSE_BACKLOG = 2           # too much request data queued behind the active one
    PAUSE_STOPPED = 4           # parsing has ended (error, upgrade in flight)


cdef class Counters:
    # The figures live in ``cells``: the struct below until attach() points
    # it into the worker's slot of the group's shared block (_metrics.h).
    cdef sp_cells* cells
    cdef sp_cells own
    cdef object shared             # the buffer ``cells`` points into, kept alive

    cdef void count_error(self, str kind)


cdef class ResponseSink:
    """Anything that receives an upstream's response: a client connection
    (passthrough) or a collector for a handler's upstream call."""
    cdef bytes request_method
    cdef double queued_at          # when it joined the pool's waiters; 0: not waiting
    cdef void upstream_ready(self, UpstreamProtocol conn)
    cdef void upstream_failed(self, object exc)
    cdef void response_interim(self, MessageHead head)
    cdef void response_head(self, MessageHead head)
    cdef void response_body(self, bytes data)
    cdef void response_complete(self, list trailers)
    cdef void response_upgrade(self, bytes rest)
    cdef void response_failed(self, object exc, bint head_seen)
    cdef void upstream_write_paused(self, bint paused)
    cdef void cork(self)
    cdef void uncork(self)


cdef class TransportWriter:
    cdef object transport
    cdef object transport_write    # transport.write, bound once
    cdef int fd                    # the socket's, or -1: always through the transport
    cdef bint transport_may_hold   # bytes may wait in the transport
    cdef unsigned long long handed # bytes handed to the transport, ever
    cdef unsigned long long sent_mark   # of those, how many had left at the last check
    cdef double stalled_since      # since when none has left; 0: not stalled

    cdef bint stalled(self, double now, double limit)

    cdef void stop(self)
    cdef void write(self, bytes data)
    cdef void writelines(self, list pieces)
    cdef void write_all(self, list pieces)


cdef class UpstreamPool:
    cdef ProxyCore core
    cdef list idle                 # UpstreamProtocol, most recently used last
    cdef object waiters            # deque of ResponseSink waiting for a slot
    cdef long total                # open plus connecting
    cdef set connections

    cdef void acquire(self, ResponseSink sink)
    cdef ResponseSink _next_waiter(self)
    cdef void unqueue(self, ResponseSink sink)
    cdef void expire_waiters(self, double now)
    cdef void release(self, UpstreamProtocol conn, bint reusable)
    cdef void forget(self, UpstreamProtocol conn)
    cdef void _open(self, ResponseSink sink)


cdef class UpstreamProtocol:
    cdef ProxyCore core
    cdef UpstreamPool pool
    cdef object transport
    cdef TransportWriter out       # writes to transport
    cdef object parser
    cdef object feed_data          # parser.feed_data, bound once
    cdef UpstreamState state
    cdef ResponseSink sink
    cdef MessageHead head
    cdef list trailers
    cdef bint head_seen
    cdef bint any_response_bytes
    cdef bint reused
    cdef bint reusable
    cdef unsigned long long uses
    cdef bint request_complete
    cdef bint reading_paused
    cdef bint writing_paused
    cdef Deadline deadline_kind
    cdef double deadline
    cdef double idle_since
    cdef object _last_error
    cdef list corked_out           # writes held while a client read is parsed
    # A response head is read raw from the read buffer (see _read_head).
    cdef Py_ssize_t read_size      # bytes in the read being parsed
    cdef Py_ssize_t head_start     # where the next head starts in it; -1: none may
    cdef Py_ssize_t head_end       # where the last head read ended in it
    cdef bint in_head
    cdef bytearray head_carry      # a head's bytes from earlier reads
    cdef bint parser_spent         # the parser stopped mid-stream: make a new one
    cdef bint keep_alive           # what the head said, for a chunked body's end

    cdef void send(self, ResponseSink sink, bytes data)
    cdef void write(self, bytes data)
    cdef list _held(self)
    cdef void flush(self)
    cdef void writelines(self, list data)
    cdef void request_sent(self)
    cdef void set_reading(self, bint on)
    cdef void close(self)
    cdef void abort(self)
    cdef void _finish_response(self, bint reusable)
    cdef void _fail(self, object exc)
    cdef void check_deadline(self, double now)
    cdef void _new_parser(self)
    cdef void _feed(self, ResponseSink sink, Py_ssize_t start, Py_ssize_t nbytes)
    cdef object _read_head(self, MessageHead head, bytes method)
    cdef object _refuse_extra_response(self)
    cdef void _read_chunked_body(self, ResponseSink sink, Py_ssize_t nbytes)


cdef class Exchange:
    cdef MessageHead head
    cdef bint request_complete
    cdef bint keep_alive
    cdef bint upgrade
    cdef list pending              # framed body pieces not yet sent upstream
    cdef Py_ssize_t pending_size
    cdef RouteMatch claim
    cdef RouteMatch notify         # a notify route's match: told again at _finish
    cdef object body               # a claimed request's body: bytes, then a bytearray
    cdef Py_ssize_t budgeted       # of it, bytes counted in core.counters.buffered_bodies
    cdef bint body_first           # passthrough: the body is read before an upstream is taken
    cdef Py_ssize_t body_size
    cdef object error              # a ProxyError to answer instead
    cdef bint close_after
    cdef list trailers
    cdef bint response_chunked
    cdef bint response_started
    cdef bint retried
    cdef bint answered             # its response is out; the rest of its body is dropped
    cdef Py_ssize_t dropped        # bytes of that rest read so far
    cdef double started_at
    # For the access log (core.access_hook); set only while it is on.
    cdef int status                # of the response sent to the client
    cdef long long bytes_out       # body bytes sent to the client
    cdef bytes request_id          # echoed as X-Request-Id
    cdef list answer_headers       # a response the proxy made: its headers
    # When its head went upstream; 0: not yet (metrics, access log).
    cdef double upstream_at


cdef class ClientProtocol(ResponseSink):
    cdef ProxyCore core
    cdef object transport
    cdef TransportWriter out       # writes to transport
    cdef object parser
    cdef object feed_data          # parser.feed_data, bound once
    cdef object peer
    cdef ClientState state
    cdef object exchanges          # deque of Exchange, the active one first
    cdef Exchange first            # exchanges[0], or None: kept in step with it
    cdef Exchange receiving        # the one whose request is being read
    cdef MessageHead parsing
    cdef UpstreamProtocol upstream
    cdef int paused
    cdef bint writing_paused
    cdef Py_ssize_t backlog_size
    cdef Py_ssize_t head_size
    cdef Py_ssize_t raw_head_size
    cdef Py_ssize_t url_size
    cdef Py_ssize_t body_window_bytes   # body bytes read in this body_timeout window
    cdef Py_ssize_t framing_bytes  # bytes read since the last body piece (chunk lines, trailers)
    cdef bint tunnel_moved         # a byte crossed the tunnel since the last idle check
    cdef bint linger_on_close      # parsing stopped mid-request: the client may still send
    cdef bint lingering            # answered and half-closed: reading and dropping
    cdef Py_ssize_t lingered       # bytes dropped so far
    cdef bint in_head
    cdef list tunnel_pending
    cdef Exchange upgrading
    cdef Py_ssize_t upgrade_body_left
    cdef object handler_task
    cdef bint corked
    cdef list corked_out
    cdef Deadline deadline_kind
    cdef double deadline
    cdef object _last_error

    cdef void _pause(self, int reason)
    cdef void _resume(self, int reason)
    cdef void _feed(self, object data)
    cdef void _feed_corked(self, Py_ssize_t nbytes)
    cdef void _stop_parsing(self, object exc)
    cdef void _upgrade_bytes(self, bytes data)
    cdef bint _may_ask_keep_alive(self, MessageHead head)
    cdef object _check_target(self, MessageHead head)
    cdef void _queue(self, Exchange ex)
    cdef void _start(self, Exchange ex)
    cdef void _send_upstream(self, UpstreamProtocol conn, Exchange ex)
    cdef void _body_piece(self, Exchange ex, bytes data)
    cdef void _answer(self, Exchange ex, int status, list headers, bytes body)
    cdef void _answer_error(self, Exchange ex, object exc)
    cdef void _acquire_upstream(self, Exchange ex)
    cdef void _finish(self, Exchange ex)
    cdef void _log_exchange(self, Exchange ex)
    cdef bint _last_one(self)
    cdef bint _can_drain(self, Exchange ex)
    cdef void _write(self, bytes data)
    cdef void _writelines(self, list data)
    cdef void close(self)
    cdef void abort(self)
    cdef void _drain_when_received(self)
    cdef void drain(self)
    cdef void check_deadline(self, double now)
    cdef void run_handler(self, Exchange ex)


cdef class ProxyCore:
    cdef readonly object loop
    cdef readonly Counters counters
    cdef readonly object config
    cdef RouteTable routes
    cdef readonly UpstreamPool pool
    cdef object ssl_context
    cdef str upstream_host
    cdef int upstream_port
    cdef bytes upstream_authority
    cdef bytes upstream_scheme
    cdef set listen_authorities
    cdef object handler_runner
    cdef object logger
    cdef set clients
    cdef bytearray read_buffer
    cdef object read_view
    cdef object head_view          # its first HEAD_READ_SIZE bytes
    cdef object sweeper
    cdef bint draining
    cdef bint cork_upstreams       # a client read is being parsed
    cdef list corked_upstreams     # the upstream connections it wrote to

    cdef Py_ssize_t max_request_line
    cdef Py_ssize_t max_header_bytes
    cdef Py_ssize_t max_buffered_body
    cdef Py_ssize_t max_buffered_response
    cdef Py_ssize_t max_upstream
    cdef Py_ssize_t max_idle
    cdef double header_timeout
    cdef double idle_timeout
    cdef double connect_timeout
    cdef double response_timeout
    cdef double body_timeout
    cdef double upstream_idle_timeout
    cdef double send_timeout
    cdef double upstream_queue_timeout
    cdef Py_ssize_t max_upstream_waiters
    cdef Py_ssize_t body_window_min      # bytes each body_timeout window must bring
    cdef Py_ssize_t request_buffer_size
    cdef long long max_buffered_bodies
    cdef double sweep_interval
    cdef bint forwarded_headers
    cdef bint access_log           # access_hook is not None
    cdef object access_hook        # selproxy._logs.AccessLog: request ids and lines

    cdef void _sweep(self)
    cdef bint take_budget(self, Py_ssize_t size)
    cdef void notify(self, RouteMatch match, MessageHead head, bint done)
