# cython: language_level=3
"""Test entry points into the compiled core's C functions.

Built only in a debug build (``SELPROXY_DEBUG=1``, see setup.py), so they
never ship in a release extension; the unit tests that need them skip
without them.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from selproxy._http cimport (
    MessageHead, BODY_CHUNKED, BODY_UNTIL_CLOSE, new_request_head, new_response_head,
    analyse_request as _analyse_request, analyse_raw_response, request_head_bytes,
    response_head_bytes, response_framing, _parse_length_at, _with_decimal,
    answer_head_bytes, last_chunk_bytes,
)
from selproxy._routes cimport RouteTable

from selproxy.errors import UpstreamProtocolError


def analyse_request(bytes method, bytes target, list headers, int version_minor=1):
    """(head, error) for a request head collected from ``headers``."""
    cdef MessageHead head = new_request_head(method, target)
    head.headers = headers
    head.version_minor = version_minor
    return head, _analyse_request(head)


def parse_length(bytes value):
    return _parse_length_at(<const unsigned char*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))


def decimal_line(bytes prefix, long long value, bytes suffix):
    return _with_decimal(prefix, len(prefix), value, suffix, len(suffix))


def request_head(MessageHead head, list extra=[]):
    return request_head_bytes(head, extra)


def response_head(int status, bytes reason, list headers, bytes request_method=b"GET",
                  bint close=False):
    """(head, error, bytes out) for a response head collected from
    ``headers``: the reference the raw reading is checked against."""
    cdef MessageHead head = new_response_head(status, reason)
    head.headers = headers
    try:
        head.collect()
    except ValueError as exc:
        return head, UpstreamProtocolError(str(exc)), None
    err = response_framing(head, request_method)
    return head, err, (_out(head, close) if err is None else None)


def raw_response_head(int status, bytes raw, bytes request_method=b"GET", bint close=False):
    """As :func:`response_head`, for a head read raw."""
    cdef MessageHead head = new_response_head(status, None)
    cdef Py_ssize_t size = -1
    err = analyse_raw_response(head, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), request_method,
                               &size)
    if err is None and size != raw.find(b"\r\n\r\n") + 4:
        raise AssertionError(f"head size {size} for {raw!r}")
    return head, err, (_out(head, close) if err is None else None)


cdef bytes _out(MessageHead head, bint close):
    chunked = (head.framing == BODY_CHUNKED or
               (head.framing == BODY_UNTIL_CLOSE and not close))
    return response_head_bytes(head, close, chunked)


def answer_head(int status, list headers, long long content_length=-1, bint close=False):
    return answer_head_bytes(status, headers, content_length, close)


def last_chunk(list trailers):
    return last_chunk_bytes(trailers)


def pairs(MessageHead head):
    return head.pairs()


def match_split(RouteTable table, bytes method, bytes target):
    """The plain reference for ``RouteTable.match``: split the path, then compare."""
    if method not in table._methods:
        return None
    return table._lookup_split(method, target)
