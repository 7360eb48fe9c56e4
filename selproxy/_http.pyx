# cython: language_level=3
"""HTTP/1.1 heads: analysis for framing and safety, and serialization.

httptools reports a head as callbacks and gives no byte offsets (it does only
on upgrade).  A request head is collected field by field into a
:class:`MessageHead`, and this module writes it again with the hop-by-hop
headers removed and the framing headers set by the proxy.  A response head is
read in place once llhttp has accepted it (:func:`analyse_raw_response`), and
its kept field lines go on exactly as they came.  Either way everything but
hop-by-hop and framing fields goes out in its original order.
"""
cimport cython
from cpython.bytes cimport (
    PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE,
)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memchr, memcpy

import http

from selproxy.errors import BadRequest, UpstreamProtocolError

__all__ = ("MessageHead",)

cdef bytes CRLF = b"\r\n"
cdef bytes COLON_SP = b": "
cdef list NO_FIELDS = []

# RFC 9110 section 7.6.1: hop-by-hop fields, plus the ones named in
# Connection.  Content-Length and Transfer-Encoding are framing, which the
# proxy sets itself when it writes a head; Proxy-Connection is the
# non-standard field that RFC 9112 appendix C.2.2 tells proxies to drop.
cdef enum FieldName:
    F_OTHER
    F_HOST
    F_EXPECT
    # hop-by-hop from here on
    F_CONNECTION
    F_KEEP_ALIVE
    F_PROXY_CONNECTION
    F_TE
    F_TRANSFER_ENCODING
    F_UPGRADE
    F_CONTENT_LENGTH
    F_PROXY_AUTHENTICATE
    F_PROXY_AUTHORIZATION


cdef inline bint _name_is(const char* name, const char* lower, Py_ssize_t size) noexcept:
    """``name[:size].lower() == lower``, for a lowercase ASCII literal:
    only A-Z fold, as in ``bytes.lower()``, whatever the C locale."""
    cdef Py_ssize_t i
    cdef char c
    for i in range(size):
        c = name[i]
        if c != lower[i] and not (65 <= c <= 90 and c + 32 == lower[i]):  # A-Z
            return False
    return True


cdef inline FieldName field_name(bytes name) noexcept:
    return field_name_at(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))


cdef FieldName field_name_at(const char* p, Py_ssize_t size) noexcept:
    """Which of the fields the proxy acts on the name ``p[:size]`` is.
    PERF: runs for every header of every message, so it dispatches on the
    size and allocates nothing; measured only together with the other
    allocation changes of RESULTS.md's 2026-11-28 13:05 entry (CPU per
    request from /proc/PID/stat, bench_passthrough.py)."""
    if size == 4:
        return F_HOST if _name_is(p, b"host", 4) else F_OTHER
    if size == 10:
        if _name_is(p, b"connection", 10):
            return F_CONNECTION
        return F_KEEP_ALIVE if _name_is(p, b"keep-alive", 10) else F_OTHER
    if size == 14:
        return F_CONTENT_LENGTH if _name_is(p, b"content-length", 14) else F_OTHER
    if size == 17:
        return F_TRANSFER_ENCODING if _name_is(p, b"transfer-encoding", 17) else F_OTHER
    if size == 6:
        return F_EXPECT if _name_is(p, b"expect", 6) else F_OTHER
    if size == 7:
        return F_UPGRADE if _name_is(p, b"upgrade", 7) else F_OTHER
    if size == 2:
        return F_TE if _name_is(p, b"te", 2) else F_OTHER
    if size == 16:
        return F_PROXY_CONNECTION if _name_is(p, b"proxy-connection", 16) else F_OTHER
    if size == 18:
        return F_PROXY_AUTHENTICATE if _name_is(p, b"proxy-authenticate", 18) else F_OTHER
    if size == 19:
        return F_PROXY_AUTHORIZATION if _name_is(p, b"proxy-authorization", 19) else F_OTHER
    return F_OTHER


