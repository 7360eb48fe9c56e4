# cython: language_level=3
"""The upstream side: pooled connections to the engine.

:class:`UpstreamPool` alone holds the idle list, the open count and the
waiters.  :class:`UpstreamProtocol` reads one response at a time into a
:class:`ResponseSink`: a client connection (passthrough, ``_client``) or a
:class:`Collector` that gathers a whole response for a handler's
:class:`CoreUpstream` call.

Like the client protocol, this is a ``cdef class`` with
``get_buffer``/``buffer_updated`` and not an ``asyncio.Protocol`` subclass, so
uvloop reads straight into the worker's read buffer.
"""
cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from selproxy._http cimport (
    MessageHead, BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE,
    new_request_head, new_response_head, analyse_raw_response, request_head_bytes,
    field_error, target_error,
)
from selproxy._worker cimport (
    Worker, DEADLINE_NONE, DEADLINE_RESPONSE, monotonic, feed_copied, error_kind,
)
from selproxy._writer cimport TransportWriter, tune_transport, hold_writes, write_or_hold
from selproxy._metrics cimport sp_observe
from selproxy._debug cimport SELPROXY_DEBUG

import asyncio
import collections
import logging
import ssl

from httptools import HttpResponseParser
from httptools.parser.errors import (
    HttpParserError, HttpParserCallbackError, HttpParserUpgrade,
)

from selproxy.errors import (
    ProxyError, UpstreamUnavailable, UpstreamTimeout, UpstreamProtocolError,
    UpstreamQueueFull, UpstreamQueueTimeout, BodyBudgetExceeded,
)
from selproxy.handler import Response as _Response

__all__ = ("UpstreamPool", "CoreUpstream")

cdef object Response = _Response
cdef object deque = collections.deque
cdef object log = logging.getLogger("selproxy")

# A response head longer than this is refused with 502, as nginx refuses one
# longer than its proxy_buffer_size (a few KiB by default).
cdef Py_ssize_t RESPONSE_HEAD_MAX = 1024 * 1024
cdef bytes CHUNKED_PRELUDE = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

# Live connections, counted in debug builds only (see _core.debug_counts).
cdef long _live = 0


cdef long live_upstreams():
    return _live


class _HeadResponseEnd(Exception):
    """Raised from on_headers_complete to end a response to HEAD: httptools
    cannot tell llhttp to skip a body, and llhttp does not know the method."""


class _ChunkedBody(Exception):
    """Raised from on_headers_complete: a chunked body follows, and is read
    by a parser that reports trailers (see _read_chunked_body)."""


cdef object HeadResponseEnd = _HeadResponseEnd
cdef object ChunkedBody = _ChunkedBody


cdef class ResponseSink:
    cdef void upstream_ready(self, UpstreamProtocol conn):
        pass

    cdef void upstream_failed(self, object exc):
        pass

    cdef void response_interim(self, MessageHead head):
        pass

    cdef void response_head(self, MessageHead head):
        pass

    cdef void response_body(self, bytes data):
        pass

    cdef void response_complete(self, list trailers):
        pass

    cdef void response_upgrade(self, bytes rest):
        pass

    cdef void response_failed(self, object exc, bint head_seen):
        pass

    cdef void upstream_write_paused(self, bint paused):
        pass

    cdef void cork(self):
        pass

    cdef void uncork(self):
        pass


