# The upstream side: the pool of connections to the engine, one connection's
# protocol, and the sinks that receive its responses.
from selproxy._http cimport MessageHead
from selproxy._worker cimport Worker, Deadline
from selproxy._writer cimport TransportWriter

# An upstream connection:
#
#   CONNECTING --made--> BUSY <--acquired-- IDLE
#                         |  --released-->   |
#                         +--101--> TUNNEL   |
#   any --EOF/error/timeout/close--> CLOSED  <+
cdef enum UpstreamState:
    UP_CONNECTING = 0
    UP_IDLE = 1
    UP_BUSY = 2
    UP_TUNNEL = 3
    UP_CLOSED = 4

# The response to the one request in flight on a BUSY connection:
#
#   send --> AWAITING --head begins--> IN_HEAD --1xx--> AWAITING
#                                        +--final head--> BODY --complete--> DONE
#   DONE: no head may follow in the same read (nothing else was asked).
cdef enum ResponseState:
    RESPONSE_AWAITING = 0
    RESPONSE_IN_HEAD = 1
    RESPONSE_BODY = 2
    RESPONSE_DONE = 3


cdef class UpstreamProtocol


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


cdef class UpstreamPool:
    cdef Worker worker
    cdef object ssl_context
    cdef str host
    cdef int port
    cdef bytes authority           # host[:port] as a Host header names it
    cdef list idle                 # UpstreamProtocol, most recently used last
    cdef object waiters            # deque of ResponseSink waiting for a slot
    cdef long total                # open plus connecting
    cdef set connections           # open
    cdef set connecting            # the connect tasks under way

    cdef void acquire(self, ResponseSink sink)
    cdef bint resend_on_fresh(self, UpstreamProtocol conn, ResponseSink sink, object exc)
    cdef void unqueue(self, ResponseSink sink)
    cdef void release(self, UpstreamProtocol conn, bint reusable)
    cdef void opened(self, UpstreamProtocol conn)
    cdef void leave_idle(self, UpstreamProtocol conn)
    cdef void forget(self, UpstreamProtocol conn)
    cdef void connect_failed(self, ResponseSink sink, str kind, object exc)
    cdef void expire_waiters(self, double now)
    cdef void check_deadlines(self, double now)
    cdef void close_idle(self)
    cdef void abort_all(self)
    cdef ResponseSink _next_waiter(self)
    cdef void _open(self, ResponseSink sink)


cdef class UpstreamProtocol:
    cdef Worker worker
    cdef UpstreamPool pool
    cdef object transport
    cdef TransportWriter out       # writes to transport
    cdef object parser
    cdef object feed_data          # parser.feed_data, bound once
    cdef UpstreamState state
    cdef ResponseState response
    cdef ResponseSink sink
    cdef MessageHead head
    cdef list trailers
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
    # A response head is read raw from the read buffer (see _read_head).
    cdef Py_ssize_t read_size      # bytes in the read being parsed
    cdef Py_ssize_t head_start     # where the next head starts in it
    cdef Py_ssize_t head_end       # where the last head read ended in it
    cdef bytearray head_carry      # a head's bytes from earlier reads
    cdef bint parser_spent         # the parser stopped mid-stream: make a new one
    cdef bint keep_alive           # what the head said, for a chunked body's end

    cdef void send(self, ResponseSink sink, bytes data)
    cdef void write(self, bytes data)
    cdef void writelines(self, list data)
    cdef void request_written(self)
    cdef void set_reading(self, bint on)
    cdef bint closed_while_idle(self, object exc)
    cdef void fail(self, object exc)
    cdef void abandon(self)
    cdef void close(self)
    cdef void abort(self)
    cdef void check_deadline(self, double now)
    cdef object extra_response_error(self)
    cdef void finish_response(self, bint reusable)
    cdef void _hold_if_parsing(self)
    cdef void _new_parser(self)
    cdef void _feed(self, ResponseSink sink, Py_ssize_t start, Py_ssize_t nbytes)
    cdef object _read_head(self, MessageHead head, bytes method)
    cdef void _read_chunked_body(self, ResponseSink sink, Py_ssize_t nbytes)


cdef long live_upstreams()
