"""The hook for claimed requests: routes match in the core, the request is
buffered whole, a Python handler answers in order, and can call the upstream
through the core's pool."""
import asyncio
import json

import pytest

from selproxy import BodyTooLarge, Request, Response, Route
from support.aio import run
from support.proxy import in_process
from support.rawhttp import RawClient
from support.upstream import RecordingUpstream, echo


async def _echo_handler(request: Request, upstream) -> Response:
    doc = {"method": request.method, "target": request.target, "params": request.params,
           "body": request.body.decode(), "headers": request.headers}
    return Response(200, [("Content-Type", "application/json")], json.dumps(doc).encode())


async def _via_upstream(request: Request, upstream) -> Response:
    first = await upstream.request("POST", "/inner/one", [("Content-Type", "text/plain")], b"abc")
    second = await upstream.request("GET", "/inner/two", [])
    body = first.body + b"|" + second.body + b"|" + (first.header("x-target") or "").encode()
    return Response(201, [("X-Handler", "yes")], body)


async def _raises(request: Request, upstream) -> Response:
    raise RuntimeError("boom")


async def _slow(request: Request, upstream) -> Response:
    await asyncio.sleep(0.2)
    return Response(200, [], b"slow")


ROUTES = [
    Route(("GET", "POST"), "/{index}/_echo", _echo_handler, "echo"),
    Route(("POST",), "/_via", _via_upstream, "via"),
    Route(("GET",), "/_raises", _raises, "raises"),
    Route(("GET",), "/_slow", _slow, "slow"),
]


def _with_proxy(body, **options):
    async def main():
        async with RecordingUpstream(echo) as up:
            async with in_process(up.url, routes=ROUTES, **options) as proxy:
                return await body(proxy, up)
    return run(main())