@cython.final
cdef class UpstreamPool:
    """A worker's upstream connections: at most ``max_upstream`` open, the
    idle ones reused most-recently-used first, and a FIFO of sinks waiting
    for a slot when all are busy."""

    def __cinit__(self, Worker worker, str scheme, str host, int port, object ssl_context):
        cdef Py_ssize_t default_port = 443 if scheme == "https" else 80
        self.worker = worker
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        authority = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            authority = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        self.authority = authority.lower().encode("idna")
        self.idle = []
        self.waiters = deque()
        self.connections = set()
        self.connecting = set()
        self.total = 0

    cdef void acquire(self, ResponseSink sink):
        cdef UpstreamProtocol conn
        while self.idle:
            conn = <UpstreamProtocol>self.idle.pop()
            self.worker.counters.cells.upstream_idle = len(self.idle)
            if conn.state == UP_IDLE:
                conn.state = UP_BUSY
                conn.reused = True
                sink.upstream_ready(conn)
                return
        if self.total < self.worker.max_upstream:
            self._open(sink)
        elif len(self.waiters) >= self.worker.max_upstream_waiters:
            # Envoy's max_pending_requests: a queue without a bound is a
            # wait without one, for every request behind it.
            self.worker.counters.count_error("upstream_queue_full")
            sink.upstream_failed(UpstreamQueueFull(
                f"{len(self.waiters)} requests already wait for an upstream connection"))
        else:
            sink.queued_at = monotonic()
            self.waiters.append(sink)
            self.worker.counters.cells.upstream_waiters = len(self.waiters)
            self.worker.counters.cells.upstream_waits += 1

    cdef bint resend_on_fresh(self, UpstreamProtocol conn, ResponseSink sink, object exc):
        """The one retry rule: a request that failed on ``conn`` with ``exc``
        is sent again, on another connection, when ``conn`` was a pooled one
        the upstream had closed while it was idle (nothing of a response
        came back, so the request never reached it).  The caller says
        whether its request can be sent again at all."""
        if conn is None or not conn.closed_while_idle(exc):
            return False
        self.acquire(sink)
        return True

    cdef ResponseSink _next_waiter(self):
        cdef ResponseSink sink = <ResponseSink>self.waiters.popleft()
        self.worker.counters.cells.upstream_waiters = len(self.waiters)
        sp_observe(&self.worker.counters.cells.upstream_queue_duration, monotonic() - sink.queued_at)
        sink.queued_at = 0
        return sink

    cdef void unqueue(self, ResponseSink sink):
        """``sink`` no longer wants a connection (its client left, its
        request was answered otherwise)."""
        if sink.queued_at == 0:
            return
        sink.queued_at = 0
        try:
            self.waiters.remove(sink)
        except ValueError:
            pass
        self.worker.counters.cells.upstream_waiters = len(self.waiters)

    cdef void expire_waiters(self, double now):
        """504 for the waiters that waited upstream_queue_timeout (HAProxy's
        timeout queue); the oldest are first."""
        cdef ResponseSink sink
        cdef double limit = self.worker.upstream_queue_timeout
        while self.waiters and now - (<ResponseSink>self.waiters[0]).queued_at >= limit:
            sink = self._next_waiter()
            self.worker.counters.count_error("upstream_queue_timeout")
            sink.upstream_failed(UpstreamQueueTimeout(
                f"no upstream connection was free within {limit:g}s"))

    cdef void _open(self, ResponseSink sink):
        self.total += 1
        self.worker.counters.cells.upstream_connects += 1
        task = self.worker.loop.create_task(_connect(self, sink))
        # The loop keeps only a weak reference to a task.
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    cdef void connect_failed(self, ResponseSink sink, str kind, object exc):
        """A connection the pool opened for ``sink`` never came up."""
        self.total -= 1
        self.worker.counters.count_error(kind)
        sink.upstream_failed(exc)
        if self.waiters and self.total < self.worker.max_upstream:
            self._open(self._next_waiter())

    cdef void release(self, UpstreamProtocol conn, bint reusable):
        cdef ResponseSink waiter
        conn.sink = None
        if reusable and conn.state == UP_BUSY and not self.worker.draining:
            if self.waiters:
                waiter = self._next_waiter()
                conn.reused = True
                waiter.upstream_ready(conn)
                return
            if len(self.idle) < self.worker.max_idle:
                conn.state = UP_IDLE
                conn.idle_since = monotonic()
                conn.set_reading(True)
                self.idle.append(conn)
                self.worker.counters.cells.upstream_idle = len(self.idle)
                return
        conn.close()

    cdef void opened(self, UpstreamProtocol conn):
        """A connection the pool opened is up (and counts as open)."""
        self.connections.add(conn)
        self.worker.counters.cells.upstream_connections = len(self.connections)

    cdef void leave_idle(self, UpstreamProtocol conn):
        """An idle connection is closing: it is no longer to be had."""
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self.worker.counters.cells.upstream_idle = len(self.idle)

    cdef void forget(self, UpstreamProtocol conn):
        """A connection closed: free its slot and serve a waiter with it."""
        cdef ResponseSink waiter
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self.worker.counters.cells.upstream_connections = len(self.connections)
        self.total -= 1
        if conn.state == UP_IDLE:
            self.leave_idle(conn)
        if self.waiters and self.total < self.worker.max_upstream and not self.worker.draining:
            waiter = self._next_waiter()
            self._open(waiter)

    cdef void check_deadlines(self, double now):
        cdef UpstreamProtocol conn
        for conn in list(self.connections):
            conn.check_deadline(now)

    cdef void close_idle(self):
        cdef UpstreamProtocol conn
        for conn in list(self.idle):
            conn.close()

    cdef void abort_all(self):
        cdef UpstreamProtocol conn
        for conn in list(self.connections):
            conn.abort()


