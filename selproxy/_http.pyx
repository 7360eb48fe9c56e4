# cython: language_level=3
"""HTTP/1.1 heads: analysis for framing and safety, and serialization.

httptools reports a head as callbacks and gives no byte offsets (it does only
on upgrade), so the core cannot forward a head's bytes as they came.  It
collects the head into a :class:`MessageHead`, and this module writes it again
with the hop-by-hop headers removed and the framing headers set by the proxy.
Everything else in the head goes out byte for byte, in its original order.
"""
from selproxy.errors import BadRequest, UpstreamProtocolError

__all__ = ("MessageHead",)

cdef bytes CRLF = b"\r\n"
cdef bytes COLON_SP = b": "
cdef bytes HTTP11 = b"HTTP/1.1"

# RFC 9110 section 7.6.1: hop-by-hop fields, plus the ones named in
# Connection.  Content-Length and Transfer-Encoding are framing, which the
# proxy sets itself when it writes a head; Proxy-Connection is the
# non-standard field that RFC 9112 appendix C.2.2 tells proxies to drop.
cdef frozenset HOP_BY_HOP = frozenset([
    b"connection", b"keep-alive", b"proxy-connection", b"te",
    b"transfer-encoding", b"upgrade", b"content-length",
    b"proxy-authenticate", b"proxy-authorization",
])


cdef class MessageHead:
    def __cinit__(self):
        self.headers = []
        self.version_minor = 1
        self.content_length = -1
        self.framing = BODY_NONE

    cdef int collect(self) except -1:
        """One pass over the headers: framing, connection options and the
        end-to-end list.  Raises ValueError on framing that is ambiguous."""
        cdef list end_to_end = []
        cdef list connection_tokens = []
        cdef bytes name, value, lname
        cdef long long length
        cdef bint saw_length = False
        for name, value in self.headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"content-length":
                    # RFC 9112 section 6.3, rule 5: differing or invalid
                    # lengths make the framing unrecoverable.
                    length = _parse_length(value)
                    if saw_length and length != self.content_length:
                        raise ValueError("conflicting Content-Length headers")
                    saw_length = True
                    self.content_length = length
                elif lname == b"transfer-encoding":
                    if self.transfer_encoding is None:
                        self.transfer_encoding = value
                    else:
                        self.transfer_encoding += b", " + value
                elif lname == b"connection":
                    connection_tokens.extend(
                        t.strip().lower() for t in value.split(b","))
                elif lname == b"upgrade":
                    self.upgrade = value
                continue
            if lname == b"host":
                if self.host is not None:
                    # RFC 9112 section 3.2: more than one Host is a 400.
                    raise ValueError("more than one Host header")
                self.host = value
            elif lname == b"expect":
                if value.strip().lower() == b"100-continue":
                    self.expect_continue = True
            elif lname == b"accept-encoding":
                if b"gzip" in value.lower():
                    self.has_gzip_accept = True
            end_to_end.append((name, value))
        if connection_tokens:
            self.conn_close = b"close" in connection_tokens
            self.conn_keep_alive = b"keep-alive" in connection_tokens
            self.conn_upgrade = b"upgrade" in connection_tokens
            listed = frozenset(connection_tokens)
            listed = listed - {b"close", b"keep-alive", b"upgrade", b""}
            if listed:
                end_to_end = [(n, v) for n, v in end_to_end if n.lower() not in listed]
        self.end_to_end = end_to_end
        return 0

    def __repr__(self):
        if self.method is not None:
            return f"<MessageHead {self.method!r} {self.target!r}>"
        return f"<MessageHead {self.status} {self.reason!r}>"


cdef long long _parse_length(bytes value) except -2:
    value = value.strip()
    if not value or not value.isdigit() or len(value) > 18:
        raise ValueError("invalid Content-Length")
    return int(value)


cdef MessageHead new_request_head(bytes method, bytes target):
    cdef MessageHead head = MessageHead.__new__(MessageHead)
    head.method = method
    head.target = target
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


cdef object analyse_response(MessageHead head, bytes request_method):
    """Set the framing of a response head; return an error, or None."""
    cdef int status = head.status
    try:
        head.collect()
    except ValueError as exc:
        return UpstreamProtocolError(str(exc))
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


cdef bytes request_head_bytes(MessageHead head, list extra):
    """The head the proxy sends upstream: always HTTP/1.1, keep-alive."""
    cdef list out = [head.method, b" ", head.target, b" ", HTTP11, CRLF]
    cdef bytes name, value
    for name, value in head.end_to_end:
        out += (name, COLON_SP, value, CRLF)
    if head.framing == BODY_CHUNKED:
        out += (b"Transfer-Encoding: ", head.transfer_encoding, CRLF)
    elif head.framing == BODY_LENGTH:
        out += (b"Content-Length: ", str(head.content_length).encode(), CRLF)
    elif head.content_length == 0:
        out.append(b"Content-Length: 0\r\n")
    if head.upgrade is not None and head.conn_upgrade:
        out += (b"Upgrade: ", head.upgrade, CRLF, b"Connection: upgrade\r\n")
    for name, value in extra:
        out += (name, COLON_SP, value, CRLF)
    out.append(CRLF)
    return b"".join(out)


cdef bytes response_head_bytes(MessageHead head, bint close, bint chunked):
    """The head the proxy sends to a client.  ``chunked`` re-frames a body the
    upstream delimited by closing; ``close`` announces the proxy will close."""
    cdef list out = [HTTP11, b" ", str(head.status).encode(), b" ",
                     head.reason or b"", CRLF]
    cdef bytes name, value
    for name, value in head.end_to_end:
        out += (name, COLON_SP, value, CRLF)
    if head.status == 101:
        out += (b"Upgrade: ", head.upgrade or b"", CRLF, b"Connection: upgrade\r\n")
    elif chunked:
        te = head.transfer_encoding
        if te is None:
            out.append(b"Transfer-Encoding: chunked\r\n")
        elif te.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
            # Other transfer codings stay applied inside the re-chunked body.
            out += (b"Transfer-Encoding: ", te, CRLF)
        else:
            out += (b"Transfer-Encoding: ", te, b", chunked", CRLF)
    elif head.content_length >= 0 and head.status >= 200:
        out += (b"Content-Length: ", str(head.content_length).encode(), CRLF)
    if close and head.status >= 200 and head.status != 101:
        out.append(b"Connection: close\r\n")
    out.append(CRLF)
    return b"".join(out)


cdef bytes chunk_size_line(Py_ssize_t size):
    return b"%x\r\n" % size


def _analyse_request_for_tests(bytes method, bytes target, list headers, int version_minor=1):
    """Python entry point for unit tests: (head, error)."""
    cdef MessageHead head = new_request_head(method, target)
    head.headers = headers
    head.version_minor = version_minor
    return head, analyse_request(head)


def _request_head_for_tests(MessageHead head, list extra=[]):
    return request_head_bytes(head, extra)


def _response_head_for_tests(int status, bytes reason, list headers,
                             bytes request_method=b"GET", bint close=False):
    cdef MessageHead head = new_response_head(status, reason)
    head.headers = headers
    err = analyse_response(head, request_method)
    chunked = (head.framing == BODY_CHUNKED or
               (head.framing == BODY_UNTIL_CLOSE and not close))
    return head, err, response_head_bytes(head, close, chunked)
