"""Head analysis and serialization, without sockets.

The C functions are reached through ``selproxy._probes``, which only a debug
build (``SELPROXY_DEBUG=1``) has: ``.ci/run`` runs this file on one.
"""
import pytest

from selproxy import _http  # noqa: F401  (the module under test must import)

_probes = pytest.importorskip("selproxy._probes", reason="a debug build's test entry points")


def analyse(headers, method=b"POST", target=b"/", version_minor=1):
    return _probes.analyse_request(method, target, headers, version_minor)


def test_hop_by_hop_headers_are_dropped_and_the_rest_keep_their_order():
    head, err = analyse([
        (b"Host", b"es"), (b"Connection", b"keep-alive, X-Private"), (b"X-Private", b"1"),
        (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"), (b"Proxy-Connection", b"x"),
        (b"Proxy-Authorization", b"Basic eA=="), (b"Upgrade", b"h2c"),
        (b"Content-Type", b"application/json"), (b"x-CASE", b"Kept As Sent"),
        (b"Content-Length", b"2"),
    ])
    assert err is None
    assert head.end_to_end == [(b"Host", b"es"), (b"Content-Type", b"application/json"),
                               (b"x-CASE", b"Kept As Sent")]
    out = _probes.request_head(head)
    assert out == (b"POST / HTTP/1.1\r\nHost: es\r\nContent-Type: application/json\r\n"
                   b"x-CASE: Kept As Sent\r\nContent-Length: 2\r\n\r\n")


def test_chunked_request_keeps_its_transfer_coding():
    head, err = analyse([(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")])
    assert err is None and head.framing == 2
    assert _probes.request_head(head) == b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("headers, reason", [
    ([(b"Host", b"h"), (b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")], "both"),
    ([(b"Host", b"h"), (b"Content-Length", b"3"), (b"Content-Length", b"4")], "conflicting"),
    ([(b"Host", b"h"), (b"Content-Length", b"3x")], "invalid"),
    ([(b"Host", b"h"), (b"Transfer-Encoding", b"gzip")], "chunked"),
    ([(b"Host", b"a"), (b"Host", b"b")], "Host"),
    ([(b"X", b"y")], "Host"),
])
def test_ambiguous_framing_is_an_error(headers, reason):
    _head, err = analyse(headers)
    assert err is not None and err.status == 400
    assert reason in err.reason


def test_identical_repeated_content_length_is_accepted():
    head, err = analyse([(b"Host", b"h"), (b"Content-Length", b"3"), (b"Content-Length", b"3")])
    assert err is None and head.content_length == 3


def test_http10_request_without_host_is_accepted():
    _head, err = analyse([], method=b"GET", version_minor=0)
    assert err is None


def test_expect_100_continue_is_noted_in_any_case():
    head, _ = analyse([(b"Host", b"h"), (b"Expect", b"100-Continue"), (b"Accept-Encoding", b"GZIP, br")])
    assert head.expect_continue
    head, _ = analyse([(b"Host", b"h"), (b"Expect", b"something-else")])
    assert not head.expect_continue


@pytest.mark.parametrize("status, method, framing", [
    (204, b"GET", 0), (304, b"GET", 0), (200, b"HEAD", 0), (100, b"GET", 0),
])
def test_responses_that_never_have_a_body(status, method, framing):
    head, err, _out = _probes.response_head(status, b"X", [(b"Content-Length", b"10")], method)
    assert err is None and head.framing == framing


def test_close_delimited_response_is_rechunked_for_a_keep_alive_client():
    head, err, out = _probes.response_head(200, b"OK", [(b"Server", b"up")])
    assert head.framing == 3
    assert out == b"HTTP/1.1 200 OK\r\nServer: up\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_response_head_keeps_reason_and_length_and_can_announce_close():
    _head, _err, out = _probes.response_head(
        404, b"Not Here", [(b"Content-Length", b"5"), (b"Connection", b"keep-alive")], close=True)
    assert out == b"HTTP/1.1 404 Not Here\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"


def test_response_with_other_transfer_codings_keeps_them():
    _head, _err, out = _probes.response_head(
        200, b"OK", [(b"Transfer-Encoding", b"gzip, chunked")])
    assert out == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"


@pytest.mark.parametrize("name", [
    b"CONNECTION", b"Keep-ALIVE", b"proxy-Connection", b"tE", b"Proxy-Authenticate", b"PROXY-AUTHORIZATION",
    b"UPGRADE",
])
def test_hop_by_hop_names_match_in_any_case(name):
    head, err = analyse([(b"Host", b"h"), (name, b"x"), (b"X-Kept", b"1")], method=b"GET")
    assert err is None
    assert head.end_to_end == [(b"Host", b"h"), (b"X-Kept", b"1")]


@pytest.mark.parametrize("name", [
    # Same size as a field the proxy acts on, one byte off; or a prefix of one.
    b"connectiom", b"keep_alive", b"content-lengtx", b"tf", b"hosts", b"hos",
    b"proxy-connectio", b"transfer-encodinx", b"upgradd", b"Content-Length ", b"\xc3\xa9xpect",
])
def test_near_miss_names_are_end_to_end(name):
    head, err = analyse([(b"Host", b"h"), (name, b"v")], method=b"GET")
    assert err is None
    assert head.end_to_end == [(b"Host", b"h"), (name, b"v")]


def test_head_serialization_matches_a_plain_reference():
    # The serializer is sized first and filled in place: check it against a
    # plain join over many shapes of head.
    import random
    rng = random.Random(7)
    names = [b"Host", b"X-A", b"Content-Type", b"ETag", b"x" * 300, b"Accept-Encoding", b"Expect"]
    for _ in range(300):
        fields = [(rng.choice(names), bytes(rng.randrange(33, 127) for _ in range(rng.randrange(0, 40))))
                  for _ in range(rng.randrange(0, 12))]
        fields = [(n, v) for n, v in fields if n != b"Host"] + [(b"Host", b"h")]
        length = rng.choice([0, 1, 2 ** 31 + 5, 10 ** 17])
        head, err = analyse(fields + [(b"Content-Length", str(length).encode())])
        assert err is None
        expected = b"POST / HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in head.end_to_end)
        expected += b"Content-Length: %d\r\n" % length if length else b"Content-Length: 0\r\n"
        assert _probes.request_head(head) == expected + b"\r\n"


def test_large_content_length_survives_serialization():
    length = 64 * 2 ** 30
    _head, err, out = _probes.response_head(200, b"OK", [(b"Content-Length", str(length).encode())])
    assert err is None
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length


def test_connection_options_in_any_case_with_whitespace_and_empty_members():
    head, err = analyse([(b"Host", b"h"), (b"Connection", b" ,\tClose ,, X-Drop"), (b"Connection", b"UPGRADE"),
                         (b"x-drop", b"1"), (b"X-Keep", b"2")], method=b"GET")
    assert err is None
    assert head.conn_close and head.conn_upgrade
    assert head.end_to_end == [(b"Host", b"h"), (b"X-Keep", b"2")]


def _reference_length(value):
    value = value.strip()
    if not value or not value.isdigit() or len(value) > 18:
        raise ValueError("invalid Content-Length")
    return int(value)


@pytest.mark.parametrize("value", [
    b"0", b"7", b"000", b"0012", b" 42 ", b"\t42\t", b"1" * 18, b"9" * 18, b"1" * 19, b"", b"  ",
    b"-1", b"+1", b"1 2", b"0x10", b"12a", b"\xd9\xa1", b"\x0b5\x0c", b"1_000", b"\xff",
])
def test_content_length_values_parse_as_a_plain_reference_does(value):
    try:
        expected = _reference_length(value)
    except ValueError:
        with pytest.raises(ValueError):
            _probes.parse_length(value)
    else:
        assert _probes.parse_length(value) == expected


@pytest.mark.parametrize("value", [0, 1, 9, 10, 99, 100, 200, 404, 999, 1000, 12345, -1, -200,
                                   2 ** 31, 2 ** 63 - 1, -2 ** 63])
def test_decimal_lines_match_printf(value):
    assert _probes.decimal_line(b"Content-Length: ", value, b"\r\n") == \
        b"Content-Length: %d\r\n" % value
    assert _probes.decimal_line(b"", value, b"") == b"%d" % value


def _raw_head(status, reason, fields):
    line = b"HTTP/1.1 %d" % status + (b" " + reason if reason is not None else b"")
    return line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"


def test_raw_response_heads_match_the_collected_ones():
    # A response head read in place must come out as the one collected
    # field by field does, for every framing and connection option.
    import random
    rng = random.Random(11)
    names = [b"Server", b"Content-Type", b"ETag", b"x" * 200, b"Connection", b"Keep-Alive",
             b"Transfer-Encoding", b"Content-Length", b"Upgrade", b"X-Drop", b"Proxy-Connection",
             b"TE", b"Trailer", b"Accept-Ranges", b"Set-Cookie"]
    values = {b"Connection": [b"close", b"keep-alive", b"X-Drop", b"Upgrade, x-drop", b" ,\tClose ,, X-Drop"],
              b"Transfer-Encoding": [b"chunked", b"gzip, chunked", b"gzip"],
              b"Content-Length": [b"0", b"17", b"17", b"123456789012"]}
    for _ in range(400):
        fields = []
        for _ in range(rng.randrange(0, 10)):
            name = rng.choice(names)
            choices = values.get(name)
            value = rng.choice(choices) if choices else bytes(
                rng.randrange(33, 127) for _ in range(rng.randrange(1, 30)))
            fields.append((name, value))
        status = rng.choice([200, 204, 304, 101, 404, 500, 103])
        reason = rng.choice([b"OK", b"Not Found", b"", None, b"Some Reason Phrase"])
        method = rng.choice([b"GET", b"HEAD"])
        close = rng.random() < 0.3
        head_c, err_c, out_c = _probes.response_head(status, reason or b"", fields, method, close)
        head_r, err_r, out_r = _probes.raw_response_head(
            status, _raw_head(status, reason, fields), method, close)
        assert (err_c is None) == (err_r is None), (fields, err_c, err_r)
        if err_c is not None:
            assert str(err_c) in str(err_r)
            continue
        assert out_r == out_c, fields
        for attr in ("framing", "content_length", "transfer_encoding", "conn_close",
                     "conn_upgrade", "upgrade"):
            assert getattr(head_r, attr) == getattr(head_c, attr), attr
        assert _probes.pairs(head_r) == head_c.end_to_end


def test_raw_response_fields_go_on_byte_for_byte():
    raw = (b"HTTP/1.1 200 OK\r\nX-A:  spaced \t\r\nx-b:tight\r\nContent-Length:  5 \r\n"
           b"Connection: keep-alive\r\n\r\n")
    head, err, out = _probes.raw_response_head(200, raw)
    assert err is None and head.content_length == 5 and head.reason == b"OK"
    assert out == b"HTTP/1.1 200 OK\r\nX-A:  spaced \t\r\nx-b:tight\r\nContent-Length: 5\r\n\r\n"
    assert _probes.pairs(head) == [(b"X-A", b"spaced"), (b"x-b", b"tight")]


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n",
    b"HTTP/1.1\r\n\r\n",
])
def test_raw_response_heads_the_proxy_cannot_read_are_errors(raw):
    _head, err, _out = _probes.raw_response_head(200, raw)
    assert err is not None and err.status == 502


@pytest.mark.parametrize("count", [31, 32, 33, 64, 65, 1000])
def test_raw_response_heads_with_many_fields(count):
    fields = [(b"X-F%d" % i, b"v%d" % i) for i in range(count)]
    fields[count // 2] = (b"Content-Length", b"3")
    fields[-1] = (b"Connection", b"keep-alive, X-F1")
    head_c, err_c, out_c = _probes.response_head(200, b"OK", fields)
    head_r, err_r, out_r = _probes.raw_response_head(200, _raw_head(200, b"OK", fields))
    assert err_c is None and err_r is None
    assert out_r == out_c and head_r.content_length == 3
    assert b"X-F1:" not in out_r and b"X-F2: v2\r\n" in out_r


def test_a_head_the_proxy_makes_has_only_its_own_framing():
    fields = [(b"Content-Length", b"999"), (b"Transfer-Encoding", b"chunked"), (b"Trailer", b"X"),
              (b"Connection", b"keep-alive, X-Private"), (b"x-private", b"1"), (b"TE", b"trailers"),
              (b"Keep-Alive", b"1"), (b"Upgrade", b"h2c"), (b"Proxy-Connection", b"x"),
              (b"Content-Type", b"text/plain"), (b"X-Kept", b"a b")]
    assert _probes.answer_head(200, fields, 3) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Kept: a b\r\nContent-Length: 3\r\n\r\n")
    assert _probes.answer_head(204, fields[-2:], -1, True) == (
        b"HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\nX-Kept: a b\r\n"
        b"Connection: close\r\n\r\n")
    assert _probes.answer_head(599, [], 0) == b"HTTP/1.1 599 Unknown\r\nContent-Length: 0\r\n\r\n"


def test_the_end_of_a_chunked_body_carries_its_trailers():
    assert _probes.last_chunk(None) == _probes.last_chunk([]) == b"0\r\n\r\n"
    assert _probes.last_chunk([(b"X-Sum", b"1"), (b"x-b", b"")]) == b"0\r\nX-Sum: 1\r\nx-b: \r\n\r\n"