async def _connect(UpstreamPool pool, ResponseSink sink):
    cdef Worker worker = pool.worker
    cdef UpstreamProtocol conn = UpstreamProtocol(pool)
    try:
        await asyncio.wait_for(
            worker.loop.create_connection(
                lambda: conn, pool.host, pool.port, ssl=pool.ssl_context,
                server_hostname=pool.host if pool.ssl_context else None),
            worker.connect_timeout)
    except (Exception, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.TimeoutError):
            pool.connect_failed(sink, "upstream_connect_timeout", UpstreamTimeout(
                f"connecting to the upstream took longer than {worker.connect_timeout:g}s"))
            return
        # The client learns the kind of failure; the log has its text (an
        # OS error names the upstream's address, a TLS one its certificate).
        log.warning("cannot connect to the upstream %s:%s: %r", pool.host, pool.port, exc)
        what = type(exc).__name__
        if isinstance(exc, ssl.SSLCertVerificationError):
            what = f"its TLS certificate cannot be verified ({what})"
        pool.connect_failed(sink, "upstream_connect_failed",
                            UpstreamUnavailable(f"cannot connect to the upstream: {what}"))
    else:
        if conn.state == UP_CLOSED:
            sink.upstream_failed(UpstreamUnavailable("the upstream closed the connection at once"))
            return
        conn.state = UP_BUSY
        sink.upstream_ready(conn)


