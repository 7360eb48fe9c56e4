# cython: language_level=3
"""The proxy core: client and upstream connections, the pool and the splice.

Both protocols are ``cdef class``es with ``get_buffer``/``buffer_updated`` and
are *not* ``asyncio.Protocol`` subclasses, so uvloop reads straight into the
worker's one read buffer (uvloop ``handles/stream.pyx``, ``_set_protocol``).
Every read is consumed before ``buffer_updated`` returns: httptools hands the
callbacks ``bytes`` copies, and anything kept past the call is copied, so one
buffer serves every connection of a worker.

Passthrough traffic never leaves this module: httptools calls the ``on_*``
methods below, and they write to the other side's transport.  Only a request
that matches a route crosses into Python, whole, through ``run_handler``.
"""
cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM
from libc.string cimport memset
from libc.errno cimport errno, EINTR
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from selproxy._http cimport (
    MessageHead, BodyFraming, BODY_NONE, BODY_LENGTH, BODY_CHUNKED,
    BODY_UNTIL_CLOSE, new_request_head, new_response_head, analyse_request,
    analyse_raw_response, request_head_bytes, response_head_bytes, chunk_size_line, add_response_field,
    field_error, target_error,
)
from selproxy._routes cimport RouteTable, RouteMatch
from selproxy._debug cimport SELPROXY_DEBUG
from selproxy._metrics cimport (
    sp_cells, sp_histogram, sp_observe, sp_count_response, sp_reset_gauges, sp_duration_bounds,
    SP_ROUTE_PASSTHROUGH, SP_ROUTE_SEARCH, SP_ROUTE_MSEARCH, SP_ROUTE_PARAMS, SP_ROUTE_STATUS,
    SP_ROUTE_OTHER, SP_ROUTE_KINDS, SP_STATUS_CLASSES, SP_ERROR_KINDS, SP_DURATION_BOUNDS,
    SP_DURATION_BUCKETS,
)

cdef extern from "sys/uio.h" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "sys/socket.h" nogil:
    struct msghdr:
        void* msg_name
        int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)

cdef extern from *:
    """
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    """
    int MSG_NOSIGNAL

import asyncio
import collections
import http
import logging
import socket
import ssl

from httptools import HttpRequestParser, HttpResponseParser
from httptools.parser.errors import (
    HttpParserError, HttpParserCallbackError, HttpParserUpgrade,
)
from uvloop.loop import TCPTransport as UVTCPTransport

from selproxy.errors import (
    ProxyError, BadRequest, RequestLineTooLong, HeadersTooLarge, BodyTooLarge,
    MethodNotAllowed, MisdirectedRequest, UpstreamUnavailable, UpstreamTimeout,
    UpstreamProtocolError, HandlerError, RequestTimeout, UpstreamQueueFull,
    UpstreamQueueTimeout, BodyBudgetExceeded,
)
from selproxy.handler import Request as _Request, Response as _Response

__all__ = ("ProxyCore", "Counters", "CoreUpstream", "UpstreamPool", "debug_counts", "read_cells",
           "ERROR_KINDS", "ROUTE_KINDS", "DURATION_BOUNDS", "CELLS_SIZE")

cdef object Request = _Request
cdef object Response = _Response
cdef object deque = collections.deque
cdef object CancelledError = asyncio.CancelledError

cdef bytes CRLF = b"\r\n"
cdef bytes LAST_CHUNK = b"0\r\n"
cdef bytes CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
cdef bytes EMPTY = b""

# Pipelined requests and early body bytes are queued while an exchange is in
# flight; past this much the client stops being read until the queue drains.
cdef Py_ssize_t BACKLOG_HIGH = 256 * 1024
cdef Py_ssize_t BACKLOG_LOW = 64 * 1024
# PERF(selproxy): the transports' write buffer marks.  A 1 MiB body moves in
# 4 to 16 writes between pauses; idle connections hold no buffer at all.
cdef Py_ssize_t WRITE_HIGH = 256 * 1024
cdef Py_ssize_t WRITE_LOW = 64 * 1024
cdef Py_ssize_t READ_BUFFER_SIZE = 256 * 1024
# A client read between request bodies (see ClientProtocol.get_buffer).
cdef Py_ssize_t HEAD_READ_SIZE = 8 * 1024
# What one read of a response produces goes out joined up to this size, and
# as separate buffers (one writev, no copy) past it.
cdef Py_ssize_t JOIN_MAX = 16 * 1024
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

# Live objects, counted in debug builds only: tests assert they return to
# zero once a proxy has stopped (a leaked connection or exchange shows here).
cdef long live_clients = 0
cdef long live_upstreams = 0
cdef long live_exchanges = 0


def debug_counts():
    """Live core objects (debug builds), or None in a release build."""
    if not SELPROXY_DEBUG:
        return None
    return {"clients": live_clients, "upstreams": live_upstreams,
            "exchanges": live_exchanges}


cdef object log = logging.getLogger("selproxy")

cdef inline double monotonic() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


class _HeadResponseEnd(Exception):
    """Raised from on_headers_complete to end a response to HEAD: httptools
    cannot tell llhttp to skip a body, and llhttp does not know the method."""


class _StopParsing(Exception):
    """Raised from a request callback: the head is answered by the proxy."""


class _ChunkedBody(Exception):
    """Raised from on_headers_complete: a chunked body follows, and is read
    by a parser that reports trailers (see _read_chunked_body)."""


cdef object HeadResponseEnd = _HeadResponseEnd
cdef object ChunkedBody = _ChunkedBody
cdef bytes CHUNKED_PRELUDE = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
# A response head longer than this is refused with 502, as nginx refuses one
# longer than its proxy_buffer_size (a few KiB by default).
cdef Py_ssize_t RESPONSE_HEAD_MAX = 1024 * 1024
cdef object StopParsing = _StopParsing


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


cdef inline int route_kind(RouteMatch claim):
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
    directly.  :meth:`attach` moves them into the worker's slot of the
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


cdef Py_ssize_t _send_now(int fd, const char* data, Py_ssize_t size) noexcept:
    """How much of ``data[:size]`` the socket takes at once.  An error, like
    a full socket, ends it early: the transport meets it again with the rest."""
    cdef Py_ssize_t done = 0, n
    while done < size:
        n = send(fd, data + done, size - done, MSG_NOSIGNAL)
        if n < 0:
            if errno == EINTR:
                continue
            break
        done += n
    return done


cdef enum:
    # Pieces one sendmsg takes from here; more go through the transport.
    IOV_MAX_HERE = 16


cdef Py_ssize_t _sendmsg_now(int fd, list pieces, Py_ssize_t count) noexcept:
    """How many bytes of ``pieces`` (``count`` of them) the socket takes at
    once, as one sendmsg; -1, with nothing sent, if one is not ``bytes``."""
    cdef iovec iov[IOV_MAX_HERE]
    cdef msghdr msg
    cdef Py_ssize_t i, n
    cdef object piece
    for i in range(count):
        piece = <object>PyList_GET_ITEM(pieces, i)
        if type(piece) is not bytes:
            return -1
        iov[i].iov_base = PyBytes_AS_STRING(piece)
        iov[i].iov_len = PyBytes_GET_SIZE(piece)
    memset(&msg, 0, sizeof(msg))
    msg.msg_iov = iov
    msg.msg_iovlen = count
    while True:
        n = sendmsg(fd, &msg, MSG_NOSIGNAL)
        if n >= 0:
            return n
        if errno != EINTR:
            return 0