def test_claimed_request_reaches_its_handler_whole_with_params():
    async def body(proxy, up):
        client = await RawClient.connect(proxy.url)
        client.send(b"POST /books/_echo?x=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                    b"Connection: keep-alive\r\nX-Trace: t1\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        res = await client.read_response()
        client.close()
        return res, up.requests

    res, seen = _with_proxy(body)
    doc = res.json()
    assert doc["method"] == "POST" and doc["target"] == "/books/_echo?x=1"
    assert doc["params"] == {"index": "books"} and doc["body"] == "abcde"
    names = [name.lower() for name, _ in doc["headers"]]
    assert "x-trace" in names and "transfer-encoding" not in names and "connection" not in names
    assert seen == []


def test_routes_match_only_their_methods_and_shape():
    async def body(proxy, up):
        client = await RawClient.connect(proxy.url)
        put = await client.request("PUT", "/books/_echo", b"x")
        deeper = await client.request("GET", "/a/b/_echo")
        client.close()
        return put, deeper, [r.target for r in up.requests]

    put, deeper, targets = _with_proxy(body)
    assert put.header("x-target") == "/books/_echo"
    assert deeper.header("x-target") == "/a/b/_echo"
    assert targets == ["/books/_echo", "/a/b/_echo"]


def test_handler_calls_the_upstream_through_the_pool():
    async def body(proxy, up):
        client = await RawClient.connect(proxy.url)
        results = [await client.request("POST", "/_via", b"") for _ in range(3)]
        client.close()
        return results, up.requests, len(up.connections)

    results, seen, conns = _with_proxy(body)
    assert all(r.status == 201 and r.body == b"abc||/inner/one" for r in results)
    assert seen[0].raw.startswith(b"POST /inner/one HTTP/1.1\r\n")
    assert b"Content-Length: 3\r\n" in seen[0].raw
    assert conns == 1


def test_handler_that_raises_gives_500_json_and_the_connection_stays_usable():
    async def body(proxy, up):
        client = await RawClient.connect(proxy.url)
        failed = await client.request("GET", "/_raises")
        after = await client.request("GET", "/after")
        client.close()
        return failed, after, proxy.core.counters.snapshot()

    failed, after, counters = _with_proxy(body)
    assert failed.status == 500
    assert failed.json()["error"]["type"] == "selproxy_handler_exception"
    # The kind of error, not its text (which may hold internal details).
    assert failed.json()["error"]["reason"] == "the handler failed: RuntimeError"
    assert failed.header("connection") is None
    assert after.status == 200
    assert counters["errors"]["handler_error"] == 1


def test_pipelined_claimed_and_passthrough_answers_keep_their_order():
    async def body(proxy, up):
        client = await RawClient.connect(proxy.url)
        client.send(b"GET /_slow HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"GET /i/_echo HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"GET /fast2 HTTP/1.1\r\nHost: a\r\n\r\n")
        out = [await client.read_response() for _ in range(4)]
        client.close()
        return out

    out = _with_proxy(body)
    assert out[0].body == b"slow"
    assert out[1].header("x-target") == "/fast"
    assert out[2].json()["target"] == "/i/_echo"
    assert out[3].header("x-target") == "/fast2"


def test_claimed_body_over_the_limit_gets_413_without_reading_it():
    async def body(proxy, up):
        client = await RawClient.connect(proxy.url)
        client.send(b"POST /i/_echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n"
                    b"Expect: 100-continue\r\n\r\n")
        res = await client.read_response()
        closed = await client.at_eof()
        client.close()
        return res, closed

    res, closed = _with_proxy(body, max_buffered_body=1000)
    assert res.status == 413
    assert res.json()["error"]["type"] == BodyTooLarge.es_type
    assert closed


def test_chunked_claimed_body_over_the_limit_gets_413():
    async def body(proxy, up):
        client = await RawClient.connect(proxy.url)
        client.send(b"POST /i/_echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(4):
            client.send(b"400\r\n" + b"x" * 1024 + b"\r\n")
        client.send(b"0\r\n\r\n")
        res = await client.read_response()
        client.close()
        return res

    assert _with_proxy(body, max_buffered_body=3000).status == 413


def test_expect_100_continue_on_a_claimed_route():
    async def body(proxy, up):
        client = await RawClient.connect(proxy.url)
        client.send(b"POST /i/_echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                    b"Expect: 100-continue\r\n\r\n")
        interim = await client.read_response()
        client.send(b"xyz")
        final = await client.read_response()
        client.close()
        return interim, final

    interim, final = _with_proxy(body)
    assert interim.status == 100
    assert final.status == 200 and final.json()["body"] == "xyz"


def test_status_endpoint_reports_counters_and_config_without_secrets():
    async def body(proxy, up):
        client = await RawClient.connect(proxy.url)
        await client.request("GET", "/passthrough")
        await client.request("GET", "/i/_echo")
        res = await client.request("GET", "/_selproxy/status")
        client.close()
        return res

    doc = _with_proxy(body).json()
    assert doc["name"] == "selproxy" and doc["version"]
    assert doc["uptime_seconds"] >= 0
    assert doc["proxy"]["requests_passed"] == 1
    assert doc["proxy"]["requests_claimed"] == 2  # the echo, then this status request
    assert doc["proxy"]["client_connections"] == 1
    assert doc["config"]["upstream"].startswith("http://127.0.0.1:")


@pytest.mark.parametrize("method", ["HEAD"])
def test_head_on_a_claimed_route_has_length_but_no_body(method):
    async def handler(request, upstream):
        return Response(200, [], b"0123456789")

    async def main():
        async with RecordingUpstream(echo) as up:
            async with in_process(up.url, routes=[Route(("HEAD",), "/h", handler)]) as proxy:
                client = await RawClient.connect(proxy.url)
                res = await client.request(method, "/h")
                after = await client.request("GET", "/next")
                client.close()
                return res, after

    res, after = run(main())
    assert res.header("content-length") == "10" and res.body == b""
    assert after.header("x-target") == "/next"


def test_one_log_line_per_claimed_request_and_an_optional_access_log(caplog):
    import logging

    async def body(proxy, up):
        client = await RawClient.connect(proxy.url)
        await client.request("GET", "/passthrough")
        await client.request("GET", "/books/_echo")
        client.close()

    with caplog.at_level(logging.INFO, logger="selproxy"):
        _with_proxy(body, access_log=True)
    claimed = [r.getMessage() for r in caplog.records if r.name == "selproxy" and "_echo" in r.getMessage()]
    access = [r.getMessage() for r in caplog.records if r.name == "selproxy.access"]
    assert len(claimed) == 1 and "-> 200" in claimed[0]
    assert len(access) == 2
    assert "GET /passthrough" in access[0] and "GET /books/_echo" in access[1]