cdef enum ConnectionOption:
    OPT_EMPTY
    OPT_CLOSE
    OPT_KEEP_ALIVE
    OPT_UPGRADE
    OPT_FIELD       # anything else: the name of a field to drop


cdef ConnectionOption connection_option_at(const char* p, Py_ssize_t start, Py_ssize_t end) noexcept:
    """What one comma-separated Connection option, ``p[start:end]``, asks
    for, with optional whitespace around it (RFC 9110 section 5.6.1) and in
    any case."""
    while start < end and (p[start] == 32 or p[start] == 9):
        start += 1
    while end > start and (p[end - 1] == 32 or p[end - 1] == 9):
        end -= 1
    if end == start:
        return OPT_EMPTY
    if end - start == 5 and _name_is(p + start, b"close", 5):
        return OPT_CLOSE
    if end - start == 10 and _name_is(p + start, b"keep-alive", 10):
        return OPT_KEEP_ALIVE
    if end - start == 7 and _name_is(p + start, b"upgrade", 7):
        return OPT_UPGRADE
    return OPT_FIELD


cdef set _note_connection(MessageHead head, const char* p, Py_ssize_t start, Py_ssize_t end,
                          set listed):
    """Note the options of a Connection value, ``p[start:end]``, on ``head``;
    return ``listed`` with the field names it makes hop-by-hop added (a new
    set if it was None and there are some)."""
    cdef const char* comma
    cdef Py_ssize_t token_end
    cdef ConnectionOption option
    while start <= end:
        comma = <const char*>memchr(p + start, 44, end - start)   # ','
        token_end = end if comma == NULL else comma - p
        option = connection_option_at(p, start, token_end)
        if option == OPT_CLOSE:
            head.conn_close = True
        elif option == OPT_UPGRADE:
            head.conn_upgrade = True
        elif option == OPT_FIELD:
            # A field named in Connection is hop-by-hop too.
            if listed is None:
                listed = set()
            listed.add(PyBytes_FromStringAndSize(p + start, token_end - start).strip().lower())
        # keep-alive: llhttp reads it itself (should_keep_alive); it names
        # no field to drop.
        start = token_end + 1
    return listed