@cython.final
@cython.internal
cdef class TransportWriter:
    """Writes to one connection's transport.

    PERF(selproxy): uvloop's ``transport.write`` costs about a thousand
    instructions of bookkeeping around its send.  While the transport holds
    nothing unsent, the bytes go to the socket straight from here, and only
    what the socket does not take is handed to the transport, which then
    owns the order and the flow control until it has sent everything.  Only
    for uvloop's plain TCP transports: never through TLS."""

    def __cinit__(self, object transport):
        self.transport = transport
        self.transport_write = transport.write
        self.fd = -1
        if isinstance(transport, UVTCPTransport):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                self.fd = sock.fileno()

    cdef void stop(self):
        """The transport is closing: the socket is no longer written here."""
        self.fd = -1
        self.transport_may_hold = True

    cdef void write(self, bytes data):
        cdef Py_ssize_t size, sent
        if self.fd >= 0:
            if self.transport_may_hold:
                self.transport_may_hold = self.transport.get_write_buffer_size() != 0
            if not self.transport_may_hold:
                size = PyBytes_GET_SIZE(data)
                sent = _send_now(self.fd, PyBytes_AS_STRING(data), size)
                if sent == size:
                    return
                if sent:
                    data = data[sent:]
        self.transport_may_hold = True
        self.handed += <unsigned long long>PyBytes_GET_SIZE(data)
        self.transport_write(data)

    cdef void writelines(self, list pieces):
        cdef Py_ssize_t count = len(pieces), sent, i, size
        cdef bytes piece
        if self.fd >= 0 and count <= IOV_MAX_HERE:
            if self.transport_may_hold:
                self.transport_may_hold = self.transport.get_write_buffer_size() != 0
            if not self.transport_may_hold:
                sent = _sendmsg_now(self.fd, pieces, count)
                if sent >= 0:
                    # What the socket did not take goes to the transport,
                    # from the first byte it did not take.
                    for i in range(count):
                        piece = <bytes>pieces[i]
                        size = PyBytes_GET_SIZE(piece)
                        if sent < size:
                            pieces = ([piece[sent:]] if sent else [piece]) + pieces[i + 1:]
                            break
                        sent -= size
                    else:
                        return
        self.transport_may_hold = True
        for item in pieces:
            self.handed += <unsigned long long>len(item)
        self.transport.writelines(pieces)

    cdef bint stalled(self, double now, double limit):
        """Have bytes waited in the transport for ``limit`` seconds with none
        of them taken by the peer?  Checked by the sweep, not per write: the
        transport's bytes left so far are what it was handed less what it
        still holds."""
        cdef Py_ssize_t waiting
        cdef unsigned long long left
        if not self.transport_may_hold or self.transport is None:
            return False
        waiting = self.transport.get_write_buffer_size()
        if waiting == 0:
            self.stalled_since = 0
            return False
        left = self.handed - <unsigned long long>waiting
        if self.stalled_since == 0 or left != self.sent_mark:
            self.sent_mark = left
            self.stalled_since = now
            return False
        return now - self.stalled_since >= limit

    cdef void write_all(self, list pieces):
        """Held writes, in one go."""
        cdef Py_ssize_t size = 0
        cdef bytes piece
        if len(pieces) == 1:
            self.write(pieces[0])
            return
        if self.fd >= 0 and not self.transport_may_hold:
            # One sendmsg: no copy to join them.
            self.writelines(pieces)
            return
        for piece in pieces:
            size += PyBytes_GET_SIZE(piece)
        if size <= JOIN_MAX:
            # PERF(selproxy): for small pieces one copy costs less than the
            # transport's writelines bookkeeping per piece.
            self.write(b"".join(pieces))
        else:
            self.writelines(pieces)


cdef void _tune_transport(object transport):
    transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            # Heads and small bodies go out at once (uvloop sets it too for
            # plain TCP, not always through TLS).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass


cdef str error_kind(object exc):
    return type(exc).__name__


cdef void _feed_copied(object protocol, object data) except *:
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


cdef object _budget_exceeded():
    return BodyBudgetExceeded(
        "the bodies this worker buffers for claimed requests are at max_buffered_bodies")


@cython.internal
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


# ---------------------------------------------------------------------------
# The upstream side


@cython.final
cdef class UpstreamPool:
    """A worker's upstream connections: at most ``max_upstream`` open, the
    idle ones reused most-recently-used first, and a FIFO of sinks waiting
    for a slot when all are busy."""

    def __cinit__(self, ProxyCore core):
        self.core = core
        self.idle = []
        self.waiters = deque()
        self.connections = set()
        self.total = 0

    cdef void acquire(self, ResponseSink sink):
        cdef UpstreamProtocol conn
        while self.idle:
            conn = <UpstreamProtocol>self.idle.pop()
            self.core.counters.cells.upstream_idle -= 1
            if conn.state == UP_IDLE:
                conn.state = UP_BUSY
                conn.reused = True
                sink.upstream_ready(conn)
                return
        if self.total < self.core.max_upstream:
            self._open(sink)
        elif len(self.waiters) >= self.core.max_upstream_waiters:
            # Envoy's max_pending_requests: a queue without a bound is a
            # wait without one, for every request behind it.
            self.core.counters.count_error("upstream_queue_full")
            sink.upstream_failed(UpstreamQueueFull(
                f"{len(self.waiters)} requests already wait for an upstream connection"))
        else:
            sink.queued_at = monotonic()
            self.waiters.append(sink)
            self.core.counters.cells.upstream_waiters += 1
            self.core.counters.cells.upstream_waits += 1

    cdef ResponseSink _next_waiter(self):
        cdef ResponseSink sink = <ResponseSink>self.waiters.popleft()
        sp_observe(&self.core.counters.cells.upstream_queue_duration, monotonic() - sink.queued_at)
        sink.queued_at = 0
        self.core.counters.cells.upstream_waiters -= 1
        return sink

    cdef void unqueue(self, ResponseSink sink):
        """``sink`` no longer wants a connection (its client left, its
        request was answered otherwise)."""
        if sink.queued_at == 0:
            return
        sink.queued_at = 0
        try:
            self.waiters.remove(sink)
            self.core.counters.cells.upstream_waiters -= 1
        except ValueError:
            pass

    cdef void expire_waiters(self, double now):
        """504 for the waiters that waited upstream_queue_timeout (HAProxy's
        timeout queue); the oldest are first."""
        cdef ResponseSink sink
        cdef double limit = self.core.upstream_queue_timeout
        while self.waiters and now - (<ResponseSink>self.waiters[0]).queued_at >= limit:
            sink = self._next_waiter()
            self.core.counters.count_error("upstream_queue_timeout")
            sink.upstream_failed(UpstreamQueueTimeout(
                f"no upstream connection was free within {limit:g}s"))

    cdef void _open(self, ResponseSink sink):
        self.total += 1
        self.core.counters.cells.upstream_connects += 1
        task = self.core.loop.create_task(_connect(self, sink))

    cdef void release(self, UpstreamProtocol conn, bint reusable):
        cdef ResponseSink waiter
        conn.sink = None
        if reusable and conn.state == UP_BUSY and not self.core.draining:
            if self.waiters:
                waiter = self._next_waiter()
                conn.reused = True
                waiter.upstream_ready(conn)
                return
            if len(self.idle) < self.core.max_idle:
                conn.state = UP_IDLE
                conn.idle_since = monotonic()
                conn.set_reading(True)
                self.idle.append(conn)
                self.core.counters.cells.upstream_idle += 1
                return
        conn.close()

    cdef void forget(self, UpstreamProtocol conn):
        """A connection closed: free its slot and serve a waiter with it."""
        cdef ResponseSink waiter
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self.total -= 1
        self.core.counters.cells.upstream_connections -= 1
        if conn.state == UP_IDLE:
            try:
                self.idle.remove(conn)
                self.core.counters.cells.upstream_idle -= 1
            except ValueError:
                pass
        if self.waiters and self.total < self.core.max_upstream and not self.core.draining:
            waiter = self._next_waiter()
            self._open(waiter)

    def close_idle(self):
        cdef UpstreamProtocol conn
        for conn in list(self.idle):
            conn.close()


