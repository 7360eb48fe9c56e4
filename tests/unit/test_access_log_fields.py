"""The access log's checks of what clients send, with no sockets: request
ids, traceparent (W3C Trace Context section 3.2) and target redaction."""
import json
import logging

import pytest

from selproxy._http import MessageHead
from selproxy._logs import AccessLog, JsonFormatter, redact_target, trace_id, valid_request_id

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("value,ok", [
    (b"abc", True), (b"a" * 128, True), (b"a" * 129, False), (b"", False),
    (b"req-1.2_3:4+5/6=7@x", True), (b"a b", False), (b"a\tb", False), (b'a"b', False),
    (b"a\\b", False), (b"caf\xc3\xa9", False), (b"a\nb", False), (b"a,b", False), (b"<script>", False),
])
def test_request_ids_are_bounded_safe_characters(value, ok):
    assert valid_request_id(value) is ok


@pytest.mark.parametrize("value,expected", [
    (f"00-{TRACE}-00f067aa0ba902b7-01".encode(), TRACE),
    (f" 00-{TRACE}-00f067aa0ba902b7-00 ".encode(), TRACE),
    # A later version may add fields after the flags.
    (f"01-{TRACE}-00f067aa0ba902b7-01-more".encode(), TRACE),
    (f"00-{TRACE}-00f067aa0ba902b7-01-more".encode(), None),
    (f"ff-{TRACE}-00f067aa0ba902b7-01".encode(), None),
    (f"00-{'0' * 32}-00f067aa0ba902b7-01".encode(), None),
    (f"00-{TRACE}-{'0' * 16}-01".encode(), None),
    (f"00-{TRACE.upper()}-00f067aa0ba902b7-01".encode(), None),
    (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01".encode(), None),
    (b"garbage", None), (None, None),
])
def test_trace_ids_only_from_a_valid_traceparent(value, expected):
    assert trace_id(value) == expected


@pytest.mark.parametrize("target,drop,shown", [
    ("/i/_search?q=wings&api_key=k1&x-access-key=k2", False, "/i/_search?q=wings&api_key=***&x-access-key=***"),
    ("/i/_search?token=t&password=p&sig=s&auth=a", False, "/i/_search?token=***&password=***&sig=***&auth=***"),
    ("/i/_search?q=wings", True, "/i/_search?***"),
    ("/plain", True, "/plain"),
    ("http://user:pw@host:9200/i?pretty", False, "http://***@host:9200/i?pretty"),
])
def test_targets_lose_their_credentials(target, drop, shown):
    assert redact_target(target, drop) == shown


def _head(headers):
    # As analyse_request leaves a head with no hop-by-hop field: end_to_end
    # is the received headers list itself (which must never change).
    head = MessageHead()
    head.method, head.target = b"GET", b"/x"
    head.headers = [(b"Host", b"h")] + headers
    head.end_to_end = head.headers
    return head


def _fields(head):
    return [(n, v) for n, v in head.end_to_end if n != b"Host"]


def test_a_bad_or_repeated_request_id_is_replaced_in_the_head_sent_upstream():
    access = AccessLog(logging.getLogger("test.access"))
    kept = _head([(b"X-Request-Id", b"good-1"), (b"Accept", b"*/*")])
    assert access.take_request_id(kept) == b"good-1"
    assert _fields(kept) == [(b"X-Request-Id", b"good-1"), (b"Accept", b"*/*")]
    for headers in ([(b"x-request-id", b"a b")], [(b"X-Request-Id", b"one"), (b"X-Request-Id", b"two")], []):
        head = _head(headers + [(b"Accept", b"*/*")])
        received = list(head.headers)
        made = access.take_request_id(head)
        assert len(made) == 32 and valid_request_id(made)
        assert head.headers == received
        assert _fields(head) == [(b"Accept", b"*/*"), (b"X-Request-Id", made)]


def test_json_error_lines_are_one_redacted_object():
    record = logging.LogRecord("selproxy", logging.WARNING, __file__, 1,
                               "GET %s -> 502 upstream\nfailed", ("/x?api_key=k-secret-9",), None)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["level"] == "warning" and doc["logger"] == "selproxy"
    assert doc["message"] == "GET /x?api_key=*** -> 502 upstream failed"
    assert "k-secret-9" not in json.dumps(doc)


def test_a_hostile_target_redacts_in_linear_time():
    # 8 KiB (the default --max-request-line) of parameter starts with no "=":
    # the redaction once backtracked over them for 15 s, holding the loop.
    import time

    from selproxy._logs import redact_target

    for query in ("?token" * 1300, "?tok" * 2000, "token" * 1600):
        started = time.perf_counter()
        assert redact_target("/x?" + query, False) == "/x?" + query   # no "=": nothing to redact
        assert time.perf_counter() - started < 1.0
    assert redact_target("/x?a=1&api_key=s3cret#f", False) == "/x?a=1&api_key=***#f"