@cython.freelist(64)
cdef class MessageHead:
    def __cinit__(self):
        self.version_minor = 1
        self.content_length = -1
        self.framing = BODY_NONE

    cdef int collect(self) except -1:
        """One pass over the headers: framing, connection options and the
        end-to-end list.  Raises ValueError on framing that is ambiguous.

        PERF: the end-to-end list keeps the received pairs, and is the
        headers list itself until a field is dropped: most requests drop
        none, so they allocate nothing here.  38,500 user-space instructions
        per small request, from 40,300 (callgrind, bench_instructions.py;
        RESULTS.md 2026-11-28 16:30)."""
        cdef list headers = self.headers
        cdef list end_to_end = None    # None while it equals headers[:i]
        cdef set listed = None
        cdef tuple pair
        cdef bytes name, value
        cdef long long length
        cdef bint saw_length = False
        cdef FieldName kind
        cdef Py_ssize_t i
        for i in range(len(headers)):
            pair = headers[i]
            if len(pair) != 2:
                raise TypeError("headers must be (name, value) pairs")
            name = pair[0]
            value = pair[1]
            if name is None or value is None:
                raise TypeError("header names and values must be bytes")
            kind = field_name(name)
            if kind == F_OTHER:
                if end_to_end is not None:
                    end_to_end.append(pair)
                continue
            if kind == F_HOST:
                if self.host is not None:
                    # RFC 9112 section 3.2: more than one Host is a 400.
                    raise ValueError("more than one Host header")
                self.host = value
            elif kind == F_EXPECT:
                if value.strip().lower() == b"100-continue":
                    self.expect_continue = True
            if kind < F_CONNECTION:
                # Noted, and end-to-end all the same.
                if end_to_end is not None:
                    end_to_end.append(pair)
                continue
            # Any other kind is hop-by-hop (or framing the proxy writes
            # itself): dropped.
            if end_to_end is None:
                end_to_end = headers[:i]
            if kind == F_CONTENT_LENGTH:
                # RFC 9112 section 6.3, rule 5: differing or invalid
                # lengths make the framing unrecoverable.
                length = _parse_length(value)
                if saw_length and length != self.content_length:
                    raise ValueError("conflicting Content-Length headers")
                saw_length = True
                self.content_length = length
            elif kind == F_TRANSFER_ENCODING:
                if self.transfer_encoding is None:
                    self.transfer_encoding = value
                else:
                    self.transfer_encoding += b", " + value
            elif kind == F_CONNECTION:
                listed = _note_connection(self, PyBytes_AS_STRING(value), 0, PyBytes_GET_SIZE(value),
                                          listed)
            elif kind == F_UPGRADE:
                self.upgrade = value
        if end_to_end is None:
            end_to_end = headers
        if listed is not None:
            end_to_end = [(n, v) for n, v in end_to_end if n.lower() not in listed]
        self.end_to_end = end_to_end
        return 0

    cdef list pairs(self):
        """The end-to-end fields as (name, value) pairs, whichever way the
        head was read."""
        cdef const char* p
        cdef Py_ssize_t size, pos = 0, end, colon, vstart, vend
        cdef list pairs
        if self.kept is None:
            return self.end_to_end
        pairs = []
        p = PyBytes_AS_STRING(self.kept)
        size = PyBytes_GET_SIZE(self.kept)
        while pos < size:
            end = _line_end(p, pos, size)
            colon = <const char*>memchr(p + pos, 58, end - pos) - p
            vstart = colon + 1
            vend = end
            _trim_ows(p, &vstart, &vend)
            pairs.append((PyBytes_FromStringAndSize(p + pos, colon - pos),
                          PyBytes_FromStringAndSize(p + vstart, vend - vstart)))
            pos = end + 2
        return pairs

    def __repr__(self):
        if self.method is not None:
            return f"<MessageHead {self.method!r} {self.target!r}>"
        return f"<MessageHead {self.status} {self.reason!r}>"


cdef inline bint _is_space(unsigned char c) noexcept:
    """ASCII whitespace, as ``bytes.strip()`` removes it."""
    return c == 32 or 9 <= c <= 13


cdef inline long long _parse_length(bytes value) except -2:
    return _parse_length_at(<const unsigned char*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))


cdef long long _parse_length_at(const unsigned char* p, Py_ssize_t size) except -2:
    """A Content-Length value: ASCII digits, with whitespace around them.
    PERF: read in place; ``int()`` on a stripped copy showed in ``perf
    record`` profiles of small responses (commit 8be17ce, measured with its
    batch: 46,400 -> 40,300 instructions per small request, callgrind,
    RESULTS.md 2026-11-28 16:30)."""
    cdef Py_ssize_t start = 0, end = size, i
    cdef long long length = 0
    while start < end and _is_space(p[start]):
        start += 1
    while end > start and _is_space(p[end - 1]):
        end -= 1
    if end == start or end - start > 18:
        raise ValueError("invalid Content-Length")
    for i in range(start, end):
        if not 48 <= p[i] <= 57:   # 0-9
            raise ValueError("invalid Content-Length")
        length = length * 10 + (p[i] - 48)
    return length


cdef MessageHead new_request_head(bytes method, bytes target):
    cdef MessageHead head = MessageHead.__new__(MessageHead)
    head.method = method
    head.target = target
    head.headers = []
    return head


cdef MessageHead new_response_head(int status, bytes reason):
    cdef MessageHead head = MessageHead.__new__(MessageHead)
    head.status = status
    head.reason = reason
    return head


