# cython: language_level=3
"""Writes to one connection's transport.

PERF: uvloop's ``transport.write`` costs about a thousand instructions of
bookkeeping around its send.  Writing to the socket from here took a small
passthrough request from 26,700 to 24,700 user-space instructions (callgrind,
``benchmarks/bench_instructions.py``, commit 3ea0836; RESULTS.md, 2026-11-28
16:30), and several held pieces in one ``sendmsg`` instead of a join took the
search response from 58,553 to 56,448 (commit 53798fd, the 17:03 entry).  While the transport holds
nothing unsent, the bytes go to the socket straight from here, and only what
the socket does not take is handed to the transport, which then owns the
order and the flow control until it has sent everything.  Only for uvloop's
plain TCP transports: never through TLS.

While a read is parsed, what it produces for a connection can be held
(``hold_writes``, in the ``.pxd``) and leaves in one write at the end
(:meth:`TransportWriter.release`): one syscall, and one wake-up for the peer.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM
from libc.string cimport memset
from libc.errno cimport errno, EINTR

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

import socket

from uvloop.loop import TCPTransport as UVTCPTransport

# The transports' write buffer marks: a 1 MiB body moves in 4 (1 MiB /
# WRITE_HIGH) to 16 (1 MiB / WRITE_LOW) writes between pauses; idle
# connections hold no buffer at all.
cdef Py_ssize_t WRITE_HIGH = 256 * 1024
cdef Py_ssize_t WRITE_LOW = 64 * 1024
# Held writes go out joined up to this size, and as separate buffers (one
# writev, no copy) past it.
cdef Py_ssize_t JOIN_MAX = 16 * 1024


cdef enum:
    # Pieces one sendmsg takes from here; more go through the transport.
    IOV_MAX_HERE = 16


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
cdef class TransportWriter:
    """Writes to one connection's transport (see the module docstring)."""

    def __cinit__(self, object transport):
        self.transport = transport
        self.transport_write = transport.write
        self.fd = -1
        if isinstance(transport, UVTCPTransport):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                self.fd = sock.fileno()

    cdef void stop(self):
        """The transport is closing: the socket is no longer written here,
        and what was held is dropped."""
        self.fd = -1
        self.transport_may_hold = True
        self.held = None

    cdef void write(self, bytes data):
        cdef Py_ssize_t size, sent
        if self.held is not None:
            self.held.append(data)
            return
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
        if self.held is not None:
            self.held.extend(pieces)
            return
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

    cdef void release(self):
        """Write what was held, in one go, and stop holding."""
        cdef list pieces = self.held
        cdef Py_ssize_t size = 0
        cdef bytes piece
        self.held = None
        if not pieces:
            return
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
            # PERF: for small pieces one copy costs less than the transport's
            # writelines bookkeeping per piece.  Not measured on its own: it
            # came with commit ffa99cb, whose gain RESULTS.md (2026-11-28
            # 13:05, CPU per request from /proc/PID/stat) reports as a whole.
            self.write(b"".join(pieces))
        else:
            self.writelines(pieces)

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


cdef void tune_transport(object transport):
    transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            # Heads and small bodies go out at once (uvloop sets it too for
            # plain TCP, not always through TLS).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