@cython.final
cdef class UpstreamProtocol:
    def __cinit__(self, UpstreamPool pool):
        global _live
        self.worker = pool.worker
        self.pool = pool
        self.state = UP_CONNECTING
        self._new_parser()
        if SELPROXY_DEBUG:
            _live += 1

    def __dealloc__(self):
        global _live
        if SELPROXY_DEBUG:
            _live -= 1

    cdef void _new_parser(self):
        self.parser = HttpResponseParser(self)
        self.feed_data = self.parser.feed_data
        self.parser_spent = False

    # asyncio protocol interface ------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.out = TransportWriter(transport)
        tune_transport(transport)
        self.pool.opened(self)

    def connection_lost(self, exc):
        cdef ResponseSink sink = self.sink
        cdef bint was_tunnel = self.state == UP_TUNNEL
        cdef bint head_seen = self.response == RESPONSE_BODY
        self.state = UP_CLOSED
        self.pool.forget(self)
        self.transport = None
        if self.out is not None:
            self.out.stop()
        if sink is not None:
            self.sink = None
            if was_tunnel:
                sink.response_complete(None)
            elif head_seen and self.head.framing == BODY_UNTIL_CLOSE:
                # RFC 9112 section 6.3, rule 8: the close ends this body.
                sink.response_complete(None)
            else:
                self.worker.counters.count_error("upstream_closed")
                sink.response_failed(
                    UpstreamUnavailable("the upstream closed the connection"
                                        + (" mid-response" if head_seen else "")),
                    head_seen)

    def eof_received(self):
        return False

    def pause_writing(self):
        self.writing_paused = True
        if self.sink is not None:
            self.sink.upstream_write_paused(True)

    def resume_writing(self):
        self.writing_paused = False
        if self.sink is not None:
            self.sink.upstream_write_paused(False)

    def get_buffer(self, Py_ssize_t hint):
        return self.worker.read_view

    def data_received(self, data):
        feed_copied(self, data)

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef ResponseSink sink = self.sink
        if self.state == UP_TUNNEL:
            if sink is not None:
                sink.response_body(bytes(self.worker.read_view[:nbytes]))
            return
        if self.state != UP_BUSY or sink is None:
            # Bytes on an idle connection answer nothing we asked: drop it.
            self.close()
            return
        self.any_response_bytes = True
        if self.deadline_kind == DEADLINE_RESPONSE:
            self.deadline = monotonic() + self.worker.response_timeout
        # PERF: what one read produces (head, body, last chunk) leaves for
        # the client in one write, not one send per piece: 3.9 syscalls per
        # small request against nginx's 4.8 (perf stat -e
        # raw_syscalls:sys_enter, RESULTS.md 2026-11-28 05:16).
        sink.cork()
        try:
            self.read_size = nbytes
            self.head_start = 0
            self._feed(sink, 0, nbytes)
        finally:
            sink.uncork()

    cdef void _feed(self, ResponseSink sink, Py_ssize_t start, Py_ssize_t nbytes):
        cdef bytearray carry
        try:
            self.feed_data(self.worker.read_view[start:nbytes])
        except HttpParserUpgrade as exc:
            if self.state != UP_BUSY:
                return     # the sink refused the 101 and closed this connection
            offset = start + exc.args[0]
            self.state = UP_TUNNEL
            self.deadline_kind = DEADLINE_NONE
            sink.response_upgrade(bytes(self.worker.read_view[offset:nbytes]))
        except HttpParserCallbackError as exc:
            # httptools chains what a callback raised as the __context__.
            cause = exc.__context__
            if isinstance(cause, _HeadResponseEnd):
                # A response to HEAD ends with its head, and the parser that
                # was told otherwise is spent.  Bytes after the head (a body
                # a broken server sent) would be taken for the next
                # response, so then the connection is not reused.
                keep_alive = self.parser.should_keep_alive()
                self._new_parser()
                self.finish_response(keep_alive and self.head_end == nbytes)
            elif isinstance(cause, _ChunkedBody):
                self._read_chunked_body(sink, nbytes)
            else:
                self.fail(cause if isinstance(cause, ProxyError)
                          else UpstreamProtocolError(f"invalid response from the upstream: {exc}"))
        except HttpParserError as exc:
            self.fail(UpstreamProtocolError(f"invalid response from the upstream: {exc}"))
        else:
            if self.response == RESPONSE_IN_HEAD and self.state == UP_BUSY:
                # A head cut by the end of a read: keep its start for later.
                carry = self.head_carry
                if carry is None:
                    carry = self.head_carry = bytearray()
                carry += self.worker.read_view[self.head_start:nbytes]
                if len(carry) > RESPONSE_HEAD_MAX:
                    self.fail(UpstreamProtocolError(
                        f"the upstream's response head is larger than {RESPONSE_HEAD_MAX} bytes"))

    cdef void _read_chunked_body(self, ResponseSink sink, Py_ssize_t nbytes):
        """Go on with a chunked body in a parser that reports fields, for
        the trailers: the head's parser does not (see _read_head).  llhttp
        cannot start mid-message, so the new parser is first given a head
        that says only "chunked"."""
        self.parser = HttpResponseParser(_ChunkedBodyReader(self))
        self.feed_data = self.parser.feed_data
        self.parser_spent = True
        self.feed_data(CHUNKED_PRELUDE)
        if self.head_end < nbytes:
            self._feed(sink, self.head_end, nbytes)

    cdef object _read_head(self, MessageHead head, bytes method):
        """Read the head llhttp has just accepted from the read buffer.

        PERF: httptools calls back once per field, with two new ``bytes``,
        and a response head is most of the fields the proxy handles; the
        head's parser has no on_header, and the head is read in place by
        analyse_raw_response instead.  That took a small passthrough request
        from 38,500 to 32,200 user-space instructions (callgrind,
        bench_instructions.py, commit 830ca8f; RESULTS.md 2026-11-28 16:30).
        httptools gives no offsets, so that also finds the head's end: the
        first blank line, which in a head llhttp accepted (CRLF line ends
        only, no leniency) is its end.
        """
        cdef const char* buf = PyByteArray_AS_STRING(self.worker.read_buffer)
        cdef Py_ssize_t start = self.head_start, size = -1
        cdef bytearray carry = self.head_carry
        cdef bytes joined
        if carry is None:
            err = analyse_raw_response(head, buf + start, self.read_size - start, method, &size)
            self.head_end = start + size
        else:
            # A head over several reads: join its pieces first.
            self.head_carry = None
            joined = bytes(carry) + bytes(self.worker.read_view[:self.read_size])
            err = analyse_raw_response(head, PyBytes_AS_STRING(joined), PyBytes_GET_SIZE(joined),
                                       method, &size)
            self.head_end = size - len(carry)
        if err is None and size > RESPONSE_HEAD_MAX:
            err = UpstreamProtocolError(
                f"the upstream's response head is larger than {RESPONSE_HEAD_MAX} bytes")
        return err

    # httptools callbacks ---------------------------------------------------

    cdef object extra_response_error(self):
        """Only one response is asked for at a time: bytes after it in the
        same read answer nothing.  The error to raise from a callback."""
        return UpstreamProtocolError(
            "invalid response from the upstream: bytes after the end of a response")

    def on_message_begin(self):
        if self.response == RESPONSE_DONE:
            raise self.extra_response_error()
        self.head = new_response_head(0, None)
        self.trailers = None
        self.response = RESPONSE_IN_HEAD

    def on_headers_complete(self):
        cdef MessageHead head = self.head
        cdef ResponseSink sink = self.sink
        self.response = RESPONSE_AWAITING
        # The response's own version matters nowhere: the client's does,
        # and should_keep_alive() covers an HTTP/1.0 upstream.
        head.status = self.parser.get_status_code()
        err = self._read_head(head, sink.request_method)
        self.head_start = self.head_end
        if err is not None:
            raise err
        if head.status < 200 and head.status != 101:
            sink.response_interim(head)
            return
        self.response = RESPONSE_BODY
        if head.status != 101:
            self.deadline_kind = DEADLINE_RESPONSE
        sink.response_head(head)
        if self.state != UP_BUSY:
            return     # refused by the sink (a 101 it did not ask for)
        if sink.request_method == b"HEAD":
            raise HeadResponseEnd()
        if head.framing == BODY_CHUNKED:
            self.keep_alive = self.parser.should_keep_alive()
            raise ChunkedBody()

    def on_body(self, bytes data):
        cdef ResponseSink sink = self.sink
        if sink is not None:
            sink.response_body(data)

    def on_message_complete(self):
        if self.head.status < 200:
            return
        self.finish_response(self.parser.should_keep_alive())

    # sink interface --------------------------------------------------------

    cdef void send(self, ResponseSink sink, bytes data):
        self.sink = sink
        self.uses += 1
        self.reusable = False
        self.response = RESPONSE_AWAITING
        self.any_response_bytes = False
        self.request_complete = False
        self.head = None
        self.deadline_kind = DEADLINE_NONE
        self.head_start = 0
        self.head_carry = None
        if self.parser_spent:
            self._new_parser()
        if self.reading_paused:
            self.set_reading(True)
        self.write(data)

    cdef void _hold_if_parsing(self):
        # PERF: while a client read is parsed, what it produces for this
        # connection (a head, body pieces) is held and leaves in one write
        # when the parse ends: one syscall, and one wake-up upstream (the
        # syscall counts per request in RESULTS.md 2026-11-28 05:16).
        if self.worker.holding_upstream_writes and self.out.held is None:
            hold_writes(self.out)
            self.worker.held_writers.append(self.out)

    cdef void write(self, bytes data):
        if self.transport is not None:
            self._hold_if_parsing()
            write_or_hold(self.out, data)

    cdef void writelines(self, list data):
        if self.transport is not None:
            self._hold_if_parsing()
            self.out.writelines(data)

    cdef void request_written(self):
        """The whole request is written: the response clock starts."""
        self.request_complete = True
        if self.response != RESPONSE_BODY and self.state == UP_BUSY:
            self.deadline_kind = DEADLINE_RESPONSE
            self.deadline = monotonic() + self.worker.response_timeout

    cdef void set_reading(self, bint on):
        if self.transport is None:
            return
        if on and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
            if self.deadline_kind == DEADLINE_RESPONSE:
                # The response clock stood still while the proxy itself held
                # the upstream back (a slow client): it restarts now.
                self.deadline = monotonic() + self.worker.response_timeout
        elif not on and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    cdef void finish_response(self, bint reusable):
        cdef ResponseSink sink = self.sink
        cdef unsigned long long uses = self.uses
        self.response = RESPONSE_DONE
        self.deadline_kind = DEADLINE_NONE
        self.reusable = reusable and self.request_complete and self.state == UP_BUSY
        if sink is not None:
            sink.response_complete(self.trailers)
        self.trailers = None
        self.head = None
        if self.sink is sink and self.uses == uses:
            # The sink did not release this connection itself (and did
            # not take it again for its next request either).
            self.pool.release(self, self.reusable)

    cdef bint closed_while_idle(self, object exc):
        """Did the request meet a pooled connection the upstream had closed
        while it was idle?  Then nothing of a response came back."""
        return self.reused and not self.any_response_bytes and isinstance(exc, UpstreamUnavailable)

    cdef void fail(self, object exc):
        """The response cannot go on: cut the connection, tell the sink."""
        cdef ResponseSink sink = self.sink
        cdef bint head_seen = self.response == RESPONSE_BODY
        self.sink = None
        self.worker.counters.count_error(error_kind(exc))
        self.abort()
        if sink is not None:
            sink.response_failed(exc, head_seen)

    cdef void abandon(self):
        """The sink is gone mid-exchange: the connection is in an unknown
        state, so it is cut without a word to anyone."""
        self.sink = None
        self.abort()

    cdef void check_deadline(self, double now):
        if self.state == UP_IDLE:
            if now - self.idle_since > self.worker.upstream_idle_timeout:
                self.close()
            return
        if (self.state == UP_BUSY or self.state == UP_TUNNEL) and self.out is not None \
                and self.out.stalled(now, self.worker.send_timeout):
            self.deadline_kind = DEADLINE_NONE
            self.fail(UpstreamTimeout(
                f"the upstream took none of the request for {self.worker.send_timeout:g}s"))
            return
        if self.deadline_kind == DEADLINE_RESPONSE and now >= self.deadline:
            if self.reading_paused:
                # Not the upstream's silence: the proxy is not reading.
                return
            self.deadline_kind = DEADLINE_NONE
            self.fail(UpstreamTimeout(
                f"the upstream did not answer within {self.worker.response_timeout:g}s"))

    cdef void close(self):
        if self.state == UP_IDLE:
            self.pool.leave_idle(self)
        self.state = UP_CLOSED
        if self.transport is not None:
            self.out.stop()
            self.transport.close()

    cdef void abort(self):
        self.state = UP_CLOSED
        if self.transport is not None:
            self.out.stop()
            self.transport.abort()