cdef object analyse_request(MessageHead head):
    """Set the framing of a request head; return an error to answer, or None."""
    try:
        head.collect()
    except ValueError as exc:
        return BadRequest(str(exc))
    te = head.transfer_encoding
    if te is not None:
        if head.content_length >= 0:
            # RFC 9112 section 6.1: a request with both is a smuggling
            # attempt as often as not; refuse it rather than guess.
            return BadRequest("both Content-Length and Transfer-Encoding")
        if te.rsplit(b",", 1)[-1].strip().lower() != b"chunked":
            # RFC 9112 section 6.3, rule 4: chunked must be the final coding.
            return BadRequest("Transfer-Encoding of a request must end with chunked")
        head.framing = BODY_CHUNKED
    elif head.content_length > 0:
        head.framing = BODY_LENGTH
    else:
        head.framing = BODY_NONE
    if head.version_minor >= 1 and head.host is None:
        return BadRequest("HTTP/1.1 request without a Host header")
    return None


cdef inline Py_ssize_t _line_end(const char* p, Py_ssize_t pos, Py_ssize_t size) noexcept:
    """Where the line at ``pos`` ends: the index of its CR, or -1 when no
    CRLF ends it."""
    cdef const char* lf = <const char*>memchr(p + pos, 10, size - pos)
    if lf == NULL or lf == p + pos or lf[-1] != 13:
        return -1
    return lf - p - 1


cdef inline bint _is_ows(char c) noexcept:
    return c == 32 or c == 9


cdef inline void _trim_ows(const char* p, Py_ssize_t* start, Py_ssize_t* end) noexcept:
    """Narrow ``p[start:end]`` to leave out whitespace around a field value."""
    while start[0] < end[0] and _is_ows(p[start[0]]):
        start[0] += 1
    while end[0] > start[0] and _is_ows(p[end[0] - 1]):
        end[0] -= 1


cdef enum:
    LINE_TABLE_SIZE = 32


cdef struct FieldLine:
    Py_ssize_t start    # the name's first byte
    Py_ssize_t colon
    Py_ssize_t end      # the CR of the line's CRLF
    FieldName kind


cdef object analyse_raw_response(MessageHead head, const char* p, Py_ssize_t size,
                                 bytes request_method, Py_ssize_t* head_size):
    """Set the reason, the framing and the kept field lines of a response
    head from its raw bytes: ``p[:size]`` starts with a head llhttp has
    accepted, and ``head_size`` gets its length, blank line included.
    Return an error, or None.

    PERF: a response head is the bulk of the fields the proxy
    handles, and collecting it as callbacks cost a call, two ``bytes`` and a
    tuple per field.  Here the fields are read in place, and the ones that
    go on (all but hop-by-hop and framing) are copied as they came, byte for
    byte, into ``head.kept``: 38,500 -> 32,200 user-space instructions per
    small request, and 30,200 -> 27,200 for the one scan into a line table
    (callgrind, bench_instructions.py; RESULTS.md 2026-11-28 16:30)."""
    cdef FieldLine table[LINE_TABLE_SIZE]
    cdef FieldLine* lines = table
    cdef Py_ssize_t capacity = LINE_TABLE_SIZE
    try:
        return _analyse_raw(head, p, size, request_method, head_size, &lines, &capacity)
    finally:
        if lines != table:
            PyMem_Free(lines)


