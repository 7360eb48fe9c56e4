"""What a handler returns is checked in the core before any of it is written:
a header that could end a field line, a value that is not Latin-1, a status or
body of the wrong type all end in a 500 in Elasticsearch's error shape, giving
the kind of error and not its text, and the connection goes on.  What a
handler sends upstream is checked the same way, and a 101 from the upstream to
a handler's call is a prompt 502."""
import asyncio

import pytest

from selproxy import Request, Response, Route
from support.aio import run
from support.proxy import in_process
from support.rawhttp import RawClient
from support.upstream import RecordingUpstream, echo, response

BAD_RESPONSES = {
    "crlf-in-value": lambda: Response(200, [("X-Ignored", "a\r\nSet-Cookie: forged=1")], b"ok"),
    "lf-in-value": lambda: Response(200, [("X-Ignored", "a\nSet-Cookie: forged=1")], b"ok"),
    "cr-in-value": lambda: Response(200, [("X-Ignored", "a\rSet-Cookie: forged=1")], b"ok"),
    "nul-in-value": lambda: Response(200, [("X-Ignored", "a\x00b")], b"ok"),
    "crlf-in-name": lambda: Response(200, [("Set-Cookie: forged=1\r\nX-A", "1")], b"ok"),
    "space-in-name": lambda: Response(200, [("X A", "1")], b"ok"),
    "colon-in-name": lambda: Response(200, [("X-A:", "1")], b"ok"),
    "empty-name": lambda: Response(200, [("", "1")], b"ok"),
    "not-latin-1": lambda: Response(200, [("X-Selproxy-Ignored", "selproxy.\u2603")], b"ok"),
    "bytes-name": lambda: Response(200, [(b"X-A", "1")], b"ok"),
    "not-a-pair": lambda: Response(200, [("X-A",)], b"ok"),
    "str-status": lambda: Response("200", [], b"ok"),
    "status-101": lambda: Response(101, [("Upgrade", "websocket")], b""),
    "status-1000": lambda: Response(1000, [], b"ok"),
    "int-body": lambda: Response(200, [], 5),
}


def _routes(make):
    async def handler(request: Request, upstream) -> Response:
        return make()

    async def fine(request: Request, upstream) -> Response:
        return Response(200, [("X-Fine", "yes")], b"fine")

    return [Route(("GET",), "/_bad", handler, "bad"), Route(("GET",), "/_fine", fine, "fine")]