async def _connect(UpstreamPool pool, ResponseSink sink):
    cdef ProxyCore core = pool.core
    cdef UpstreamProtocol conn = UpstreamProtocol(core, pool)
    try:
        await asyncio.wait_for(
            core.loop.create_connection(
                lambda: conn, core.upstream_host, core.upstream_port,
                ssl=core.ssl_context,
                server_hostname=core.upstream_host if core.ssl_context else None),
            core.connect_timeout)
    except asyncio.TimeoutError:
        pool.total -= 1
        core.counters.count_error("upstream_connect_timeout")
        sink.upstream_failed(UpstreamTimeout(
            f"connecting to the upstream took longer than {core.connect_timeout:g}s"))
        _serve_waiter(pool)
    except (Exception, asyncio.CancelledError) as exc:
        # The client learns the kind of failure; the log has its text (an
        # OS error names the upstream's address, a TLS one its certificate).
        pool.total -= 1
        core.counters.count_error("upstream_connect_failed")
        log.warning("cannot connect to the upstream %s:%s: %r", core.upstream_host,
                    core.upstream_port, exc)
        what = type(exc).__name__
        if isinstance(exc, ssl.SSLCertVerificationError):
            what = f"its TLS certificate cannot be verified ({what})"
        sink.upstream_failed(UpstreamUnavailable(f"cannot connect to the upstream: {what}"))
        _serve_waiter(pool)
    else:
        if conn.state == UP_CLOSED:
            sink.upstream_failed(UpstreamUnavailable("the upstream closed the connection at once"))
            return
        conn.state = UP_BUSY
        sink.upstream_ready(conn)


cdef void _serve_waiter(UpstreamPool pool):
    if pool.waiters and pool.total < pool.core.max_upstream:
        pool._open(pool._next_waiter())