cdef object _analyse_raw(MessageHead head, const char* p, Py_ssize_t size, bytes request_method,
                         Py_ssize_t* head_size, FieldLine** table, Py_ssize_t* capacity):
    cdef FieldLine* lines = table[0]
    cdef FieldLine* grown
    cdef FieldLine* line
    cdef Py_ssize_t pos, end, count = 0, i, vstart, vend, kept_size = 0
    cdef const char* found
    cdef long long length
    cdef bint saw_length = False
    cdef set listed = None
    cdef list kept_lines
    cdef bytes kept, value
    cdef char* out
    # The status line: HTTP/1.x SP 3DIGIT [SP reason].
    end = _line_end(p, 0, size)
    found = <const char*>memchr(p, 32, end) if end > 0 else NULL
    if found == NULL:
        return UpstreamProtocolError("invalid response from the upstream: malformed status line")
    pos = found - p + 4
    if pos < end and p[pos] == 32:
        pos += 1
    head.reason = PyBytes_FromStringAndSize(p + pos, end - pos) if pos < end else b""
    # The field lines, up to the blank line.
    pos = end + 2
    while True:
        end = _line_end(p, pos, size)
        if end < 0:
            return UpstreamProtocolError("invalid response from the upstream: malformed head")
        if end == pos:
            break
        if _is_ows(p[pos]):
            # RFC 9112 section 5.2: a proxy rejects obs-fold or rewrites it.
            return UpstreamProtocolError("invalid response from the upstream: obsolete line folding")
        found = <const char*>memchr(p + pos, 58, end - pos)   # ':'
        if found == NULL:
            return UpstreamProtocolError("invalid response from the upstream: a field line without a colon")
        if count == capacity[0]:
            # More lines than the caller's table holds: grow it on the heap
            # (the caller frees what it finds in ``table`` then).
            grown = <FieldLine*>PyMem_Malloc(2 * count * sizeof(FieldLine))
            if grown == NULL:
                raise MemoryError()
            memcpy(grown, lines, count * sizeof(FieldLine))
            if capacity[0] > LINE_TABLE_SIZE:
                PyMem_Free(lines)
            lines = table[0] = grown
            capacity[0] = 2 * count
        line = &lines[count]
        line.start = pos
        line.colon = found - p
        line.end = end
        line.kind = field_name_at(p + pos, line.colon - pos)
        count += 1
        pos = end + 2
    head_size[0] = pos + 2
    # Framing and connection options.
    for i in range(count):
        line = &lines[i]
        if line.kind < F_CONNECTION:
            kept_size += line.end + 2 - line.start
            continue
        vstart = line.colon + 1
        vend = line.end
        _trim_ows(p, &vstart, &vend)
        if line.kind == F_CONTENT_LENGTH:
            # RFC 9112 section 6.3, rule 5.
            try:
                length = _parse_length_at(<const unsigned char*>p + vstart, vend - vstart)
            except ValueError as exc:
                return UpstreamProtocolError(str(exc))
            if saw_length and length != head.content_length:
                return UpstreamProtocolError("conflicting Content-Length headers")
            saw_length = True
            head.content_length = length
        elif line.kind == F_TRANSFER_ENCODING:
            value = PyBytes_FromStringAndSize(p + vstart, vend - vstart)
            if head.transfer_encoding is None:
                head.transfer_encoding = value
            else:
                head.transfer_encoding += b", " + value
        elif line.kind == F_CONNECTION:
            listed = _note_connection(head, p, vstart, vend, listed)
        elif line.kind == F_UPGRADE:
            head.upgrade = PyBytes_FromStringAndSize(p + vstart, vend - vstart)
    # The kept lines, copied as they came.
    if listed is None:
        kept = PyBytes_FromStringAndSize(NULL, kept_size)
        out = PyBytes_AS_STRING(kept)
        for i in range(count):
            line = &lines[i]
            if line.kind < F_CONNECTION:
                memcpy(out, p + line.start, line.end + 2 - line.start)
                out += line.end + 2 - line.start
    else:
        kept_lines = []
        for i in range(count):
            line = &lines[i]
            if (line.kind < F_CONNECTION and PyBytes_FromStringAndSize(
                    p + line.start, line.colon - line.start).lower() not in listed):
                kept_lines.append(PyBytes_FromStringAndSize(p + line.start, line.end + 2 - line.start))
        kept = b"".join(kept_lines)
    head.kept = kept
    head.end_to_end = None
    return response_framing(head, request_method)


cdef object response_framing(MessageHead head, bytes request_method):
    cdef int status = head.status
    # RFC 9112 section 6.3, rules 1 and 2: these never have a body,
    # whatever their framing headers say.
    if (request_method == b"HEAD" or status < 200 or status == 204
            or status == 304):
        head.framing = BODY_NONE
        return None
    te = head.transfer_encoding
    if te is not None:
        if te.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
            head.framing = BODY_CHUNKED
        else:
            head.framing = BODY_UNTIL_CLOSE
        head.content_length = -1
    elif head.content_length >= 0:
        head.framing = BODY_LENGTH
    else:
        head.framing = BODY_UNTIL_CLOSE
    return None


