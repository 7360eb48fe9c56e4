"""--access-log: one line per request, passthrough and claimed, as text or
JSON lines; request ids taken from the client when safe, else made, and
echoed; the trace id of a valid traceparent; no secrets in any line, error
lines included.  Real processes on loopback sockets."""
import http.client
import json
import re
import socket
import time
from typing import List
from urllib.parse import urlsplit

from support.proxy import LoggedProxy
from support.sync_http import request
from support.thread_upstream import echo_upstream

HEX32 = re.compile(r"[0-9a-f]{32}")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def lines_of(proxy: LoggedProxy, path, count: int) -> List[dict]:
    """The first ``count`` JSON access lines, once they are written."""
    deadline = time.monotonic() + 10
    while True:
        text = path.read_text() if path.exists() else ""
        found = [json.loads(line) for line in text.splitlines()]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, text
            return found
        time.sleep(0.02)


def test_json_access_lines_with_request_ids_trace_ids_and_no_secrets(tmp_path):
    log = tmp_path / "access.log"
    with echo_upstream() as up:
        with LoggedProxy(["--upstream", up.url, "--access-log", str(log), "--log-format", "json"],
                         tmp_path) as proxy:
            # No id: one is made, sent upstream and echoed.
            code, made, body = request(proxy.url, "GET", "/plain")
            assert code == 200 and HEX32.fullmatch(made["x-request-id"])
            assert json.loads(body)["headers"]["X-Request-Id"] == made["x-request-id"]
            # A safe id from the client is kept.
            _, kept, body = request(proxy.url, "GET", "/given", headers={"X-Request-Id": "client-7.a:b"})
            assert kept["x-request-id"] == "client-7.a:b"
            assert json.loads(body)["headers"]["X-Request-Id"] == "client-7.a:b"
            # An unsafe one (spaces, quotes, too long) is replaced, upstream too.
            replaced = []
            for bad in ('a b', 'x"}\\', "z" * 129):
                _, echoed, body = request(proxy.url, "GET", "/bad", headers={"X-Request-Id": bad})
                assert HEX32.fullmatch(echoed["x-request-id"]), echoed
                assert json.loads(body)["headers"]["X-Request-Id"] == echoed["x-request-id"]
                replaced.append(echoed["x-request-id"])
            # A trace id from a valid traceparent; none from a bad one.
            request(proxy.url, "GET", "/traced", headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
            request(proxy.url, "GET", "/untraced", headers={"traceparent": f"ff-{TRACE}-00f067aa0ba902b7-01"})
            # Credentials in the query and in headers stay out of the line.
            request(proxy.url, "GET", "/q?api_key=abc123secret&q=wings&token=tok456",
                    headers={"Authorization": "Bearer sekrit-bearer-789", "X-Api-Key": "hdr-key-000"})
            # An upstream that sets X-Request-Id keeps its own: one field, not two.
            parts = urlsplit(proxy.url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
            conn.request("GET", "/echo-id", headers={"X-Request-Id": "mine"})
            res = conn.getresponse()
            res.read()
            conn.close()
            assert [v for k, v in res.getheaders() if k.lower() == "x-request-id"] == ["upstream-mine"]
            # A claimed route (the status page) has its line too, and its id.
            code, claimed, page = request(proxy.url, "GET", "/_selproxy/status")
            assert code == 200 and HEX32.fullmatch(claimed["x-request-id"])
            found = lines_of(proxy, log, 10)
    plain, given, *bad, traced, untraced, secret, upstream_id, status = found
    for line in found:
        assert set(line) == {"time", "client", "method", "target", "route", "status", "bytes",
                             "duration_s", "upstream_s", "queue_s", "rank_s", "rerank",
                             "request_id", "trace_id"}
        assert line["client"] == "127.0.0.1" and line["method"] == "GET" and line["status"] == 200
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        assert line["duration_s"] >= 0
    assert plain["target"] == "/plain" and plain["route"] == "passthrough"
    assert plain["request_id"] == made["x-request-id"]
    assert plain["bytes"] > 0 and 0 <= plain["upstream_s"] <= plain["duration_s"]
    assert plain["queue_s"] is None and plain["rank_s"] is None and plain["rerank"] is None
    assert given["request_id"] == "client-7.a:b"
    assert [line["request_id"] for line in bad] == replaced
    assert traced["trace_id"] == TRACE and untraced["trace_id"] is None
    assert plain["trace_id"] is None
    assert secret["target"] == "/q?api_key=***&q=wings&token=***"
    assert upstream_id["request_id"] == "mine"
    assert status["route"] == "status" and status["bytes"] == len(page)
    assert status["request_id"] == claimed["x-request-id"] and status["upstream_s"] is None
    text = log.read_text()
    for secret_text in ("abc123secret", "tok456", "sekrit-bearer-789", "hdr-key-000"):
        assert secret_text not in text


def test_a_reranked_search_logs_its_outcome_and_durations(tmp_path):
    log = tmp_path / "access.log"
    with echo_upstream() as up:
        with LoggedProxy(["--upstream", up.url, "--access-log", str(log), "--log-format", "json",
                          "--ranker", "identity"], tmp_path, passthrough_only=False) as proxy:
            code, headers, _ = request(proxy.url, "POST", "/books/_search",
                                       json.dumps({"query": {"match": {"body": "book"}}}).encode(),
                                       {"Content-Type": "application/json"})
            assert code == 200 and headers["x-selproxy-rerank"] == "applied"
            line, = lines_of(proxy, log, 1)
    assert line["route"] == "search" and line["method"] == "POST"
    assert line["rerank"] == "applied" and line["request_id"] == headers["x-request-id"]
    for key in ("upstream_s", "queue_s", "rank_s"):
        assert isinstance(line[key], float) and 0 <= line[key] <= line["duration_s"], line


def test_the_query_string_is_left_out_on_request(tmp_path):
    log = tmp_path / "access.log"
    with echo_upstream() as up:
        with LoggedProxy(["--upstream", up.url, "--access-log", str(log), "--log-format", "json",
                          "--access-log-redact-query"], tmp_path) as proxy:
            request(proxy.url, "GET", "/books/_doc/1?routing=user-42&pretty")
            request(proxy.url, "GET", "/no-query")
            first, second = lines_of(proxy, log, 2)
    assert first["target"] == "/books/_doc/1?***" and second["target"] == "/no-query"
    assert "user-42" not in log.read_text()


def test_text_access_lines_on_standard_output(tmp_path):
    with echo_upstream() as up:
        with LoggedProxy(["--upstream", up.url, "--access-log"], tmp_path) as proxy:
            _, headers, body = request(proxy.url, "GET", "/t?a=1", headers={"X-Request-Id": "abc"})
            line = proxy.wait_for(r".*\"GET /t\?a=1\".*", stream="out").group(0)
    assert re.fullmatch(r'127\.0\.0\.1 "GET /t\?a=1" 200 %d \d+\.\dms upstream=\d+\.\dms request_id=abc'
                        % len(body), line), line
    assert headers["x-request-id"] == "abc"


def test_json_error_lines_carry_no_secrets(tmp_path):
    # An upstream that refuses connections: a warning at start, and a 502
    # whose warning quotes the request target.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with LoggedProxy(["--upstream", f"http://127.0.0.1:{port}", "--log-format", "json"],
                     tmp_path) as proxy:
        code, _, _ = request(proxy.url, "GET", "/idx/_doc/1?token=tok-secret-1&x=1")
        assert code == 502
        proxy.wait_for(r"-> 502")
        err = proxy.log
    docs = [json.loads(line) for line in err.splitlines()]
    assert {doc["level"] for doc in docs} >= {"info", "warning"}
    for doc in docs:
        assert {"time", "level", "logger", "message", "pid"} <= set(doc)
    warning = next(doc for doc in docs if "-> 502" in doc["message"])
    assert warning["level"] == "warning" and warning["logger"] == "selproxy"
    assert "token=***" in warning["message"] and "tok-secret-1" not in err
    assert any("is not reachable" in doc["message"] for doc in docs)