@pytest.mark.parametrize("kind", sorted(BAD_RESPONSES))
def test_a_response_that_cannot_be_written_is_a_500_and_the_connection_goes_on(kind):
    async def main():
        async with RecordingUpstream(echo) as up:
            async with in_process(up.url, routes=_routes(BAD_RESPONSES[kind])) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(b"GET /_bad HTTP/1.1\r\nHost: a\r\n\r\n")
                head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
                body = await client.reader.readexactly(
                    int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
                after = await asyncio.wait_for(client.request("GET", "/_fine"), 5)
                client.close()
                return head, body, after, proxy.core.counters.snapshot()

    head, body, after, counters = run(main())
    assert head.startswith(b"HTTP/1.1 500 ")
    assert b"forged" not in head and b"Set-Cookie" not in head
    assert b"Content-Type: application/json\r\n" in head
    import json
    doc = json.loads(body)
    assert doc["status"] == 500
    assert doc["error"]["type"] == "selproxy_handler_exception"
    # The kind of error only: nothing the handler put in the response.
    reason = doc["error"]["reason"]
    assert reason.startswith("the handler's response cannot be sent: ")
    assert "forged" not in reason and "\u2603" not in reason and "X-A" not in reason
    assert after.status == 200 and after.body == b"fine"
    assert counters["errors"]["handler_bad_response"] == 1


def test_valid_odd_headers_still_go_out_byte_for_byte():
    # Tabs, obs-text and every tchar are allowed (RFC 9110 sections 5.1, 5.5).
    headers = [("X-Tab", "a\tb"), ("X-Obs", "caf\u00e9"), ("!#$%&'*+-.^_`|~09azAZ", "v"),
               ("X-Int", 7)]

    async def main():
        async with RecordingUpstream(echo) as up:
            routes = _routes(lambda: Response(200, headers, "b\u00f6dy"))
            async with in_process(up.url, routes=routes) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(b"GET /_bad HTTP/1.1\r\nHost: a\r\n\r\n")
                head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
                body = await client.reader.readexactly(len("b\u00f6dy".encode()))
                client.close()
                return head, body

    head, body = run(main())
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"X-Tab: a\tb\r\n" in head and b"X-Obs: caf\xe9\r\n" in head
    assert b"!#$%&'*+-.^_`|~09azAZ: v\r\n" in head and b"X-Int: 7\r\n" in head
    assert body == "b\u00f6dy".encode()


def test_hop_by_hop_headers_of_a_handler_response_are_dropped():
    headers = [("Upgrade", "websocket"), ("TE", "trailers"), ("Trailer", "X"),
               ("Proxy-Connection", "keep-alive"), ("X-Kept", "1")]

    async def main():
        async with RecordingUpstream(echo) as up:
            async with in_process(up.url, routes=_routes(lambda: Response(200, headers))) as proxy:
                client = await RawClient.connect(proxy.url)
                res = await asyncio.wait_for(client.request("GET", "/_bad"), 5)
                client.close()
                return res

    res = run(main())
    assert res.status == 200
    assert [name for name, _ in res.headers] == ["X-Kept", "Content-Length"]


def test_a_handler_error_gives_its_kind_not_its_text():
    async def leaky(request: Request, upstream) -> Response:
        raise KeyError("secret-api-key-123")

    async def main():
        async with RecordingUpstream(echo) as up:
            routes = [Route(("GET",), "/_leaky", leaky, "leaky")]
            async with in_process(up.url, routes=routes) as proxy:
                client = await RawClient.connect(proxy.url)
                res = await asyncio.wait_for(client.request("GET", "/_leaky"), 5)
                client.close()
                return res

    res = run(main())
    assert res.status == 500
    assert b"secret" not in res.body
    assert res.json()["error"]["reason"] == "the handler failed: KeyError"


def test_a_handler_that_ends_cancelled_is_answered_with_500():
    async def cancelled(request: Request, upstream) -> Response:
        raise asyncio.CancelledError()

    async def main():
        async with RecordingUpstream(echo) as up:
            routes = [Route(("GET",), "/_cancelled", cancelled, "cancelled")]
            async with in_process(up.url, routes=routes) as proxy:
                client = await RawClient.connect(proxy.url)
                res = await asyncio.wait_for(client.request("GET", "/_cancelled"), 5)
                after = await asyncio.wait_for(client.request("GET", "/plain"), 5)
                client.close()
                return res, after

    res, after = run(main())
    assert res.status == 500
    assert res.json()["error"]["type"] == "selproxy_handler_exception"
    assert after.status == 200


@pytest.mark.parametrize("method,target,headers", [
    ("GET", "/a\r\nX-Forged: 1", []),
    ("GET", "/a b", []),
    ("GET\r\n", "/a", []),
    ("GET", "/a", [("X-A", "1\r\nX-Forged: 1")]),
    ("GET", "/a", [("X-A\r\nX-Forged", "1")]),
    ("GET", "/a", [("X-A", "\u2603")]),
])
def test_a_handler_cannot_write_fields_of_its_own_into_an_upstream_request(method, target, headers):
    async def calls(request: Request, upstream) -> Response:
        res = await upstream.request(method, target, headers)
        return Response(200, [], res.body)

    async def main():
        async with RecordingUpstream(echo) as up:
            routes = [Route(("GET",), "/_calls", calls, "calls")]
            async with in_process(up.url, routes=routes) as proxy:
                client = await RawClient.connect(proxy.url)
                res = await asyncio.wait_for(client.request("GET", "/_calls"), 5)
                client.close()
                return res, up.bytes_received

    res, received = run(main())
    assert res.status == 500
    assert res.json()["error"]["reason"] in ("the handler failed: ValueError",
                                             "the handler failed: UnicodeEncodeError")
    assert received == 0


def test_a_101_to_a_handler_call_is_a_prompt_502_and_the_connection_is_dropped():
    switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"

    def respond(req):
        if req.target == "/inner":
            return [switching, "stall"]
        return response(200, b"ok")

    async def calls(request: Request, upstream) -> Response:
        res = await upstream.request("GET", "/inner", [])
        return Response(200, [], res.body)

    async def main():
        async with RecordingUpstream(respond) as up:
            routes = [Route(("GET",), "/_calls", calls, "calls")]
            async with in_process(up.url, routes=routes) as proxy:
                client = await RawClient.connect(proxy.url)
                started = asyncio.get_running_loop().time()
                res = await asyncio.wait_for(client.request("GET", "/_calls"), 5)
                elapsed = asyncio.get_running_loop().time() - started
                for _ in range(200):
                    if up.open_connections == 0:
                        break
                    await asyncio.sleep(0.01)
                # The next request goes over a new upstream connection.
                after = await asyncio.wait_for(client.request("GET", "/plain"), 5)
                client.close()
                return res, elapsed, up, after

    res, elapsed, up, after = run(main())
    assert res.status == 502
    assert res.header("content-type") == "application/json"
    assert res.json()["error"]["type"] == "bad_gateway_exception"
    assert elapsed < 3
    assert after.status == 200
    assert len(up.connections) == 2 and up.connections[0].closed


@pytest.mark.parametrize("override", [
    "selproxy.x%0d%0aSet-Cookie:%20forged%3d1=1",
    "selproxy.x%0aSet-Cookie:%20forged%3d1=1",
    "selproxy.%E2%98%83=1",
])
def test_override_names_echoed_by_the_search_layer_cannot_split_or_hang_a_response(override):
    # Through the real search routes: whatever the search layer echoes, the
    # core writes no header of the client's making, and always answers.
    from selproxy.search import SearchConfig, SearchService
    from support.search_doubles import FakeEngine, ReverseRanker

    async def main():
        engine = FakeEngine({"books": [("d1", {"title": "rocket"})]})
        host, port = await engine.serve()
        service = SearchService(ReverseRanker(), SearchConfig(topn=6))
        try:
            async with in_process(f"http://{host}:{port}", routes=service.routes()) as proxy:
                client = await RawClient.connect(proxy.url)
                body = b'{"query":{"match":{"title":"rocket"}}}'
                client.send(b"POST /books/_search?" + override.encode() + b" HTTP/1.1\r\nHost: a\r\n"
                            b"Content-Type: application/json\r\nAccept-Encoding: identity\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
                client.close()
                return head
        finally:
            await engine.close()
            service.close()

    head = run(main())
    assert b"forged" not in head.lower()
    assert b"\r\nset-cookie" not in head.lower()
    assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 500 "))


FRAMING = [("Content-Length", "999"), ("Transfer-Encoding", "chunked"),
           ("Connection", "close, X-Private"), ("X-Private", "1"), ("Keep-Alive", "timeout=5"),
           ("X-Kept", "1")]


def test_the_core_alone_frames_what_a_handler_sends_and_answers():
    """Framing is the core's: whatever a handler puts of Content-Length,
    Transfer-Encoding and Connection (or the fields Connection names) into
    its upstream call or its response is dropped, and the core writes the
    real length; the connection goes on, as nothing asked to close it."""
    async def relay(request: Request, upstream) -> Response:
        res = await upstream.request("POST", "/up", FRAMING, b"hello")
        return Response(200, FRAMING, res.body + b"!")

    async def main():
        async with RecordingUpstream(echo) as up:
            routes = [Route(("GET",), "/_relay", relay, "relay")]
            async with in_process(up.url, routes=routes) as proxy:
                client = await RawClient.connect(proxy.url)
                first = await asyncio.wait_for(client.request("GET", "/_relay"), 5)
                second = await asyncio.wait_for(client.request("GET", "/_relay"), 5)
                client.close()
                return first, second, up.requests

    first, second, sent = run(main())
    for res in (first, second):
        assert res.status == 200
        assert res.headers == [("X-Kept", "1"), ("Content-Length", str(len(res.body)))]
    assert first.body == second.body == b"hello!"
    assert len(sent) == 2
    for req in sent:
        names = [name.lower() for name, _ in req.headers]
        assert req.body == b"hello" and req.header("content-length") == "5"
        assert names.count("content-length") == 1
        assert not {"transfer-encoding", "connection", "keep-alive", "x-private"} & set(names)
        assert req.header("x-kept") == "1"
