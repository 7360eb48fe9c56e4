# cython: language_level=3
"""The client side: client connections, their exchanges, and handlers.

:class:`ClientProtocol` is a ``cdef class`` with ``get_buffer``/
``buffer_updated`` and *not* an ``asyncio.Protocol`` subclass, so uvloop reads
straight into the worker's one read buffer (uvloop ``handles/stream.pyx``,
``_set_protocol``).  Every read is consumed before ``buffer_updated`` returns:
httptools hands the callbacks ``bytes`` copies, and anything kept past the
call is copied.

Passthrough traffic never leaves the compiled core: httptools calls the
``on_*`` methods below, and they write to the upstream connection.  Only a
request that matches a route crosses into Python, whole, through
``run_handler``; its response comes back through ``_HandlerDone``.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from selproxy._http cimport (
    MessageHead, BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE,
    new_request_head, analyse_request, request_head_bytes, response_head_bytes,
    chunk_size_line, last_chunk_bytes, answer_head_bytes, add_response_field, field_error,
)
from selproxy._routes cimport RouteMatch
from selproxy._worker cimport (
    Worker, Deadline, DEADLINE_NONE, DEADLINE_IDLE, DEADLINE_HEAD, DEADLINE_BODY,
    monotonic, feed_copied, error_kind, route_kind,
)
from selproxy._metrics cimport sp_observe, sp_count_response, SP_ROUTE_PASSTHROUGH
from selproxy._writer cimport TransportWriter, tune_transport, hold_writes, write_or_hold
from selproxy._upstream cimport ResponseSink, UpstreamPool, UpstreamProtocol
from selproxy._debug cimport SELPROXY_DEBUG

import collections
import logging

from httptools import HttpRequestParser
from httptools.parser.errors import (
    HttpParserError, HttpParserCallbackError, HttpParserUpgrade,
)

from selproxy.errors import (
    ProxyError, BadRequest, RequestLineTooLong, HeadersTooLarge, BodyTooLarge,
    MethodNotAllowed, MisdirectedRequest, UpstreamProtocolError, HandlerError, RequestTimeout,
    BodyBudgetExceeded,
)
from selproxy.handler import Request as _Request

cdef object Request = _Request
cdef object deque = collections.deque
cdef object log = logging.getLogger("selproxy")

cdef bytes CRLF = b"\r\n"
cdef bytes CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
cdef bytes EMPTY = b""

# Pipelined requests and early body bytes are queued while an exchange is in
# flight; past this much the client stops being read until the queue drains.
cdef Py_ssize_t BACKLOG_HIGH = 256 * 1024
cdef Py_ssize_t BACKLOG_LOW = 64 * 1024
# An upstream may answer before a request's body is all sent (an auth error,
# a 413).  Up to this much of the rest is read and dropped so the client
# connection stays open, as nginx does.  A longer Content-Length remainder
# gets Connection: close with the answer; a chunked one, of unknown size,
# is cut once this much has been dropped.
cdef long long DRAIN_MAX = 1024 * 1024
# After an answer that ends a connection mid-request (an error, a timeout),
# what the client still sends is read and dropped for up to this long (and
# this much) before the close: closing on unread bytes sends a reset, which
# can reach the client before the answer does (nginx's lingering_close).
cdef double LINGER_TIME = 2.0
cdef Py_ssize_t LINGER_MAX = 64 * 1024 * 1024
# Queued request body pieces smaller than this, once this many are queued,
# go into one buffer (see ClientProtocol._body_piece).
cdef Py_ssize_t PENDING_SMALL = 1024
cdef Py_ssize_t PENDING_MERGE_FROM = 8


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

# Reasons a client connection stops reading; reading resumes when none is left.
cdef enum PauseReason:
    PAUSE_UPSTREAM_FULL = 1     # the upstream's write buffer is over its high mark
    PAUSE_BACKLOG = 2           # too much request data queued behind the active one
    PAUSE_STOPPED = 4           # parsing has ended (error, upgrade in flight)

# An exchange (a request and its response), from the response's side; how
# much of its request has been read is apart (Exchange.request_complete):
#
#   QUEUED --its turn--> BUFFERING --body read, or past the buffer--+
#     |                  (passthrough: the body first, see _start)  v
#     +--its turn-------------------------------------------->  UPSTREAM --head--> RESPONDING
#     +--its turn, claimed--> HANDLER                               |                   |
#   any --answered by the proxy (error, handler)--> ANSWERED <------+--------------------+
#   ANSWERED: its response is out; the rest of its body is read and dropped.
cdef enum ExchangeState:
    EX_QUEUED = 0
    EX_BUFFERING = 1
    EX_UPSTREAM = 2
    EX_HANDLER = 3
    EX_RESPONDING = 4
    EX_ANSWERED = 5


# Live objects, counted in debug builds only: tests assert they return to
# zero once a proxy has stopped (a leaked connection or exchange shows here).
cdef long _live_clients = 0
cdef long _live_exchanges = 0


cdef long live_clients():
    return _live_clients


cdef long live_exchanges():
    return _live_exchanges


class _StopParsing(Exception):
    """Raised from a request callback: the head is answered by the proxy."""


cdef object StopParsing = _StopParsing


cdef object _budget_exceeded():
    return BodyBudgetExceeded(
        "the bodies this worker buffers for claimed requests are at max_buffered_bodies")


@cython.final
@cython.freelist(64)
@cython.internal
cdef class Exchange:
    cdef ExchangeState state
    cdef MessageHead head
    cdef bint request_complete
    cdef bint keep_alive
    cdef bint upgrade
    cdef list pending              # framed body pieces not yet sent upstream
    cdef Py_ssize_t pending_size
    cdef RouteMatch claim
    cdef RouteMatch notify         # a notify route's match: told again at _finish
    cdef object body               # a claimed request's body: bytes, then a bytearray
    cdef Py_ssize_t budgeted       # of it, bytes counted in the worker's buffered_bodies
    cdef Py_ssize_t body_size
    cdef object error              # a ProxyError to answer instead
    cdef bint close_after
    cdef list trailers
    cdef bint response_chunked
    cdef bint retried
    cdef Py_ssize_t dropped        # bytes of its body read and dropped after its answer
    cdef double started_at
    # For the access log (worker.access_hook); set only while it is on.
    cdef int status                # of the response sent to the client
    cdef long long bytes_out       # body bytes sent to the client
    cdef bytes request_id          # echoed as X-Request-Id
    cdef list answer_headers       # a response the proxy made: its headers
    # When its head went upstream; 0: not yet (metrics, access log).
    cdef double upstream_at

    def __cinit__(self):
        global _live_exchanges
        self.keep_alive = True
        if SELPROXY_DEBUG:
            _live_exchanges += 1

    def __dealloc__(self):
        global _live_exchanges
        if SELPROXY_DEBUG:
            _live_exchanges -= 1


cdef object new_client(Worker worker, UpstreamPool pool):
    return ClientProtocol(worker, pool)


cdef void check_client_deadlines(Worker worker, double now):
    cdef ClientProtocol client
    for client in list(worker.clients):
        client.check_deadline(now)


cdef void drain_clients(Worker worker):
    cdef ClientProtocol client
    for client in list(worker.clients):
        client.drain()


cdef void abort_clients(Worker worker):
    cdef ClientProtocol client
    for client in list(worker.clients):
        client.abort()


@cython.internal
cdef class _HandlerDone:
    cdef ClientProtocol client
    cdef Exchange ex

    def __cinit__(self, ClientProtocol client, Exchange ex):
        self.client = client
        self.ex = ex

    def __call__(self, task):
        """Every end of a handler ends in an answer (or a closed client):
        a result that cannot be written is a 500, never silence."""
        cdef ClientProtocol client = self.client
        cdef Exchange ex = self.ex
        if client.handler_task is task:
            client.handler_task = None
        if client.state == CLIENT_CLOSED:
            return
        try:
            if task.cancelled():
                # Not by the core (it cancels only for a closed client).
                exc = HandlerError("the handler failed: CancelledError")
                client.worker.counters.count_error("handler_error")
                log.error("handler for %s %s was cancelled", ex.head.method.decode("latin-1"),
                          ex.head.target.decode("latin-1"))
            else:
                exc = task.exception()
            if exc is None:
                try:
                    status, headers, body = _response_parts(task.result())
                except Exception as bad:
                    client.worker.counters.count_error("handler_bad_response")
                    log.error("handler for %s %s returned a response that cannot be sent",
                              ex.head.method.decode("latin-1"),
                              ex.head.target.decode("latin-1"), exc_info=bad)
                    # The kind only: the text may hold what the client sent.
                    exc = HandlerError(
                        f"the handler's response cannot be sent: {type(bad).__name__}")
                else:
                    client._answer(ex, status, headers, body)
                    return
            elif not isinstance(exc, ProxyError):
                client.worker.counters.count_error("handler_error")
                log.error("handler for %s %s failed", ex.head.method.decode("latin-1"),
                          ex.head.target.decode("latin-1"), exc_info=exc)
                exc = HandlerError(f"the handler failed: {type(exc).__name__}")
            client._answer_error(ex, exc)
        except Exception:
            # Nothing may escape a done callback: the loop would only log it,
            # and this client would wait forever.
            log.exception("answering %s %s failed", ex.head.method.decode("latin-1"),
                          ex.head.target.decode("latin-1"))
            client.abort()


cdef tuple _response_parts(object response):
    """A handler's Response as (status, [(name, value)], body) in bytes,
    checked: raises if any of it cannot go into a response as it is."""
    cdef list headers = []
    cdef bytes name, value
    status = response.status
    if type(status) is not int or not 200 <= status <= 599:
        raise ValueError("the status is not an int from 200 to 599")
    for pair in response.headers:
        raw_name, raw_value = pair
        if type(raw_name) is not str:
            raise TypeError("a header name is not a str")
        name = raw_name.encode("latin-1")
        value = str(raw_value).encode("latin-1")
        problem = field_error(name, value)
        if problem is not None:
            raise ValueError(problem)
        headers.append((name, value))
    body = response.body
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("the body is not bytes or str")
    return status, headers, bytes(body)


@cython.final
@cython.internal
cdef class ClientProtocol(ResponseSink):
    cdef Worker worker
    cdef UpstreamPool pool
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
    cdef UpstreamProtocol upstream_conn   # carrying the active exchange
    cdef int paused                # PauseReason bits
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
    cdef Deadline deadline_kind
    cdef double deadline

    def __cinit__(self, Worker worker, UpstreamPool pool):
        global _live_clients
        self.worker = worker
        self.pool = pool
        self.state = CLIENT_OPEN
        self.exchanges = deque()
        self.parser = HttpRequestParser(self)
        self.feed_data = self.parser.feed_data
        if SELPROXY_DEBUG:
            _live_clients += 1

    def __dealloc__(self):
        global _live_clients
        if SELPROXY_DEBUG:
            _live_clients -= 1

    # asyncio protocol interface ------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.out = TransportWriter(transport)
        tune_transport(transport)
        self.peer = transport.get_extra_info("peername")
        self.worker.clients.add(self)
        self.worker.counters.cells.client_connections = len(self.worker.clients)
        self.worker.counters.cells.client_connections_total += 1
        self._arm_idle()
        if self.worker.draining:
            self.close()

    def connection_lost(self, exc):
        cdef UpstreamProtocol up = self.upstream_conn
        cdef Exchange ex
        self.state = CLIENT_CLOSED
        self.pool.unqueue(self)
        for ex in self.exchanges:
            self.worker.release_budget(ex.budgeted)
            ex.budgeted = 0
        self.worker.clients.discard(self)
        self.worker.counters.cells.client_connections = len(self.worker.clients)
        self.transport = None
        if self.out is not None:
            self.out.stop()
        self.deadline_kind = DEADLINE_NONE
        if up is not None:
            # The client is gone: so is this exchange, and the upstream
            # connection carrying it is in an unknown state.
            self.upstream_conn = None
            up.abandon()
        self.exchanges.clear()
        self.first = None
        if self.handler_task is not None:
            self.handler_task.cancel()
            self.handler_task = None
        self.parser = None
        self.feed_data = None

    def eof_received(self):
        cdef Exchange ex
        # A half-close after whole requests: answer them, then close.  A
        # request cut short can never complete, so that is a disconnect.
        if (self.first is None or self.in_head or self.receiving is not None
                or self.lingering):
            return False
        for ex in self.exchanges:
            if not ex.request_complete:
                return False
        self.state = CLIENT_CLOSING
        return True

    def pause_writing(self):
        self.writing_paused = True
        if self.upstream_conn is not None:
            self.upstream_conn.set_reading(False)

    def resume_writing(self):
        self.writing_paused = False
        if self.upstream_conn is not None:
            self.upstream_conn.set_reading(True)

    def get_buffer(self, Py_ssize_t hint):
        if self.receiving is None and self.state == CLIENT_OPEN:
            # Between bodies a read holds heads: each small pipelined one
            # becomes a few hundred bytes of objects before reading pauses,
            # so such reads are kept small (a body gets the whole buffer).
            return self.worker.head_view
        return self.worker.read_view

    def data_received(self, data):
        feed_copied(self, data)

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef ClientState state = self.state
        self.worker.counters.cells.client_bytes_in += nbytes
        if state == CLIENT_OPEN:
            if self.deadline_kind == DEADLINE_BODY:
                self.body_window_bytes += nbytes
                self.framing_bytes += nbytes
                self._feed_holding(nbytes)
                if (self.framing_bytes > self.worker.max_header_bytes + 4096
                        and self.deadline_kind == DEADLINE_BODY):
                    # Reads that bring no body byte: chunk lines and trailers.
                    # httptools joins a trailer's pieces itself, so an endless
                    # one would grow unseen, as a head's would (see below).
                    self._stop_parsing(HeadersTooLarge(
                        f"the request trailers are larger than "
                        f"{self.worker.max_header_bytes} bytes"))
                if self.worker.draining:
                    self._drain_when_received()
                return
            self._feed_holding(nbytes)
            if self.in_head:
                # httptools joins a header's pieces itself before calling
                # on_header, so one endless header would grow unseen: count
                # the raw bytes of an unfinished head as well.
                self.raw_head_size += nbytes
                if self.raw_head_size > (self.worker.max_request_line
                                         + self.worker.max_header_bytes + 4096):
                    self._stop_parsing(HeadersTooLarge(
                        f"the request header block is larger than "
                        f"{self.worker.max_header_bytes} bytes"))
            if self.worker.draining:
                self._drain_when_received()
        elif state == CLIENT_TUNNEL:
            self.tunnel_moved = True
            if self.upstream_conn is not None:
                self.upstream_conn.write(bytes(self.worker.read_view[:nbytes]))
        elif state == CLIENT_UPGRADING:
            self._upgrade_bytes(bytes(self.worker.read_view[:nbytes]))
        elif self.lingering:
            self.lingered += nbytes
            if self.lingered > LINGER_MAX:
                self.close()

    cdef void _feed_holding(self, Py_ssize_t nbytes):
        """Parse a read, holding the upstream writes it produces until the
        parse ends (see UpstreamProtocol._hold_if_parsing)."""
        cdef Worker worker = self.worker
        worker.holding_upstream_writes = True
        try:
            self._feed(worker.read_view[:nbytes])
        finally:
            worker.release_held_writes()

    cdef void _feed(self, object data):
        try:
            self.feed_data(data)
        except HttpParserUpgrade as exc:
            offset = exc.args[0]
            if self.state == CLIENT_OPEN:
                self.state = CLIENT_UPGRADING
                if self.tunnel_pending is None:
                    self.tunnel_pending = []
                self._upgrade_bytes(bytes(data[offset:]))
        except HttpParserCallbackError as exc:
            # httptools chains what a callback raised as the __context__.
            cause = exc.__context__
            if not isinstance(cause, _StopParsing):
                self._stop_parsing(cause if isinstance(cause, ProxyError)
                                   else BadRequest(f"invalid request: {exc}"))
        except HttpParserError as exc:
            self._stop_parsing(BadRequest(f"invalid request: {exc}"))

    cdef void _upgrade_bytes(self, bytes data):
        """Bytes after an upgrade request's head: first its own body (llhttp
        skips it, as httptools reports every upgrade at once), which goes
        upstream now; the rest is held until the upstream's 101, so nothing
        unparsed reaches the upstream unless it agreed to a tunnel."""
        cdef Exchange ex = self.upgrading
        cdef Py_ssize_t take
        if ex is not None and self.upgrade_body_left > 0 and data:
            take = min(self.upgrade_body_left, PyBytes_GET_SIZE(data))
            self.upgrade_body_left -= take
            self._body_piece(ex, data[:take])
            data = data[take:]
            if self.upgrade_body_left == 0:
                ex.request_complete = True
                if self.first is ex and self.upstream_conn is not None:
                    self.upstream_conn.request_written()
        if data:
            self.tunnel_pending.append(data)
            self.backlog_size += PyBytes_GET_SIZE(data)
            if self.backlog_size > BACKLOG_HIGH:
                self._pause(PAUSE_BACKLOG)

    cdef void _stop_parsing(self, object exc):
        """Answer ``exc`` after what is already queued, then close."""
        cdef Exchange ex
        if self.state != CLIENT_OPEN:
            return
        self.state = CLIENT_CLOSING
        self.in_head = False
        self._pause(PAUSE_STOPPED)
        self.linger_on_close = True
        self.worker.counters.count_error(error_kind(exc))
        ex = self.receiving
        if ex is None or ex.request_complete:
            ex = Exchange.__new__(Exchange)
            ex.head = self.parsing or new_request_head(b"GET", b"/")
            ex.error = exc
            ex.close_after = True
            ex.keep_alive = False
            ex.request_complete = True
            self._queue(ex)
        elif ex.state == EX_ANSWERED:
            # Broken while its dropped rest was read: nothing is left to say.
            self.close()
        else:
            # The request being read is broken mid-body: if it is active,
            # its upstream exchange is abandoned; else it is answered in turn.
            ex.error = exc
            ex.close_after = True
            ex.keep_alive = False
            ex.request_complete = True
            if self.first is ex and ex.state != EX_RESPONDING:
                if self.upstream_conn is not None:
                    self.upstream_conn.abandon()
                    self.upstream_conn = None
                if ex.claim is None or self.handler_task is None:
                    self._answer_error(ex, exc)
            elif self.first is ex:
                self.abort()
        self.receiving = None

    cdef void _pause(self, int reason):
        if self.paused == 0 and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    cdef void _resume(self, int reason):
        if self.paused == 0:
            return
        self.paused &= ~reason
        if self.paused == 0 and self.transport is not None:
            self.transport.resume_reading()
            if self.deadline_kind == DEADLINE_BODY:
                # The body window counts only time the proxy was reading.
                self.deadline = monotonic() + self.worker.body_timeout
                self.body_window_bytes = 0

    # httptools callbacks ---------------------------------------------------

    def on_message_begin(self):
        self.parsing = new_request_head(None, EMPTY)
        self.in_head = True
        self.head_size = 0
        self.raw_head_size = 0
        self.url_size = 0
        if self.deadline_kind != DEADLINE_HEAD:
            self.deadline_kind = DEADLINE_HEAD
            self.deadline = monotonic() + self.worker.header_timeout

    def on_url(self, bytes url):
        self.url_size += PyBytes_GET_SIZE(url)
        if self.url_size > self.worker.max_request_line:
            raise RequestLineTooLong(
                f"the request target is longer than {self.worker.max_request_line} bytes")
        self.parsing.target += url

    def on_header(self, bytes name, bytes value):
        cdef Exchange ex
        if not self.in_head:
            # Trailers (RFC 9112 section 7.1.2): bounded like a head.
            self.head_size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
            if self.head_size > self.worker.max_header_bytes:
                raise HeadersTooLarge(
                    f"the request trailers are larger than {self.worker.max_header_bytes} bytes")

            ex = self.receiving
            if ex is not None:
                if ex.trailers is None:
                    ex.trailers = []
                ex.trailers.append((name, value))
            return
        self.head_size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
        if self.head_size > self.worker.max_header_bytes:
            raise HeadersTooLarge(
                f"the request header block is larger than {self.worker.max_header_bytes} bytes")

        self.parsing.headers.append((name, value))

    def on_headers_complete(self):
        cdef MessageHead head = self.parsing
        cdef Exchange ex = Exchange.__new__(Exchange)
        cdef Worker worker = self.worker
        self.in_head = False
        self.head_size = 0
        self.deadline_kind = DEADLINE_NONE
        ex.head = head
        ex.started_at = monotonic()
        head.method = self.parser.get_method()
        ex.keep_alive = self.parser.should_keep_alive()
        if not ex.keep_alive or self._may_ask_keep_alive(head):
            # PERF: get_http_version() formats a str per call.  An HTTP/1.0
            # request keeps its connection only when it asks with
            # "Connection: keep-alive", so a kept one without it is 1.1.
            # (Commit 8be17ce: with three other changes, 46,400 -> 40,300
            # user-space instructions per small request; callgrind,
            # bench_instructions.py, RESULTS.md 2026-11-28 16:30.)
            if self.parser.get_http_version() == "1.0":
                head.version_minor = 0
        ex.upgrade = self.parser.should_upgrade()
        if head.method == b"CONNECT":
            err = MethodNotAllowed("CONNECT is not allowed: this is a reverse proxy")
        else:
            err = analyse_request(head)
        if err is None:
            err = self._check_target(head)
        if err is None:
            ex.claim = worker.routes.lookup(head.method, head.target)
            if ex.claim is not None and ex.claim.notify:
                # A write the search layer wants to hear of: told now, and
                # again when its exchange ends; it passes through as any other.
                ex.notify, ex.claim = ex.claim, None
                worker.notify(ex.notify, head, False)
            if ex.claim is not None:
                if ex.upgrade:
                    err = BadRequest("a claimed route cannot be upgraded")
                elif head.content_length > worker.max_buffered_body:
                    err = BodyTooLarge(
                        f"the request body is larger than {worker.max_buffered_body} bytes")
                elif head.framing != BODY_NONE and (
                        worker.counters.cells.buffered_bodies + max(head.content_length, 0)
                        > worker.max_buffered_bodies):
                    err = _budget_exceeded()
        if err is not None:
            self.receiving = None
            self._stop_parsing(err)
            raise StopParsing()

        self.receiving = ex
        if ex.upgrade:
            if head.framing == BODY_CHUNKED:
                self.receiving = None
                self._stop_parsing(BadRequest("a chunked body on an upgrade request"))
                raise StopParsing()

            self.upgrading = ex
            self.upgrade_body_left = head.content_length if head.framing == BODY_LENGTH else 0
        if worker.access_log:
            # The client's X-Request-Id if it is a safe one, else a new one
            # (the hook puts it in head.end_to_end, so the upstream sees it).
            ex.request_id = worker.access_hook.take_request_id(head)
        if head.framing == BODY_NONE:
            ex.request_complete = not ex.upgrade
        else:
            self.deadline_kind = DEADLINE_BODY
            self.deadline = monotonic() + worker.body_timeout
            self.body_window_bytes = 0
            self.framing_bytes = 0
        self._queue(ex)

    cdef bint _may_ask_keep_alive(self, MessageHead head):
        """Whether ``head`` has a field llhttp reads keep-alive from:
        Connection, or Proxy-Connection, which llhttp treats alike."""
        cdef bytes name
        cdef Py_ssize_t size
        for name, _value in head.headers:
            size = PyBytes_GET_SIZE(name)
            if size == 10 or size == 16:
                if name.lower() in (b"connection", b"proxy-connection"):
                    return True
        return False

    cdef object _check_target(self, MessageHead head):
        cdef bytes target = head.target
        if PyBytes_GET_SIZE(target) and PyBytes_AS_STRING(target)[0] == 47:   # '/'
            return None
        if target == b"*" and head.method == b"OPTIONS":
            return None
        lowered = target[:8].lower()
        if lowered.startswith(b"http://") or lowered.startswith(b"https://"):
            # RFC 9112 section 3.2.2: absolute form.  Only the upstream
            # itself, or this proxy, may be named: never another host.
            rest = target.split(b"://", 1)[1]
            slash = rest.find(b"/")
            authority = (rest if slash < 0 else rest[:slash]).lower()
            if (authority != self.pool.authority
                    and authority not in self.worker.listen_authorities):
                return MisdirectedRequest(
                    "this proxy only forwards to its configured upstream, not to "
                    + authority.decode("latin-1"))
            head.target = b"/" if slash < 0 else rest[slash:]
            return None
        return BadRequest("invalid request target")

    def on_body(self, bytes data):
        cdef Exchange ex = self.receiving
        cdef Py_ssize_t size
        self.framing_bytes = 0
        if ex is None:
            return
        if ex.claim is not None:
            size = PyBytes_GET_SIZE(data)
            ex.body_size += size
            if ex.body_size > self.worker.max_buffered_body:
                raise BodyTooLarge(
                    f"the request body is larger than {self.worker.max_buffered_body} bytes")

            ex.budgeted += size
            if not self.worker.take_budget(size):
                raise _budget_exceeded()

            # One growing buffer, not a list of pieces: a body sent a byte
            # at a time must not cost an object per byte.
            if ex.body is None:
                ex.body = data
            elif type(ex.body) is bytes:
                ex.body = bytearray(ex.body)
                ex.body += data
            else:
                ex.body += data
            return
        ex.body_size += PyBytes_GET_SIZE(data)
        if ex.state == EX_ANSWERED:
            # The response is out: this is the rest, read and dropped, up to
            # a bound (a chunked body may be endless); past it, close.
            ex.dropped += PyBytes_GET_SIZE(data)
            if ex.dropped > DRAIN_MAX:
                self.receiving = None
                self.close()
                raise StopParsing()

            return
        self._body_piece(ex, data)

    def on_message_complete(self):
        cdef Exchange ex = self.receiving
        if ex is None:
            return
        self.receiving = None
        if self.deadline_kind == DEADLINE_BODY:
            self.deadline_kind = DEADLINE_NONE
        self.framing_bytes = 0
        if ex.upgrade and self.upgrade_body_left > 0:
            # llhttp skipped this body: it arrives through _upgrade_bytes.
            return
        if ex.claim is not None:
            # A request without a body was complete at its head, and
            # _start has run its handler already if it was due.
            if not ex.request_complete:
                ex.request_complete = True
                if self.first is ex:
                    self.run_handler(ex)
            return
        ex.request_complete = True
        if ex.state == EX_ANSWERED:
            # The dropped rest is all read: the connection goes on.
            if self.first is None and self.state == CLIENT_OPEN:
                self._arm_idle()
            return
        if ex.head.framing == BODY_CHUNKED:
            self._body_piece(ex, last_chunk_bytes(ex.trailers))
        if self.first is ex:
            if ex.state == EX_BUFFERING:
                self._acquire_upstream(ex)
            elif self.upstream_conn is not None:
                self.upstream_conn.request_written()

    # exchanges -------------------------------------------------------------

    cdef void _body_piece(self, Exchange ex, bytes data):
        """Send a piece of a passthrough request body on, or queue it."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        cdef bint chunk = ex.head.framing == BODY_CHUNKED and not ex.request_complete
        if self.upstream_conn is not None and self.first is ex and not ex.pending:
            if chunk:
                self.upstream_conn.writelines([chunk_size_line(size), data, CRLF])
            else:
                self.upstream_conn.write(data)
            return
        if ex.pending is None:
            ex.pending = []
        if size < PENDING_SMALL and len(ex.pending) >= PENDING_MERGE_FROM:
            # A body arriving in many tiny reads is queued in one buffer, not
            # as an object per read (and three per chunk): what it costs to
            # hold stays close to its size.
            merged = ex.pending[-1]
            if type(merged) is not bytearray:
                merged = bytearray()
                ex.pending.append(merged)
            if chunk:
                merged += chunk_size_line(size)
                merged += data
                merged += CRLF
            else:
                merged += data
        elif chunk:
            ex.pending += (chunk_size_line(size), data, CRLF)
        else:
            ex.pending.append(data)
        ex.pending_size += size
        self.backlog_size += size
        if self.backlog_size > BACKLOG_HIGH:
            self._pause(PAUSE_BACKLOG)
        if ex.state == EX_BUFFERING and ex.pending_size > self.worker.request_buffer_size and self.first is ex:
            # A body past the buffer: stream the rest.
            self._acquire_upstream(ex)

    cdef void _queue(self, Exchange ex):
        self.exchanges.append(ex)
        if self.first is None:
            self.first = ex
        if len(self.exchanges) == 1:
            self._start(ex)
        elif len(self.exchanges) > 16:
            self._pause(PAUSE_BACKLOG)

    cdef void _start(self, Exchange ex):
        cdef Worker worker = self.worker
        if ex.error is not None:
            self._answer_error(ex, ex.error)
            return
        if ex.claim is not None:
            worker.counters.cells.requests_claimed += 1
            worker.counters.cells.requests[route_kind(ex.claim)] += 1
            ex.state = EX_HANDLER
            if ex.request_complete:
                self.run_handler(ex)
            elif ex.head.expect_continue:
                self._write(CONTINUE_100)
            return
        worker.counters.cells.requests_passed += 1
        worker.counters.cells.requests[SP_ROUTE_PASSTHROUGH] += 1
        self.request_method = ex.head.method
        if (not ex.request_complete and not ex.head.expect_continue and not ex.upgrade
                and ex.pending_size <= worker.request_buffer_size):
            # Like nginx (proxy_request_buffering), a body is read before an
            # upstream connection is taken: whole if it is small, else its
            # first request_buffer_size bytes.  A slow client holds only its
            # own connection, or has sent that much first.  A client that
            # waits for 100 Continue is let through at once (the engine
            # sends it).
            ex.state = EX_BUFFERING
            return
        ex.state = EX_UPSTREAM
        self.pool.acquire(self)

    cdef void _acquire_upstream(self, Exchange ex):
        """The body of ``ex`` is read, or past the buffer: take an upstream."""
        ex.state = EX_UPSTREAM
        self.pool.acquire(self)

    cdef void upstream_ready(self, UpstreamProtocol conn):
        cdef Exchange ex
        if self.state == CLIENT_CLOSED or self.first is None:
            self.pool.release(conn, True)
            return
        ex = self.first
        self.upstream_conn = conn
        self._send_upstream(conn, ex)

    cdef void _send_upstream(self, UpstreamProtocol conn, Exchange ex):
        cdef list extra = []
        cdef Worker worker = self.worker
        cdef MessageHead head = ex.head
        if head.host is None:
            extra.append((b"Host", self.pool.authority))
        if worker.forwarded_headers and self.peer:
            addr = str(self.peer[0]).encode()
            # RFC 9110 section 5.3: several lines are one list; keep every hop.
            prior = [v for n, v in head.end_to_end if n.lower() == b"x-forwarded-for"]
            if prior:
                head.end_to_end = [(n, v) for n, v in head.end_to_end
                                   if n.lower() != b"x-forwarded-for"]
                addr = b", ".join(prior) + b", " + addr
            extra.append((b"X-Forwarded-For", addr))
            extra.append((b"X-Forwarded-Proto", b"http"))
            # RFC 7239: a second Forwarded line appends to any the client
            # sent; an IPv6 node is quoted and bracketed.
            node = str(self.peer[0])
            if ":" in node:
                node = f'"[{node}]"'
            extra.append((b"Forwarded", f"for={node};proto=http".encode()))
        ex.upstream_at = monotonic()   # the metrics' and the access log's upstream time
        conn.send(self, request_head_bytes(head, extra))
        if self.writing_paused:
            conn.set_reading(False)
        if conn.writing_paused:
            self._pause(PAUSE_UPSTREAM_FULL)
        if ex.pending:
            if len(ex.pending) > PENDING_MERGE_FROM:
                conn.writelines([bytes(piece) if type(piece) is bytearray else piece
                                 for piece in ex.pending])
            else:
                conn.writelines(ex.pending)
            self.backlog_size -= ex.pending_size
            ex.pending = None
            ex.pending_size = 0
            if self.backlog_size < BACKLOG_LOW:
                self._resume(PAUSE_BACKLOG)
        if ex.upgrade and self.tunnel_pending is None:
            # Bytes after the upgrade head are held until the 101.
            self.tunnel_pending = []
        if ex.request_complete:
            conn.request_written()

    cdef void upstream_failed(self, object exc):
        cdef Exchange ex
        if self.state == CLIENT_CLOSED or self.first is None:
            return
        ex = self.first
        if not ex.request_complete:
            ex.close_after = True
        self._answer_error(ex, exc)

    cdef void upstream_write_paused(self, bint paused):
        if paused:
            self._pause(PAUSE_UPSTREAM_FULL)
        else:
            self._resume(PAUSE_UPSTREAM_FULL)

    cdef void response_interim(self, MessageHead head):
        # RFC 9110 section 15.2: a proxy forwards 1xx responses, except to
        # an HTTP/1.0 client, which cannot understand them.
        cdef Exchange ex = self.first
        if ex.head.version_minor >= 1:
            self._write(response_head_bytes(head, False, False))

    cdef void response_head(self, MessageHead head):
        cdef Exchange ex = self.first
        cdef bint chunked = False
        cdef bint close = (not ex.keep_alive or ex.close_after
                           or self.state == CLIENT_UPGRADING or self._last_one())
        if not ex.request_complete and head.status != 101 and not self._can_drain(ex):
            # Answered before the request body was all read, and the rest
            # cannot be read and dropped: close after.
            close = True
        ex.state = EX_RESPONDING
        if head.status == 101:
            if not ex.upgrade:
                self.upstream_conn.fail(UpstreamProtocolError("101 without an upgrade request"))
                return
        elif head.framing == BODY_CHUNKED:
            chunked = ex.head.version_minor >= 1
            close = close or not chunked
        elif head.framing == BODY_UNTIL_CLOSE:
            chunked = ex.head.version_minor >= 1 and not close
            close = close or not chunked
        ex.response_chunked = chunked
        ex.close_after = close
        ex.status = head.status
        if ex.request_id is not None:
            add_response_field(head, b"X-Request-Id", ex.request_id)
        sp_count_response(self.worker.counters.cells, SP_ROUTE_PASSTHROUGH, head.status)
        self._write(response_head_bytes(head, close, chunked))

    cdef bint _can_drain(self, Exchange ex):
        """Can the rest of ``ex``'s body be read and dropped after its
        response?  Not when the client waits for 100 Continue (it may never
        send the body), nor when a known remainder is over DRAIN_MAX."""
        cdef MessageHead head = ex.head
        if ex.upgrade or head.expect_continue:
            return False
        if head.framing == BODY_CHUNKED:
            return True
        return head.framing == BODY_LENGTH and head.content_length - ex.body_size <= DRAIN_MAX

    cdef void response_body(self, bytes data):
        cdef Exchange ex
        if self.transport is None:
            return
        if self.state == CLIENT_TUNNEL:
            self.tunnel_moved = True
            self.worker.counters.cells.client_bytes_out += PyBytes_GET_SIZE(data)
            self.out.write(data)
            return
        ex = self.first
        ex.bytes_out += PyBytes_GET_SIZE(data)
        if ex.response_chunked:
            self._writelines([chunk_size_line(PyBytes_GET_SIZE(data)), data, CRLF])
        else:
            self._write(data)

    cdef void response_complete(self, list trailers):
        cdef Exchange ex
        cdef UpstreamProtocol up = self.upstream_conn
        if self.state == CLIENT_TUNNEL:
            self.upstream_conn = None
            self.close()
            return
        if self.first is None:
            return
        ex = self.first
        if ex.response_chunked and self.transport is not None:
            self._write(last_chunk_bytes(trailers))
        self.upstream_conn = None
        if ex.upstream_at != 0:
            sp_observe(&self.worker.counters.cells.upstream_duration, monotonic() - ex.upstream_at)
        self._resume(PAUSE_UPSTREAM_FULL)
        if up is not None:
            self.pool.release(up, ex.request_complete and up.reusable)
        self._finish(ex)

    cdef void response_upgrade(self, bytes rest):
        cdef Exchange ex = self.first
        self.state = CLIENT_TUNNEL
        # A tunnel with no byte either way for idle_timeout is closed, as an
        # idle keep-alive connection is: it holds an upstream connection
        # (nginx's proxy_read_timeout, HAProxy's timeout tunnel).
        self._arm_idle()
        if rest:
            self._write(rest)
        if self.tunnel_pending:
            self.upstream_conn.writelines(self.tunnel_pending)
        self.tunnel_pending = None
        self.backlog_size = 0
        self.exchanges.clear()
        self.first = None
        self._resume(PAUSE_BACKLOG | PAUSE_STOPPED)

    cdef void response_failed(self, object exc, bint head_seen):
        cdef Exchange ex
        cdef UpstreamProtocol up = self.upstream_conn
        self.upstream_conn = None
        if self.state == CLIENT_CLOSED or self.first is None:
            return
        if head_seen or self.state == CLIENT_TUNNEL:
            # RFC 9112 section 9.6 / nginx: a response cut short must not
            # look complete, so the client connection is cut as well.
            if self.worker.logger is not None and self.first is not None:
                ex = self.first
                self.worker.logger.warning("%s %s -> cut mid-response: %s",
                                           ex.head.method.decode("latin-1"),
                                           ex.head.target.decode("latin-1"), exc.reason)
            self.abort()
            return
        ex = self.first
        self._resume(PAUSE_UPSTREAM_FULL)
        if not ex.retried and ex.request_complete and ex.head.framing == BODY_NONE:
            # Once, and only a request with no body: it was all sent from
            # the head, so it can be sent again whole.
            ex.retried = True
            if self.pool.resend_on_fresh(up, self, exc):
                return
        if not ex.request_complete:
            ex.close_after = True
        self._answer_error(ex, exc)

    cdef void run_handler(self, Exchange ex):
        cdef MessageHead head = ex.head
        cdef Worker worker = self.worker
        body = ex.body
        ex.body = None
        if body is None:
            body = EMPTY
        elif type(body) is not bytes:
            body = bytes(body)
        request = Request(
            head.method.decode("ascii"), head.target.decode("latin-1"),
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.end_to_end],
            body, ex.claim.params, self.peer)
        task = worker.loop.create_task(worker.handler_runner(ex.claim.route, request))
        self.handler_task = task
        task.add_done_callback(_HandlerDone(self, ex))

    cdef void _answer(self, Exchange ex, int status, list headers, bytes body):
        """Write a whole response the proxy made itself: its framing and
        connection fields are the proxy's (see _http.answer_head_bytes)."""
        cdef bint close = (not ex.keep_alive or ex.close_after
                           or not ex.request_complete or self._last_one())
        cdef bint bodiless = status == 204 or status == 304 or status < 200
        if self.transport is None:
            return
        sp_count_response(self.worker.counters.cells, route_kind(ex.claim), status)
        if self.queued_at != 0:
            self.pool.unqueue(self)
        ex.close_after = close
        if self.worker.access_log:
            ex.status = status
            ex.bytes_out = 0 if bodiless or ex.head.method == b"HEAD" else PyBytes_GET_SIZE(body)
            ex.answer_headers = headers
            if ex.request_id is not None and field_error(b"X-Request-Id", ex.request_id) is None and not any(
                    name.lower() == b"x-request-id" for name, _value in headers):
                headers = headers + [(b"X-Request-Id", ex.request_id)]
        if bodiless:
            self._write(answer_head_bytes(status, headers, -1, close))
        else:
            head = answer_head_bytes(status, headers, PyBytes_GET_SIZE(body), close)
            self._write(head if ex.head.method == b"HEAD" or not body else head + body)
        self._finish(ex)

    cdef void _answer_error(self, Exchange ex, object exc):
        if self.worker.logger is not None:
            self.worker.logger.warning("%s %s -> %d %s", ex.head.method.decode("latin-1")
                                       if ex.head.method else "-",
                                       ex.head.target.decode("latin-1"), exc.status, exc.reason)
        headers = [(b"Content-Type", b"application/json")]
        if exc.retry_after is not None:
            headers.append((b"Retry-After", str(exc.retry_after).encode()))
        self._answer(ex, exc.status, headers, exc.body())

    cdef void _finish(self, Exchange ex):
        """The active exchange's response is written: on to the next."""
        if self.worker.access_log:
            self._log_exchange(ex)
        ex.state = EX_ANSWERED
        if ex.notify is not None:
            self.worker.notify(ex.notify, ex.head, True)
        if ex.budgeted:
            self.worker.release_budget(ex.budgeted)
            ex.budgeted = 0
        if self.first is ex:
            self.exchanges.popleft()
            self.first = self.exchanges[0] if self.exchanges else None
        if ex.close_after or self.state == CLIENT_CLOSING or self.worker.draining:
            if self.first is None or ex.close_after:
                self.close()
                return
        if len(self.exchanges) <= 16:
            self._resume(PAUSE_BACKLOG)
        if self.first is not None:
            self._start(self.first)
        elif self.state == CLIENT_OPEN and not self.in_head and self.receiving is None:
            self._arm_idle()

    cdef void _log_exchange(self, Exchange ex):
        """Hand the exchange's figures to the access log hook (only while
        it is on).  Nothing it raises may reach the protocol."""
        cdef double now = monotonic()
        try:
            self.worker.access_hook.exchange_done(
                self.peer, ex.head, ex.claim.route if ex.claim is not None else None,
                ex.status, ex.bytes_out, now - ex.started_at,
                now - ex.upstream_at if ex.upstream_at != 0 else None,
                ex.request_id, ex.answer_headers)
        except Exception:
            log.exception("the access log failed")

    cdef void _arm_idle(self):
        """Between requests (or in a tunnel with nothing moving) the
        connection may stay open for idle_timeout."""
        self.deadline_kind = DEADLINE_IDLE
        self.deadline = monotonic() + self.worker.idle_timeout

    cdef bint _last_one(self):
        """Closing (drain, half-close, parse error): is this the last answer?"""
        return ((self.state == CLIENT_CLOSING or self.worker.draining)
                and len(self.exchanges) <= 1)

    cdef void _write(self, bytes data):
        self.worker.counters.cells.client_bytes_out += PyBytes_GET_SIZE(data)
        if self.transport is not None:
            write_or_hold(self.out, data)

    cdef void _writelines(self, list data):
        cdef bytes piece
        for piece in data:
            self.worker.counters.cells.client_bytes_out += PyBytes_GET_SIZE(piece)
        if self.transport is not None:
            self.out.writelines(data)

    cdef void cork(self):
        if self.transport is not None:
            hold_writes(self.out)

    cdef void uncork(self):
        if self.transport is not None:
            self.out.release()

    cdef void check_deadline(self, double now):
        cdef Deadline kind = self.deadline_kind
        cdef Worker worker = self.worker
        if self.out is not None and self.out.transport_may_hold and self.out.stalled(
                now, worker.send_timeout):
            # nginx's send_timeout: the client took nothing of what waits
            # for it.  Its pace, not the upstream's: the upstream is paused.
            worker.counters.count_error("client_send_timeout")
            if worker.logger is not None:
                worker.logger.warning("client %s read nothing for %gs: connection closed",
                                    self.peer[0] if self.peer else "-", worker.send_timeout)
            self.abort()
            return
        if kind == DEADLINE_NONE or now < self.deadline:
            return
        if self.state == CLIENT_TUNNEL and self.tunnel_moved:
            self.tunnel_moved = False
            self.deadline = now + worker.idle_timeout
            return
        if kind == DEADLINE_BODY and (self.paused != 0 or (
                self.body_window_bytes > 0 and self.body_window_bytes >= worker.body_window_min)):
            # Enough came in this window (or the proxy was not reading):
            # a new window starts.  A byte now and then is not enough, so a
            # trickling client cannot hold its exchange for ever.
            self.deadline = now + worker.body_timeout
            self.body_window_bytes = 0
            return
        self.deadline_kind = DEADLINE_NONE
        if kind == DEADLINE_IDLE:
            self.close()
        elif kind == DEADLINE_BODY:
            worker.counters.count_error("body_timeout")
            if self.receiving is not None and self.receiving.state == EX_ANSWERED:
                self.close()   # the answer is out; let it reach the client
            elif self.state == CLIENT_OPEN and self.receiving is not None:
                # RFC 9110 section 15.5.9, nginx's client_body_timeout: 408.
                self._stop_parsing(RequestTimeout(
                    f"the request body came slower than {worker.body_window_min} bytes "
                    f"per {worker.body_timeout:g}s"))
            else:
                self.abort()
        elif kind == DEADLINE_HEAD:
            self.worker.counters.count_error("header_timeout")
            if self.first is not None:
                self.abort()
            else:
                # RFC 9110 section 15.5.9: 408 before closing.
                self.state = CLIENT_OPEN
                self._stop_parsing(ProxyError(
                    f"the request head did not arrive within {self.worker.header_timeout:g}s",
                    status=408))

    cdef void drain(self):
        """Shutdown: close when idle, else after the exchange in flight.  A
        tunnel has no exchanges to wait for: it lasts until the grace ends.
        A request still arriving (its head or body) is read whole first, so
        a drain (a reload, a SIGTERM) never cuts an upload: buffer_updated
        comes back here once it is in."""
        if self.state == CLIENT_TUNNEL:
            return
        if self.receiving is not None or self.in_head:
            return
        if self.first is None:
            self.close()
        elif self.state == CLIENT_OPEN:
            self.state = CLIENT_CLOSING
            self._pause(PAUSE_STOPPED)

    cdef void _drain_when_received(self):
        # A drain waited for the request arriving when it began (drain()).
        if self.state == CLIENT_OPEN and self.receiving is None and not self.in_head:
            self.drain()

    cdef void close(self):
        if self.state == CLIENT_CLOSED:
            return
        self.uncork()
        if self.transport is None:
            return
        self.state = CLIENT_CLOSING
        self.out.stop()
        if self.linger_on_close and not self.lingering:
            # Half-close after the answer, then read and drop until the
            # client closes too, LINGER_TIME passes or DRAIN_MAX is dropped.
            self.lingering = True
            self.transport.write_eof()
            if self.paused != 0:
                self.paused = 0
                self.transport.resume_reading()
            self.deadline_kind = DEADLINE_IDLE
            self.deadline = monotonic() + LINGER_TIME
            return
        self.transport.close()

    cdef void abort(self):
        if self.transport is not None:
            self.out.stop()
            self.transport.abort()