@cython.final
@cython.internal
cdef class UpstreamProtocol:
    def __cinit__(self, ProxyCore core, UpstreamPool pool):
        global live_upstreams
        self.core = core
        self.pool = pool
        self.state = UP_CONNECTING
        self._new_parser()
        if SELPROXY_DEBUG:
            live_upstreams += 1

    def __dealloc__(self):
        global live_upstreams
        if SELPROXY_DEBUG:
            live_upstreams -= 1

    cdef void _new_parser(self):
        self.parser = HttpResponseParser(self)
        self.feed_data = self.parser.feed_data
        self.parser_spent = False

    # asyncio protocol interface ------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.out = TransportWriter(transport)
        _tune_transport(transport)
        self.pool.connections.add(self)
        self.core.counters.cells.upstream_connections += 1

    def connection_lost(self, exc):
        cdef ResponseSink sink = self.sink
        cdef bint was_tunnel = self.state == UP_TUNNEL
        self.state = UP_CLOSED
        self.pool.forget(self)
        self.transport = None
        if self.out is not None:
            self.out.stop()
        if sink is not None:
            self.sink = None
            if was_tunnel:
                sink.response_complete(None)
            elif self.head_seen and self.head.framing == BODY_UNTIL_CLOSE:
                # RFC 9112 section 6.3, rule 8: the close ends this body.
                sink.response_complete(None)
            else:
                self.core.counters.count_error("upstream_closed")
                sink.response_failed(
                    UpstreamUnavailable("the upstream closed the connection"
                                        + (" mid-response" if self.head_seen else "")),
                    self.head_seen)

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
        return self.core.read_view

    def data_received(self, data):
        _feed_copied(self, data)

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef ResponseSink sink = self.sink
        if self.state == UP_TUNNEL:
            if sink is not None:
                sink.response_body(bytes(self.core.read_view[:nbytes]))
            return
        if self.state != UP_BUSY or sink is None:
            # Bytes on an idle connection answer nothing we asked: drop it.
            self.close()
            return
        self.any_response_bytes = True
        if self.deadline_kind == DEADLINE_RESPONSE:
            self.deadline = monotonic() + self.core.response_timeout
        # PERF(selproxy): what one read produces (head, body, last chunk)
        # leaves for the client in one writev, not one send per piece.
        sink.cork()
        try:
            self.read_size = nbytes
            if self.head_start > 0:
                self.head_start = 0
            self._feed(sink, 0, nbytes)
        finally:
            sink.uncork()

    cdef void _feed(self, ResponseSink sink, Py_ssize_t start, Py_ssize_t nbytes):
        cdef bytearray carry
        try:
            self.feed_data(self.core.read_view[start:nbytes])
        except HttpParserUpgrade as exc:
            if self.state != UP_BUSY:
                return     # the sink refused the 101 and closed this connection
            offset = start + exc.args[0]
            self.state = UP_TUNNEL
            self.deadline_kind = DEADLINE_NONE
            sink.response_upgrade(bytes(self.core.read_view[offset:nbytes]))
        except HttpParserCallbackError as exc:
            cause = self._last_error
            self._last_error = None
            if isinstance(cause, _HeadResponseEnd):
                # A response to HEAD ends with its head, and the parser that
                # was told otherwise is spent.  Bytes after the head (a body
                # a broken server sent) would be taken for the next
                # response, so then the connection is not reused.
                keep_alive = self.parser.should_keep_alive()
                self._new_parser()
                self._finish_response(keep_alive and self.head_end == nbytes)
            elif isinstance(cause, _ChunkedBody):
                self._read_chunked_body(sink, nbytes)
            else:
                self._fail(cause if isinstance(cause, ProxyError)
                           else UpstreamProtocolError(f"invalid response from the upstream: {exc}"))
        except HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid response from the upstream: {exc}"))
        else:
            if self.in_head and self.state == UP_BUSY:
                # A head cut by the end of a read: keep its start for later.
                carry = self.head_carry
                if carry is None:
                    carry = self.head_carry = bytearray()
                carry += self.core.read_view[self.head_start:nbytes]
                if len(carry) > RESPONSE_HEAD_MAX:
                    self._fail(UpstreamProtocolError(
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

        PERF(selproxy): httptools calls back once per field, with two new
        ``bytes``, and a response head is most of the fields the proxy
        handles; the head's parser has no on_header, and the head is read in
        place by analyse_raw_response instead.  httptools gives no offsets,
        so that also finds the head's end: the first blank line, which in a
        head llhttp accepted (CRLF line ends only, no leniency) is its end.
        """
        cdef const char* buf = PyByteArray_AS_STRING(self.core.read_buffer)
        cdef Py_ssize_t start = self.head_start, size = -1
        cdef bytearray carry = self.head_carry
        cdef bytes joined
        if carry is None:
            err = analyse_raw_response(head, buf + start, self.read_size - start, method, &size)
            self.head_end = start + size
        else:
            # A head over several reads: join its pieces first.
            self.head_carry = None
            joined = bytes(carry) + bytes(self.core.read_view[:self.read_size])
            err = analyse_raw_response(head, PyBytes_AS_STRING(joined), PyBytes_GET_SIZE(joined),
                                       method, &size)
            self.head_end = size - len(carry)
        if err is None and size > RESPONSE_HEAD_MAX:
            err = UpstreamProtocolError(
                f"the upstream's response head is larger than {RESPONSE_HEAD_MAX} bytes")
        return err

    # httptools callbacks ---------------------------------------------------

    cdef object _refuse_extra_response(self):
        """Only one response is asked for at a time: bytes after it in the
        same read answer nothing.  The error to raise from a callback."""
        self._last_error = UpstreamProtocolError(
            "invalid response from the upstream: bytes after the end of a response")
        return self._last_error

    def on_message_begin(self):
        if self.head_start < 0:
            raise self._refuse_extra_response()
        self.head = new_response_head(0, None)
        self.trailers = None
        self.in_head = True

    def on_headers_complete(self):
        cdef MessageHead head = self.head
        cdef ResponseSink sink = self.sink
        try:
            self.in_head = False
            # The response's own version matters nowhere: the client's
            # does, and should_keep_alive() covers an HTTP/1.0 upstream.
            head.status = self.parser.get_status_code()
            err = self._read_head(head, sink.request_method)
            self.head_start = self.head_end
            if err is not None:
                raise err
            if head.status < 200 and head.status != 101:
                sink.response_interim(head)
                return
            self.head_seen = True
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
        except BaseException as exc:
            self._last_error = exc
            raise

    def on_body(self, bytes data):
        cdef ResponseSink sink = self.sink
        if sink is not None:
            sink.response_body(data)

    def on_message_complete(self):
        if self.head.status < 200:
            return
        self._finish_response(self.parser.should_keep_alive())

    # core interface --------------------------------------------------------

    cdef void send(self, ResponseSink sink, bytes data):
        self.sink = sink
        self.uses += 1
        self.reusable = False
        self.head_seen = False
        self.any_response_bytes = False
        self.request_complete = False
        self.head = None
        self.deadline_kind = DEADLINE_NONE
        self.head_start = 0
        self.in_head = False
        self.head_carry = None
        if self.parser_spent:
            self._new_parser()
        if self.reading_paused:
            self.set_reading(True)
        self.write(data)

    cdef void writelines(self, list data):
        cdef list held = self._held()
        if held is not None:
            held.extend(data)
        elif self.transport is not None:
            self.out.writelines(data)

    cdef void write(self, bytes data):
        cdef list held = self._held()
        if held is not None:
            held.append(data)
        elif self.transport is not None:
            self.out.write(data)

    cdef list _held(self):
        # PERF(selproxy): while a client read is parsed, what it produces for
        # this connection (a head, body pieces) is held and leaves in one
        # write when the parse ends: one syscall, and one wake-up upstream.
        if not self.core.cork_upstreams:
            return None
        if self.corked_out is None:
            self.corked_out = []
            self.core.corked_upstreams.append(self)
        return self.corked_out

    cdef void flush(self):
        cdef list out = self.corked_out
        self.corked_out = None
        if out and self.transport is not None and self.state != UP_CLOSED:
            self.out.write_all(out)

    cdef void request_sent(self):
        """The whole request is written: the response clock starts."""
        self.request_complete = True
        if not self.head_seen and self.state == UP_BUSY:
            self.deadline_kind = DEADLINE_RESPONSE
            self.deadline = monotonic() + self.core.response_timeout

    cdef void set_reading(self, bint on):
        if self.transport is None:
            return
        if on and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
            if self.deadline_kind == DEADLINE_RESPONSE:
                # The response clock stood still while the proxy itself held
                # the upstream back (a slow client): it restarts now.
                self.deadline = monotonic() + self.core.response_timeout
        elif not on and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    cdef void _finish_response(self, bint reusable):
        cdef ResponseSink sink = self.sink
        cdef unsigned long long uses = self.uses
        self.head_start = -1    # no head may follow in this read
        self.deadline_kind = DEADLINE_NONE
        self.reusable = reusable and self.request_complete and self.state == UP_BUSY
        if sink is not None:
            sink.response_complete(self.trailers)
        self.trailers = None
        self.head = None
        self.head_seen = False
        if self.sink is sink and self.uses == uses:
            # The sink did not release this connection itself (and did
            # not take it again for its next request either).
            self.pool.release(self, self.reusable)

    cdef void _fail(self, object exc):
        cdef ResponseSink sink = self.sink
        self.sink = None
        self.core.counters.count_error(error_kind(exc))
        self.abort()
        if sink is not None:
            sink.response_failed(exc, self.head_seen)

    cdef void check_deadline(self, double now):
        cdef ResponseSink sink
        if self.state == UP_IDLE:
            if now - self.idle_since > self.core.upstream_idle_timeout:
                self.close()
            return
        if (self.state == UP_BUSY or self.state == UP_TUNNEL) and self.out is not None \
                and self.out.stalled(now, self.core.send_timeout):
            self.deadline_kind = DEADLINE_NONE
            self._fail(UpstreamTimeout(
                f"the upstream took none of the request for {self.core.send_timeout:g}s"))
            return
        if self.deadline_kind == DEADLINE_RESPONSE and now >= self.deadline:
            if self.reading_paused:
                # Not the upstream's silence: the proxy is not reading.
                return
            self.deadline_kind = DEADLINE_NONE
            self._fail(UpstreamTimeout(
                f"the upstream did not answer within {self.core.response_timeout:g}s"))

    cdef void close(self):
        if self.state == UP_IDLE:
            try:
                self.pool.idle.remove(self)
                self.core.counters.cells.upstream_idle -= 1
            except ValueError:
                pass
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
            raise self.up._refuse_extra_response()

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
        self.up._finish_response(self.up.keep_alive)


# ---------------------------------------------------------------------------
# The client side


@cython.final
@cython.freelist(64)
@cython.internal
cdef class Exchange:
    def __cinit__(self):
        global live_exchanges
        self.keep_alive = True
        if SELPROXY_DEBUG:
            live_exchanges += 1

    def __dealloc__(self):
        global live_exchanges
        if SELPROXY_DEBUG:
            live_exchanges -= 1


@cython.internal
cdef class Collector(ResponseSink):
    """Collects one whole upstream response for a handler's upstream call."""
    cdef object future
    cdef ProxyCore core
    cdef bytes data
    cdef UpstreamProtocol conn
    cdef MessageHead head
    cdef list parts
    cdef Py_ssize_t size
    cdef Py_ssize_t budgeted       # of size, counted in core.counters.buffered_bodies
    cdef bint retried
    cdef double sent_at            # when the request went to the upstream

    def __cinit__(self, ProxyCore core, bytes method, bytes data):
        self.core = core
        self.request_method = method
        self.data = data
        self.future = core.loop.create_future()
        self.parts = []

    cdef void upstream_ready(self, UpstreamProtocol conn):
        if self.future.done():
            self.core.pool.release(conn, True)
            return
        self.conn = conn
        self.sent_at = monotonic()
        conn.send(self, self.data)
        conn.request_sent()

    cdef void upstream_failed(self, object exc):
        if not self.future.done():
            self.future.set_exception(exc)

    cdef void response_head(self, MessageHead head):
        if head.status == 101:
            # Nothing here asked for an upgrade, and a tunnel has no end to
            # wait for: the connection is dropped and the handler gets a 502.
            if self.conn is not None:
                self.conn._fail(UpstreamProtocolError(
                    "the upstream answered 101 to a request that asked for no upgrade"))
            return
        self.head = head

    cdef void response_body(self, bytes data):
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        self.size += size
        if self.size > self.core.max_buffered_response:
            if self.conn is not None:
                self.conn._fail(UpstreamProtocolError(
                    "the upstream response is larger than max_buffered_response"))
            return
        self.budgeted += size
        if not self.core.take_budget(size):
            if self.conn is not None:
                self.conn._fail(BodyBudgetExceeded(
                    "the worker holds max_buffered_bodies bytes of buffered bodies"))
            return
        self.parts.append(data)

    cdef void _release_budget(self):
        self.core.counters.cells.buffered_bodies -= self.budgeted
        self.budgeted = 0

    cdef void response_complete(self, list trailers):
        cdef MessageHead head = self.head
        self.conn = None
        self._release_budget()
        if self.sent_at != 0:
            sp_observe(&self.core.counters.cells.upstream_duration, monotonic() - self.sent_at)
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
        if (conn is not None and conn.reused and not conn.any_response_bytes
                and not self.retried and isinstance(exc, UpstreamUnavailable)):
            # A pooled connection the upstream had closed while it was idle:
            # the request never reached it, so it is safe to send again.
            self.retried = True
            self.parts = []
            self.size = 0
            self.core.pool.acquire(self)
            return
        self.future.set_exception(exc)

    def cancel(self):
        cdef UpstreamProtocol conn = self.conn
        self.conn = None
        self._release_budget()
        self.core.pool.unqueue(self)
        if conn is not None:
            conn.sink = None
            conn.abort()


cdef class CoreUpstream:
    """The engine as handlers see it: ``await upstream.request(...)``."""
    cdef ProxyCore core
    cdef bytes host_header

    def __cinit__(self, ProxyCore core):
        self.core = core
        self.host_header = core.upstream_authority

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
        collector = Collector(self.core, head.method, data)
        self.core.pool.acquire(collector)
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


cdef object STATUS_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}
# Fields of a response the proxy makes that it sets itself (framing) or
# that are hop-by-hop (RFC 9110 section 7.6.1): dropped from a handler's.
cdef frozenset ANSWER_DROPPED = frozenset((
    b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"te",
    b"trailer", b"upgrade", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization"))


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
                client.core.counters.count_error("handler_error")
                log.error("handler for %s %s was cancelled", ex.head.method.decode("latin-1"),
                          ex.head.target.decode("latin-1"))
            else:
                exc = task.exception()
            if exc is None:
                try:
                    status, headers, body = _response_parts(task.result())
                except Exception as bad:
                    client.core.counters.count_error("handler_bad_response")
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
                client.core.counters.count_error("handler_error")
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
    def __cinit__(self, ProxyCore core):
        global live_clients
        self.core = core
        self.state = CLIENT_OPEN
        self.exchanges = deque()
        self.parser = HttpRequestParser(self)
        self.feed_data = self.parser.feed_data
        if SELPROXY_DEBUG:
            live_clients += 1

    def __dealloc__(self):
        global live_clients
        if SELPROXY_DEBUG:
            live_clients -= 1

    # asyncio protocol interface ------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.out = TransportWriter(transport)
        _tune_transport(transport)
        self.peer = transport.get_extra_info("peername")
        self.core.clients.add(self)
        self.core.counters.cells.client_connections += 1
        self.core.counters.cells.client_connections_total += 1
        self.deadline_kind = DEADLINE_IDLE
        self.deadline = monotonic() + self.core.idle_timeout
        if self.core.draining:
            self.close()

    def connection_lost(self, exc):
        cdef UpstreamProtocol up = self.upstream
        cdef Exchange ex
        self.state = CLIENT_CLOSED
        self.core.pool.unqueue(self)
        for ex in self.exchanges:
            self.core.counters.cells.buffered_bodies -= ex.budgeted
            ex.budgeted = 0
        self.core.clients.discard(self)
        self.core.counters.cells.client_connections -= 1
        self.transport = None
        if self.out is not None:
            self.out.stop()
        self.deadline_kind = DEADLINE_NONE
        if up is not None:
            # The client is gone: so is this exchange, and the upstream
            # connection carrying it is in an unknown state.
            self.upstream = None
            up.sink = None
            up.abort()
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
        if self.upstream is not None:
            self.upstream.set_reading(False)

    def resume_writing(self):
        self.writing_paused = False
        if self.upstream is not None:
            self.upstream.set_reading(True)

    def get_buffer(self, Py_ssize_t hint):
        if self.receiving is None and self.state == CLIENT_OPEN:
            # Between bodies a read holds heads: each small pipelined one
            # becomes a few hundred bytes of objects before reading pauses,
            # so such reads are kept small (a body gets the whole buffer).
            return self.core.head_view
        return self.core.read_view

    def data_received(self, data):
        _feed_copied(self, data)

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef ClientState state = self.state
        self.core.counters.cells.client_bytes_in += nbytes
        if state == CLIENT_OPEN:
            if self.deadline_kind == DEADLINE_BODY:
                self.body_window_bytes += nbytes
                self.framing_bytes += nbytes
                self._feed_corked(nbytes)
                if (self.framing_bytes > self.core.max_header_bytes + 4096
                        and self.deadline_kind == DEADLINE_BODY):
                    # Reads that bring no body byte: chunk lines and trailers.
                    # httptools joins a trailer's pieces itself, so an endless
                    # one would grow unseen, as a head's would (see below).
                    self._stop_parsing(HeadersTooLarge(
                        f"the request trailers are larger than "
                        f"{self.core.max_header_bytes} bytes"))
                if self.core.draining:
                    self._drain_when_received()
                return
            self._feed_corked(nbytes)
            if self.in_head:
                # httptools joins a header's pieces itself before calling
                # on_header, so one endless header would grow unseen: count
                # the raw bytes of an unfinished head as well.
                self.raw_head_size += nbytes
                if self.raw_head_size > (self.core.max_request_line
                                         + self.core.max_header_bytes + 4096):
                    self._stop_parsing(HeadersTooLarge(
                        f"the request header block is larger than "
                        f"{self.core.max_header_bytes} bytes"))
            if self.core.draining:
                self._drain_when_received()
        elif state == CLIENT_TUNNEL:
            self.tunnel_moved = True
            if self.upstream is not None:
                self.upstream.write(bytes(self.core.read_view[:nbytes]))
        elif state == CLIENT_UPGRADING:
            self._upgrade_bytes(bytes(self.core.read_view[:nbytes]))
        elif self.lingering:
            self.lingered += nbytes
            if self.lingered > LINGER_MAX:
                self.close()

    cdef void _drain_when_received(self):
        # A drain waited for the request arriving when it began (drain()).
        if self.state == CLIENT_OPEN and self.receiving is None and not self.in_head:
            self.drain()

    cdef void _feed_corked(self, Py_ssize_t nbytes):
        cdef ProxyCore core = self.core
        cdef list corked
        cdef UpstreamProtocol up
        core.cork_upstreams = True
        try:
            self._feed(core.read_view[:nbytes])
        finally:
            core.cork_upstreams = False
            if core.corked_upstreams:
                corked = core.corked_upstreams
                core.corked_upstreams = []
                for up in corked:
                    up.flush()

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
            cause = self._last_error
            self._last_error = None
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
                if self.first is ex and self.upstream is not None:
                    self.upstream.request_sent()
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
        self.core.counters.count_error(error_kind(exc))
        ex = self.receiving
        if ex is None or ex.request_complete:
            ex = Exchange.__new__(Exchange)
            ex.head = self.parsing or new_request_head(b"GET", b"/")
            ex.error = exc
            ex.close_after = True
            ex.keep_alive = False
            ex.request_complete = True
            self._queue(ex)
        elif ex.answered:
            # Broken while its dropped rest was read: nothing is left to say.
            self.close()
        else:
            # The request being read is broken mid-body: if it is active,
            # its upstream exchange is abandoned; else it is answered in turn.
            ex.error = exc
            ex.close_after = True
            ex.keep_alive = False
            ex.request_complete = True
            if self.first is ex and ex.response_started is False:
                if self.upstream is not None:
                    self.upstream.sink = None
                    self.upstream.abort()
                    self.upstream = None
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
                self.deadline = monotonic() + self.core.body_timeout
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
            self.deadline = monotonic() + self.core.header_timeout

    def on_url(self, bytes url):
        self.url_size += PyBytes_GET_SIZE(url)
        if self.url_size > self.core.max_request_line:
            self._last_error = RequestLineTooLong(
                f"the request target is longer than {self.core.max_request_line} bytes")
            raise self._last_error
        self.parsing.target += url

    def on_header(self, bytes name, bytes value):
        cdef Exchange ex
        if not self.in_head:
            # Trailers (RFC 9112 section 7.1.2): bounded like a head.
            self.head_size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
            if self.head_size > self.core.max_header_bytes:
                self._last_error = HeadersTooLarge(
                    f"the request trailers are larger than {self.core.max_header_bytes} bytes")
                raise self._last_error
            ex = self.receiving
            if ex is not None:
                if ex.trailers is None:
                    ex.trailers = []
                ex.trailers.append((name, value))
            return
        self.head_size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
        if self.head_size > self.core.max_header_bytes:
            self._last_error = HeadersTooLarge(
                f"the request header block is larger than {self.core.max_header_bytes} bytes")
            raise self._last_error
        self.parsing.headers.append((name, value))

    def on_headers_complete(self):
        cdef MessageHead head = self.parsing
        cdef Exchange ex = Exchange.__new__(Exchange)
        cdef ProxyCore core = self.core
        self.in_head = False
        self.head_size = 0
        self.deadline_kind = DEADLINE_NONE
        ex.head = head
        ex.started_at = monotonic()
        head.method = self.parser.get_method()
        ex.keep_alive = self.parser.should_keep_alive()
        if not ex.keep_alive or self._may_ask_keep_alive(head):
            # PERF(selproxy): get_http_version() formats a str per call.  An
            # HTTP/1.0 request keeps its connection only when it asks with
            # "Connection: keep-alive", so a kept one without it is 1.1.
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
            ex.claim = core.routes.lookup(head.method, head.target)
            if ex.claim is not None and ex.claim.notify:
                # A write the search layer wants to hear of: told now, and
                # again when its exchange ends; it passes through as any other.
                ex.notify, ex.claim = ex.claim, None
                core.notify(ex.notify, head, False)
            if ex.claim is not None:
                if ex.upgrade:
                    err = BadRequest("a claimed route cannot be upgraded")
                elif head.content_length > core.max_buffered_body:
                    err = BodyTooLarge(
                        f"the request body is larger than {core.max_buffered_body} bytes")
                elif head.framing != BODY_NONE and (
                        core.counters.cells.buffered_bodies + max(head.content_length, 0)
                        > core.max_buffered_bodies):
                    err = _budget_exceeded()
        if err is not None:
            self.receiving = None
            self._stop_parsing(err)
            self._last_error = StopParsing()
            raise self._last_error
        self.receiving = ex
        if ex.upgrade:
            if head.framing == BODY_CHUNKED:
                self.receiving = None
                self._stop_parsing(BadRequest("a chunked body on an upgrade request"))
                self._last_error = StopParsing()
                raise self._last_error
            self.upgrading = ex
            self.upgrade_body_left = head.content_length if head.framing == BODY_LENGTH else 0
        if core.access_log:
            # The client's X-Request-Id if it is a safe one, else a new one
            # (the hook puts it in head.end_to_end, so the upstream sees it).
            ex.request_id = core.access_hook.take_request_id(head)
        if head.framing == BODY_NONE:
            ex.request_complete = not ex.upgrade
        else:
            self.deadline_kind = DEADLINE_BODY
            self.deadline = monotonic() + core.body_timeout
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
            if (authority != self.core.upstream_authority
                    and authority not in self.core.listen_authorities):
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
            if ex.body_size > self.core.max_buffered_body:
                self._last_error = BodyTooLarge(
                    f"the request body is larger than {self.core.max_buffered_body} bytes")
                raise self._last_error
            ex.budgeted += size
            if not self.core.take_budget(size):
                self._last_error = _budget_exceeded()
                raise self._last_error
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
        if ex.answered:
            # The response is out: this is the rest, read and dropped, up to
            # a bound (a chunked body may be endless); past it, close.
            ex.dropped += PyBytes_GET_SIZE(data)
            if ex.dropped > DRAIN_MAX:
                self.receiving = None
                self.close()
                self._last_error = StopParsing()
                raise self._last_error
            return
        self._body_piece(ex, data)

    def on_message_complete(self):
        cdef Exchange ex = self.receiving
        cdef list last
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
        if ex.answered:
            # The dropped rest is all read: the connection goes on.
            if self.first is None and self.state == CLIENT_OPEN:
                self.deadline_kind = DEADLINE_IDLE
                self.deadline = monotonic() + self.core.idle_timeout
            return
        if ex.head.framing == BODY_CHUNKED:
            last = [LAST_CHUNK]
            if ex.trailers:
                for name, value in ex.trailers:
                    last += (name, b": ", value, CRLF)
            last.append(CRLF)
            self._body_piece(ex, b"".join(last))
        if self.first is ex:
            if ex.body_first:
                self._acquire_upstream(ex)
            elif self.upstream is not None:
                self.upstream.request_sent()

    # exchanges -------------------------------------------------------------

    cdef void _body_piece(self, Exchange ex, bytes data):
        """Send a piece of a passthrough request body on, or queue it."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        cdef bint chunk = ex.head.framing == BODY_CHUNKED and not ex.request_complete
        if self.upstream is not None and self.first is ex and not ex.pending:
            if chunk:
                self.upstream.writelines([chunk_size_line(size), data, CRLF])
            else:
                self.upstream.write(data)
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
        if ex.body_first and ex.pending_size > self.core.request_buffer_size and self.first is ex:
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
        cdef ProxyCore core = self.core
        if ex.error is not None:
            self._answer_error(ex, ex.error)
            return
        if ex.claim is not None:
            core.counters.cells.requests_claimed += 1
            core.counters.cells.requests[route_kind(ex.claim)] += 1
            if ex.request_complete:
                self.run_handler(ex)
            elif ex.head.expect_continue:
                self._write(CONTINUE_100)
            return
        core.counters.cells.requests_passed += 1
        core.counters.cells.requests[SP_ROUTE_PASSTHROUGH] += 1
        self.request_method = ex.head.method
        if (not ex.request_complete and not ex.head.expect_continue and not ex.upgrade
                and ex.pending_size <= core.request_buffer_size):
            # Like nginx (proxy_request_buffering), a body is read before an
            # upstream connection is taken: whole if it is small, else its
            # first request_buffer_size bytes.  A slow client holds only its
            # own connection, or has sent that much first.  A client that
            # waits for 100 Continue is let through at once (the engine
            # sends it).
            ex.body_first = True
            return
        core.pool.acquire(self)

    cdef void _acquire_upstream(self, Exchange ex):
        """The body of ``ex`` is read, or past the buffer: take an upstream."""
        ex.body_first = False
        self.core.pool.acquire(self)

    cdef void upstream_ready(self, UpstreamProtocol conn):
        cdef Exchange ex
        if self.state == CLIENT_CLOSED or self.first is None:
            self.core.pool.release(conn, True)
            return
        ex = self.first
        self.upstream = conn
        self._send_upstream(conn, ex)

    cdef void _send_upstream(self, UpstreamProtocol conn, Exchange ex):
        cdef list extra = []
        cdef ProxyCore core = self.core
        cdef MessageHead head = ex.head
        if head.host is None:
            extra.append((b"Host", core.upstream_authority))
        if core.forwarded_headers and self.peer:
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
            conn.request_sent()

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
        ex.response_started = True
        if head.status == 101:
            if not ex.upgrade:
                self.upstream._fail(UpstreamProtocolError("101 without an upgrade request"))
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
        sp_count_response(self.core.counters.cells, SP_ROUTE_PASSTHROUGH, head.status)
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
            self.core.counters.cells.client_bytes_out += PyBytes_GET_SIZE(data)
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
        cdef list last
        cdef UpstreamProtocol up = self.upstream
        if self.state == CLIENT_TUNNEL:
            self.upstream = None
            self.close()
            return
        if self.first is None:
            return
        ex = self.first
        if ex.response_chunked and self.transport is not None:
            last = [LAST_CHUNK]
            if trailers:
                for name, value in trailers:
                    last += (name, b": ", value, CRLF)
            last.append(CRLF)
            self._write(b"".join(last))
        self.upstream = None
        if ex.upstream_at != 0:
            sp_observe(&self.core.counters.cells.upstream_duration, monotonic() - ex.upstream_at)
        self._resume(PAUSE_UPSTREAM_FULL)
        if up is not None:
            self.core.pool.release(up, ex.request_complete and up.reusable)
        self._finish(ex)

    cdef void response_upgrade(self, bytes rest):
        cdef Exchange ex = self.first
        self.state = CLIENT_TUNNEL
        # A tunnel with no byte either way for idle_timeout is closed, as an
        # idle keep-alive connection is: it holds an upstream connection
        # (nginx's proxy_read_timeout, HAProxy's timeout tunnel).
        self.deadline_kind = DEADLINE_IDLE
        self.deadline = monotonic() + self.core.idle_timeout
        if rest:
            self._write(rest)
        if self.tunnel_pending:
            self.upstream.writelines(self.tunnel_pending)
        self.tunnel_pending = None
        self.backlog_size = 0
        self.exchanges.clear()
        self.first = None
        self._resume(PAUSE_BACKLOG | PAUSE_STOPPED)

    cdef void response_failed(self, object exc, bint head_seen):
        cdef Exchange ex
        cdef UpstreamProtocol up = self.upstream
        self.upstream = None
        if self.state == CLIENT_CLOSED or self.first is None:
            return
        if head_seen or self.state == CLIENT_TUNNEL:
            # RFC 9112 section 9.6 / nginx: a response cut short must not
            # look complete, so the client connection is cut as well.
            if self.core.logger is not None and self.first is not None:
                ex = self.first
                self.core.logger.warning("%s %s -> cut mid-response: %s",
                                         ex.head.method.decode("latin-1"),
                                         ex.head.target.decode("latin-1"), exc.reason)
            self.abort()
            return
        ex = self.first
        self._resume(PAUSE_UPSTREAM_FULL)
        if (up is not None and up.reused and not up.any_response_bytes
                and not ex.retried and ex.request_complete
                and ex.head.framing == BODY_NONE and isinstance(exc, UpstreamUnavailable)):
            # A pooled connection the upstream closed while idle.
            ex.retried = True
            self.core.pool.acquire(self)
            return
        if not ex.request_complete:
            ex.close_after = True
        self._answer_error(ex, exc)

    cdef void run_handler(self, Exchange ex):
        cdef MessageHead head = ex.head
        cdef ProxyCore core = self.core
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
        task = core.loop.create_task(core.handler_runner(ex.claim.route, request))
        self.handler_task = task
        task.add_done_callback(_HandlerDone(self, ex))

    cdef void _answer(self, Exchange ex, int status, list headers, bytes body):
        """Write a whole response the proxy made itself."""
        cdef list out
        cdef bint close = (not ex.keep_alive or ex.close_after
                           or not ex.request_complete or self._last_one())
        if self.transport is None:
            return
        sp_count_response(self.core.counters.cells, route_kind(ex.claim), status)
        if self.queued_at != 0:
            self.core.pool.unqueue(self)
        ex.body_first = False
        ex.close_after = close
        out = [b"HTTP/1.1 ", str(status).encode(), b" ",
               STATUS_PHRASES.get(status, b"Unknown"), CRLF]
        for name, value in headers:
            if name.lower() in ANSWER_DROPPED:
                continue
            out += (name, b": ", value, CRLF)
        if status == 204 or status == 304 or status < 200:
            body = EMPTY
        else:
            out += (b"Content-Length: ", str(len(body)).encode(), CRLF)
            if ex.head.method == b"HEAD":
                body = EMPTY
        if self.core.access_log:
            ex.status = status
            ex.bytes_out = len(body)
            ex.answer_headers = headers
            if ex.request_id is not None and field_error(b"X-Request-Id", ex.request_id) is None and not any(
                    name.lower() == b"x-request-id" for name, _value in headers):
                out += (b"X-Request-Id: ", ex.request_id, CRLF)
        if close:
            out.append(b"Connection: close\r\n")
        out.append(CRLF)
        out.append(body)
        self._write(b"".join(out))
        self._finish(ex)

    cdef void _answer_error(self, Exchange ex, object exc):
        if self.core.logger is not None:
            self.core.logger.warning("%s %s -> %d %s", ex.head.method.decode("latin-1")
                                     if ex.head.method else "-",
                                     ex.head.target.decode("latin-1"), exc.status, exc.reason)
        headers = [(b"Content-Type", b"application/json")]
        if exc.retry_after is not None:
            headers.append((b"Retry-After", str(exc.retry_after).encode()))
        self._answer(ex, exc.status, headers, exc.body())

    cdef void _finish(self, Exchange ex):
        """The active exchange's response is written: on to the next."""
        if self.core.access_log:
            self._log_exchange(ex)
        ex.answered = True
        if ex.notify is not None:
            self.core.notify(ex.notify, ex.head, True)
        if ex.budgeted:
            self.core.counters.cells.buffered_bodies -= ex.budgeted
            ex.budgeted = 0
        if self.first is ex:
            self.exchanges.popleft()
            self.first = self.exchanges[0] if self.exchanges else None
        if ex.close_after or self.state == CLIENT_CLOSING or self.core.draining:
            if self.first is None or ex.close_after:
                self.close()
                return
        if len(self.exchanges) <= 16:
            self._resume(PAUSE_BACKLOG)
        if self.first is not None:
            self._start(self.first)
        elif self.state == CLIENT_OPEN and not self.in_head and self.receiving is None:
            self.deadline_kind = DEADLINE_IDLE
            self.deadline = monotonic() + self.core.idle_timeout

    cdef void _log_exchange(self, Exchange ex):
        """Hand the exchange's figures to the access log hook (only while
        it is on).  Nothing it raises may reach the protocol."""
        cdef double now = monotonic()
        try:
            self.core.access_hook.exchange_done(
                self.peer, ex.head, ex.claim.route if ex.claim is not None else None,
                ex.status, ex.bytes_out, now - ex.started_at,
                now - ex.upstream_at if ex.upstream_at != 0 else None,
                ex.request_id, ex.answer_headers)
        except Exception:
            log.exception("the access log failed")

    cdef bint _last_one(self):
        """Closing (drain, half-close, parse error): is this the last answer?"""
        return ((self.state == CLIENT_CLOSING or self.core.draining)
                and len(self.exchanges) <= 1)

    cdef void _write(self, bytes data):
        self.core.counters.cells.client_bytes_out += PyBytes_GET_SIZE(data)
        if self.corked:
            self.corked_out.append(data)
        elif self.transport is not None:
            self.out.write(data)

    cdef void _writelines(self, list data):
        cdef object piece
        for piece in data:
            self.core.counters.cells.client_bytes_out += len(piece)
        if self.corked:
            self.corked_out.extend(data)
        elif self.transport is not None:
            self.out.writelines(data)

    cdef void cork(self):
        if not self.corked:
            self.corked = True
            self.corked_out = []

    cdef void uncork(self):
        cdef list out = self.corked_out
        if not self.corked:
            return
        self.corked = False
        self.corked_out = None
        if out and self.transport is not None:
            self.out.write_all(out)

    cdef void check_deadline(self, double now):
        cdef Deadline kind = self.deadline_kind
        cdef ProxyCore core = self.core
        if self.out is not None and self.out.transport_may_hold and self.out.stalled(
                now, core.send_timeout):
            # nginx's send_timeout: the client took nothing of what waits
            # for it.  Its pace, not the upstream's: the upstream is paused.
            core.counters.count_error("client_send_timeout")
            if core.logger is not None:
                core.logger.warning("client %s read nothing for %gs: connection closed",
                                    self.peer[0] if self.peer else "-", core.send_timeout)
            self.abort()
            return
        if kind == DEADLINE_NONE or now < self.deadline:
            return
        if self.state == CLIENT_TUNNEL and self.tunnel_moved:
            self.tunnel_moved = False
            self.deadline = now + core.idle_timeout
            return
        if kind == DEADLINE_BODY and (self.paused != 0 or (
                self.body_window_bytes > 0 and self.body_window_bytes >= core.body_window_min)):
            # Enough came in this window (or the proxy was not reading):
            # a new window starts.  A byte now and then is not enough, so a
            # trickling client cannot hold its exchange for ever.
            self.deadline = now + core.body_timeout
            self.body_window_bytes = 0
            return
        self.deadline_kind = DEADLINE_NONE
        if kind == DEADLINE_IDLE:
            self.close()
        elif kind == DEADLINE_BODY:
            core.counters.count_error("body_timeout")
            if self.receiving is not None and self.receiving.answered:
                self.close()   # the answer is out; let it reach the client
            elif self.state == CLIENT_OPEN and self.receiving is not None:
                # RFC 9110 section 15.5.9, nginx's client_body_timeout: 408.
                self._stop_parsing(RequestTimeout(
                    f"the request body came slower than {core.body_window_min} bytes "
                    f"per {core.body_timeout:g}s"))
            else:
                self.abort()
        elif kind == DEADLINE_HEAD:
            self.core.counters.count_error("header_timeout")
            if self.first is not None:
                self.abort()
            else:
                # RFC 9110 section 15.5.9: 408 before closing.
                self.state = CLIENT_OPEN
                self._stop_parsing(ProxyError(
                    f"the request head did not arrive within {self.core.header_timeout:g}s",
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


# ---------------------------------------------------------------------------
# The worker


cdef class ProxyCore:
    """One worker's proxy: its configuration in C fields, its routes, its
    upstream pool, its counters and its open client connections."""

    def __init__(self, config, loop, routes=(), handler_runner=None, logger=None, access_hook=None):
        scheme, host, port = config.upstream_address
        self.config = config
        self.loop = loop
        self.counters = Counters()
        self.routes = RouteTable(routes)
        self.pool = UpstreamPool(self)
        self.ssl_context = config.upstream_ssl_context()
        self.upstream_host = host
        self.upstream_port = port
        default_port = 443 if scheme == "https" else 80
        authority = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            authority = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        self.upstream_authority = authority.lower().encode("idna")
        self.upstream_scheme = scheme.encode()
        self.listen_authorities = set()
        self.handler_runner = handler_runner
        self.logger = logger
        self.clients = set()
        self.read_buffer = bytearray(READ_BUFFER_SIZE)
        self.corked_upstreams = []
        self.read_view = memoryview(self.read_buffer)
        self.head_view = self.read_view[:HEAD_READ_SIZE]

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

    def protocol_factory(self):
        return ClientProtocol(self)

    def add_listen_authority(self, str host, int port):
        for name in {host, "localhost" if host in ("127.0.0.1", "::1") else host}:
            self.listen_authorities.add(f"{name}:{port}".lower().encode("idna"))
            if port == 80:
                self.listen_authorities.add(name.lower().encode("idna"))

    def upstream(self):
        """The object handlers receive to call the upstream."""
        return CoreUpstream(self)

    def start(self):
        self.sweeper = self.loop.call_later(self.sweep_interval, self._sweep_cb)

    def _sweep_cb(self):
        self._sweep()

    cdef bint take_budget(self, Py_ssize_t size):
        """Count ``size`` more buffered bytes; False once over the budget."""
        self.counters.cells.buffered_bodies += size
        return self.counters.cells.buffered_bodies <= self.max_buffered_bodies

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

    cdef void _sweep(self):
        """Fire the deadlines that have passed.  PERF(selproxy): one timer
        per worker, instead of two timer calls per request."""
        cdef double now = monotonic()
        cdef ClientProtocol client
        cdef UpstreamProtocol conn
        if self.pool.waiters:
            self.pool.expire_waiters(now)
        for client in list(self.clients):
            client.check_deadline(now)
        for conn in list(self.pool.connections):
            conn.check_deadline(now)
        self.sweeper = self.loop.call_later(self.sweep_interval, self._sweep_cb)

    def drain(self):
        """Stop taking new requests: idle connections close now, busy ones
        after the exchange in flight."""
        cdef ClientProtocol client
        self.draining = True
        for client in list(self.clients):
            client.drain()
        self.pool.close_idle()

    def open_clients(self):
        return len(self.clients)

    def abort_all(self):
        cdef ClientProtocol client
        cdef UpstreamProtocol conn
        for client in list(self.clients):
            client.abort()
        for conn in list(self.pool.connections):
            conn.abort()

    def stop(self):
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