@cython.final
@cython.internal
cdef class _ChunkedBodyReader:
    """httptools callbacks for a chunked response body after its head (see
    UpstreamProtocol._read_chunked_body): body pieces, then trailers."""
    cdef UpstreamProtocol up
    cdef bint prelude_read
    cdef bint done

    def __cinit__(self, UpstreamProtocol up):
        self.up = up

    def on_message_begin(self):
        if self.done:
            raise self.up.extra_response_error()

    def on_headers_complete(self):
        self.prelude_read = True

    def on_header(self, bytes name, bytes value):
        cdef UpstreamProtocol up = self.up
        if self.prelude_read:
            if up.trailers is None:
                up.trailers = []
            up.trailers.append((name, value))

    def on_body(self, bytes data):
        cdef ResponseSink sink = self.up.sink
        if sink is not None:
            sink.response_body(data)

    def on_message_complete(self):
        self.done = True
        self.up.finish_response(self.up.keep_alive)


# ---------------------------------------------------------------------------
# A handler's upstream calls


@cython.internal
cdef class Collector(ResponseSink):
    """Collects one whole upstream response for a handler's upstream call."""
    cdef object future
    cdef UpstreamPool pool
    cdef Worker worker
    cdef bytes data
    cdef UpstreamProtocol conn
    cdef MessageHead head
    cdef list parts
    cdef Py_ssize_t size
    cdef Py_ssize_t budgeted       # of size, counted in the worker's buffered_bodies
    cdef bint retried
    cdef double sent_at            # when the request went to the upstream

    def __cinit__(self, UpstreamPool pool, bytes method, bytes data):
        self.pool = pool
        self.worker = pool.worker
        self.request_method = method
        self.data = data
        self.future = self.worker.loop.create_future()
        self.parts = []

    cdef void upstream_ready(self, UpstreamProtocol conn):
        if self.future.done():
            self.pool.release(conn, True)
            return
        self.conn = conn
        self.sent_at = monotonic()
        conn.send(self, self.data)
        conn.request_written()

    cdef void upstream_failed(self, object exc):
        if not self.future.done():
            self.future.set_exception(exc)

    cdef void response_head(self, MessageHead head):
        if head.status == 101:
            # Nothing here asked for an upgrade, and a tunnel has no end to
            # wait for: the connection is dropped and the handler gets a 502.
            if self.conn is not None:
                self.conn.fail(UpstreamProtocolError(
                    "the upstream answered 101 to a request that asked for no upgrade"))
            return
        self.head = head

    cdef void response_body(self, bytes data):
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        self.size += size
        if self.size > self.worker.max_buffered_response:
            if self.conn is not None:
                self.conn.fail(UpstreamProtocolError(
                    "the upstream response is larger than max_buffered_response"))
            return
        self.budgeted += size
        if not self.worker.take_budget(size):
            if self.conn is not None:
                self.conn.fail(BodyBudgetExceeded(
                    "the worker holds max_buffered_bodies bytes of buffered bodies"))
            return
        self.parts.append(data)

    cdef void _release_budget(self):
        self.worker.release_budget(self.budgeted)
        self.budgeted = 0

    cdef void response_complete(self, list trailers):
        cdef MessageHead head = self.head
        self.conn = None
        self._release_budget()
        if self.sent_at != 0:
            sp_observe(&self.worker.counters.cells.upstream_duration, monotonic() - self.sent_at)
        if self.future.done() or head is None:
            return
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.pairs()]
        self.future.set_result(Response(head.status, headers, b"".join(self.parts)))

    cdef void response_failed(self, object exc, bint head_seen):
        cdef UpstreamProtocol conn = self.conn
        self.conn = None
        self._release_budget()
        if self.future.done():
            return
        if not self.retried:
            self.retried = True
            self.parts = []
            self.size = 0
            if self.pool.resend_on_fresh(conn, self, exc):
                return
        self.future.set_exception(exc)

    def cancel(self):
        cdef UpstreamProtocol conn = self.conn
        self.conn = None
        self._release_budget()
        self.pool.unqueue(self)
        if conn is not None:
            conn.abandon()