# RFC 9110 section 5.6.2: tchar, the characters of a token (a field name,
# a method).  Built once, at import.
cdef bint TCHAR[256]


cdef void _fill_tchar():
    cdef int c
    for c in range(256):
        TCHAR[c] = False
    for c in b"!#$%&'*+-.^_`|~0123456789":
        TCHAR[c] = True
    for c in range(ord("a"), ord("z") + 1):
        TCHAR[c] = True
        TCHAR[c - 32] = True


_fill_tchar()


cdef inline bint _is_token(bytes text) noexcept:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(text)
    cdef Py_ssize_t i, size = PyBytes_GET_SIZE(text)
    if size == 0:
        return False
    for i in range(size):
        if not TCHAR[p[i]]:
            return False
    return True


cdef object field_error(bytes name, bytes value):
    """Why ``name: value`` cannot go into a head the proxy writes, or None.

    RFC 9110 section 5.1: a field name is a token; section 5.5: a value is
    visible characters, obs-text, spaces and tabs, and CR, LF and NUL are
    never allowed in it (a proxy that let them through would let whoever
    chose the value write headers, or a whole response, of its own)."""
    cdef const unsigned char* p
    cdef Py_ssize_t i, size
    cdef unsigned char c
    if not _is_token(name):
        return "a header name is not a token"
    p = <const unsigned char*>PyBytes_AS_STRING(value)
    size = PyBytes_GET_SIZE(value)
    for i in range(size):
        c = p[i]
        if c < 32 and c != 9 or c == 127:
            return "a header value holds a control character"
    return None


cdef int add_response_field(MessageHead head, bytes name, bytes value) except -1:
    """Add ``name: value`` to a response head about to be written, unless it
    has a field of that name already (the upstream's stays: one field, never
    two).  The field is checked as a handler's are (:func:`field_error`)."""
    cdef bytes lower = name.lower()
    cdef bytes kept = head.kept
    error = field_error(name, value)
    if error is not None:
        raise ValueError(error)
    if kept is not None:
        # Field lines as they came: no whitespace before the colon (RFC 9112
        # section 5.1), so a name is found by its line start and colon.
        # PERF(selproxy): a search in the block, not a pair per field.
        kept = kept.lower()
        if kept.startswith(lower + b":") or (CRLF + lower + b":") in kept:
            return 0
        head.kept = b"".join((head.kept, name, b": ", value, CRLF))
    else:
        for n, _v in head.end_to_end:
            if n.lower() == lower:
                return 0
        # end_to_end may be the headers list itself: a new list, never in place.
        head.end_to_end = head.end_to_end + [(name, value)]
    return 0