cdef class CoreUpstream:
    """The engine as handlers see it: ``await upstream.request(...)``."""
    cdef UpstreamPool pool
    cdef bytes host_header

    def __cinit__(self, UpstreamPool pool):
        self.pool = pool
        self.host_header = pool.authority

    async def request(self, str method, str target, list headers, bytes body=b"",
                      *, timeout=None):
        cdef MessageHead head = new_request_head(method.upper().encode("ascii"),
                                                 target.encode("latin-1"))
        cdef Collector collector
        cdef bytes name, value
        problem = target_error(head.method, head.target)
        if problem is not None:
            raise ValueError(f"cannot send this request upstream: {problem}")
        head.headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        for name, value in head.headers:
            problem = field_error(name, value)
            if problem is not None:
                raise ValueError(f"cannot send this request upstream: {problem}")
        head.collect()
        if head.host is None:
            head.end_to_end = head.end_to_end + [(b"Host", self.host_header)]
        head.transfer_encoding = None
        head.framing = BODY_LENGTH if body else BODY_NONE
        if body or head.method in (b"POST", b"PUT", b"PATCH"):
            head.content_length = len(body)
        else:
            head.content_length = -1
        data = request_head_bytes(head, [])
        if body:
            data += body
        collector = Collector(self.pool, head.method, data)
        self.pool.acquire(collector)
        try:
            if timeout is None:
                return await collector.future
            return await asyncio.wait_for(asyncio.shield(collector.future), timeout)
        except asyncio.TimeoutError:
            collector.cancel()
            raise UpstreamTimeout(f"the upstream did not answer within {timeout:g}s")
        except BaseException:
            collector.cancel()
            raise