cdef object target_error(bytes method, bytes target):
    """Why ``method target`` cannot be a request line, or None (RFC 9112
    section 3: a method is a token; a target has no whitespace or controls)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(target)
    cdef Py_ssize_t i, size = PyBytes_GET_SIZE(target)
    if not _is_token(method):
        return "the method is not a token"
    if size == 0:
        return "the request target is empty"
    for i in range(size):
        if p[i] <= 32 or p[i] == 127:
            return "the request target holds whitespace or a control character"
    return None


cdef bytes _assemble(list start, list fields, list tail):
    """``start`` pieces, a ``name: value`` line per field, ``tail`` pieces,
    and the blank line, in one bytes object.  PERF: sized first, then
    filled in place, so a head costs one allocation instead of a list, a
    tuple per field and a join; measured only together with the other
    allocation changes of RESULTS.md's 2026-11-28 13:05 entry (CPU per
    request from /proc/PID/stat, bench_passthrough.py)."""
    cdef Py_ssize_t size = 2
    cdef bytes piece, name, value
    cdef bytes out
    cdef char* p
    for piece in start:
        if piece is None:
            raise TypeError("head pieces must be bytes")
        size += PyBytes_GET_SIZE(piece)
    for name, value in fields:
        if name is None or value is None:
            raise TypeError("header names and values must be bytes")
        size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
    for piece in tail:
        if piece is None:
            raise TypeError("head pieces must be bytes")
        size += PyBytes_GET_SIZE(piece)
    out = PyBytes_FromStringAndSize(NULL, size)
    p = PyBytes_AS_STRING(out)
    for piece in start:
        p = _put(p, piece)
    for name, value in fields:
        p = _put(p, name)
        p[0] = 58   # ':'
        p[1] = 32   # ' '
        p = _put(p + 2, value)
        p[0] = 13   # CR
        p[1] = 10   # LF
        p += 2
    for piece in tail:
        p = _put(p, piece)
    p[0] = 13
    p[1] = 10
    return out


cdef Py_ssize_t _decimal(char* digits, long long value) noexcept:
    """Write ``value`` in decimal at the end of ``digits[24]``; return how
    many characters it took."""
    cdef Py_ssize_t ndigits = 0
    cdef unsigned long long rest = <unsigned long long>value
    if value < 0:
        rest = 0 - rest     # unsigned: defined even for the most negative value
    while True:
        digits[23 - ndigits] = <char>(48 + rest % 10)
        ndigits += 1
        rest //= 10
        if rest == 0:
            break
    if value < 0:
        digits[23 - ndigits] = 45   # '-'
        ndigits += 1
    return ndigits


cdef bytes _with_decimal(const char* prefix, Py_ssize_t prefix_size, long long value,
                         const char* suffix, Py_ssize_t suffix_size):
    """``prefix``, ``value`` in decimal, ``suffix``: one allocation, and no
    printf, which showed in profiles of small responses."""
    cdef char digits[24]
    cdef Py_ssize_t ndigits = _decimal(digits, value)
    cdef bytes out
    cdef char* p
    out = PyBytes_FromStringAndSize(NULL, prefix_size + ndigits + suffix_size)
    p = PyBytes_AS_STRING(out)
    memcpy(p, prefix, prefix_size)
    memcpy(p + prefix_size, digits + 24 - ndigits, ndigits)
    memcpy(p + prefix_size + ndigits, suffix, suffix_size)
    return out


cdef inline bytes _length_line(long long length):
    return _with_decimal(b"Content-Length: ", 16, length, b"\r\n", 2)


cdef inline char* _put(char* p, bytes piece) noexcept:
    cdef Py_ssize_t size = PyBytes_GET_SIZE(piece)
    memcpy(p, PyBytes_AS_STRING(piece), size)
    return p + size


cdef bytes request_head_bytes(MessageHead head, list extra):
    """The head the proxy sends upstream: always HTTP/1.1, keep-alive."""
    cdef list tail = []
    if head.framing == BODY_CHUNKED:
        tail += (b"Transfer-Encoding: ", head.transfer_encoding, CRLF)
    elif head.framing == BODY_LENGTH:
        tail.append(_length_line(head.content_length))
    elif head.content_length == 0:
        tail.append(b"Content-Length: 0\r\n")
    if head.upgrade is not None and head.conn_upgrade:
        tail += (b"Upgrade: ", head.upgrade, CRLF, b"Connection: upgrade\r\n")
    for name, value in extra:
        tail += (name, COLON_SP, value, CRLF)
    return _assemble([head.method, b" ", head.target, b" HTTP/1.1\r\n"], head.end_to_end, tail)


cdef bytes _raw_response_head_bytes(MessageHead head, bint close):
    """:func:`response_head_bytes` for a final response read raw and not
    re-chunked: sized first, then filled in place."""
    cdef char status[24]
    cdef char length[24]
    cdef Py_ssize_t status_size = _decimal(status, head.status), length_size = 0
    cdef bytes reason = head.reason or b""
    cdef bytes kept = head.kept
    cdef bytes out
    cdef char* p
    if head.content_length >= 0:
        length_size = _decimal(length, head.content_length)
    out = PyBytes_FromStringAndSize(
        NULL, 9 + status_size + 1 + PyBytes_GET_SIZE(reason) + 2 + PyBytes_GET_SIZE(kept)
        + (16 + length_size + 2 if head.content_length >= 0 else 0)
        + (19 if close else 0) + 2)
    p = PyBytes_AS_STRING(out)
    memcpy(p, b"HTTP/1.1 ", 9)
    memcpy(p + 9, status + 24 - status_size, status_size)
    p += 9 + status_size
    p[0] = 32
    p = _put(p + 1, reason)
    p[0] = 13
    p[1] = 10
    p = _put(p + 2, kept)
    if head.content_length >= 0:
        memcpy(p, b"Content-Length: ", 16)
        memcpy(p + 16, length + 24 - length_size, length_size)
        p += 16 + length_size
        p[0] = 13
        p[1] = 10
        p += 2
    if close:
        memcpy(p, b"Connection: close\r\n", 19)
        p += 19
    p[0] = 13
    p[1] = 10
    return out


cdef bytes response_head_bytes(MessageHead head, bint close, bint chunked):
    """The head the proxy sends to a client.  ``chunked`` re-frames a body the
    upstream delimited by closing; ``close`` announces the proxy will close."""
    cdef list tail
    if head.kept is not None and head.status >= 200 and head.status != 101 and not chunked:
        return _raw_response_head_bytes(head, close)
    tail = []
    if head.status == 101:
        tail += (b"Upgrade: ", head.upgrade or b"", CRLF, b"Connection: upgrade\r\n")
    elif chunked:
        te = head.transfer_encoding
        if te is None:
            tail.append(b"Transfer-Encoding: chunked\r\n")
        elif te.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
            # Other transfer codings stay applied inside the re-chunked body.
            tail += (b"Transfer-Encoding: ", te, CRLF)
        else:
            tail += (b"Transfer-Encoding: ", te, b", chunked", CRLF)
    elif head.content_length >= 0 and head.status >= 200:
        tail.append(_length_line(head.content_length))
    if close and head.status >= 200 and head.status != 101:
        tail.append(b"Connection: close\r\n")
    start = [_with_decimal(b"HTTP/1.1 ", 9, head.status, b" ", 1), head.reason or b"", CRLF]
    if head.kept is not None:
        start.append(head.kept)
        return _assemble(start, NO_FIELDS, tail)
    return _assemble(start, head.end_to_end, tail)


cdef bytes chunk_size_line(Py_ssize_t size):
    return b"%x\r\n" % size


cdef object STATUS_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}


cdef bytes answer_head_bytes(int status, list headers, long long content_length, bint close):
    """The head of a response the proxy makes itself (an error, a handler's
    answer): ``headers`` less every hop-by-hop and framing field, which are
    the proxy's to set, and less Trailer, since no trailers follow a
    Content-Length body; then Content-Length (when ``content_length`` is not
    negative) and ``Connection: close`` when ``close``."""
    cdef list fields = []
    cdef list tail = []
    cdef set listed = None
    cdef MessageHead scratch
    cdef bytes name, value
    cdef FieldName kind
    for name, value in headers:
        kind = field_name(name)
        if kind == F_CONNECTION:
            # Fields named in Connection are hop-by-hop too.
            scratch = new_response_head(status, None)
            listed = _note_connection(scratch, PyBytes_AS_STRING(value), 0, PyBytes_GET_SIZE(value),
                                      listed)
        if kind < F_CONNECTION and not (PyBytes_GET_SIZE(name) == 7 and name.lower() == b"trailer"):
            fields.append((name, value))
    if listed is not None:
        fields = [(n, v) for n, v in fields if n.lower() not in listed]
    if content_length >= 0:
        tail.append(_length_line(content_length))
    if close:
        tail.append(b"Connection: close\r\n")
    return _assemble([_with_decimal(b"HTTP/1.1 ", 9, status, b" ", 1),
                      STATUS_PHRASES.get(status, b"Unknown"), CRLF], fields, tail)


cdef bytes last_chunk_bytes(list trailers):
    """The end of a chunked body: the last chunk, the trailer fields (RFC
    9112 section 7.1.2), and the blank line."""
    if not trailers:
        return b"0\r\n\r\n"
    return _assemble([b"0\r\n"], trailers, NO_FIELDS)
