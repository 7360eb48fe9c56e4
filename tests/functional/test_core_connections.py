"""Connections through the proxy core, over real loopback sockets: keep-alive
and pipelining, concurrency and the upstream-connection bound, bodiless
responses, 100-continue, the Upgrade tunnel, X-Forwarded-For, and resources
(file descriptors, memory) staying bounded."""
import asyncio
import contextlib
import gc
import hashlib
import os
import socket
import struct
import time
import tracemalloc

import pytest

from support.aio import run
from support.proxy import ProxyProcess, in_process, open_fds, rss_bytes
from support.rawhttp import RawClient
from support.upstream import RecordingUpstream, chunked, echo, response

from selproxy import Response, Route

MiB = 1024 * 1024


@contextlib.asynccontextmanager
async def proxied(respond=echo, send_continue=False, **options):
    async with RecordingUpstream(respond, send_continue=send_continue) as up:
        options.setdefault("shutdown_grace", 1.0)
        async with in_process(up.url, **options) as proxy:
            yield up, proxy


async def eventually(predicate, timeout: float = 3.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def hard_close(client: RawClient) -> None:
    """Disconnect with a reset, which no peer can take for a half-close."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


def request_bytes(method: str, target: str, body: bytes = b"", headers=()) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: test\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    if body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode("latin-1") + b"\r\n" + body


# -- keep-alive and pipelining -------------------------------------------------

async def send_after_continue(client: RawClient, target: str, body: bytes):
    """POST with ``Expect: 100-continue``: the body goes only after the 100."""
    client.send(f"POST {target} HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode())
    interim = await asyncio.wait_for(client.read_response(), 3)
    assert interim.status == 100
    client.send(body)
    return await client.read_response()


def test_keep_alive_client_reuses_one_upstream_connection():
    async def scenario():
        async with proxied() as (up, proxy):
            client = await RawClient.connect(proxy.url)
            for k in range(100):
                body = b"body-%d" % k * (k % 7)
                method = "POST" if body else "GET"
                res = await client.request(method, f"/doc/{k}", body)
                assert res.status == 200
                assert res.header("X-Target") == f"/doc/{k}" and res.body == body
            client.close()
            assert len(up.requests) == 100
            assert len(up.connections) == 1

    run(scenario(), 30)


def test_stale_pooled_upstream_connection_is_retried_for_a_bodiless_request():
    """An upstream may close an idle keep-alive connection just as the proxy
    reuses it; a request without a body is then sent again on a new one."""
    answered = set()

    def respond(request):
        if request.connection == 0 and 0 in answered:
            return ["close"]          # as if its idle timer had just fired
        answered.add(request.connection)
        return echo(request)

    async def scenario():
        async with proxied(respond) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            assert (await client.request("GET", "/first")).status == 200
            res = await client.request("GET", "/second")
            assert res.status == 200 and res.header("X-Target") == "/second"
            client.close()
            assert len(up.connections) == 2

    run(scenario(), 20)


def test_upstream_closing_after_a_response_does_not_break_the_client():
    def respond(request):
        return [response(200, b"last words", [("Connection", "close")]), "close"]

    async def scenario():
        async with proxied(respond) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            for k in range(3):
                res = await client.request("GET", f"/bye/{k}")
                assert res.status == 200 and res.body == b"last words"
                # The upstream's Connection: close is about its own hop.
                assert res.header("Connection") in (None, "keep-alive")
            client.close()
            assert len(up.connections) == 3

    run(scenario(), 20)


def pipelined_reply(request):
    k = int(request.target.rsplit("/", 1)[1])
    body = hashlib.sha256(request.body).hexdigest().encode() * (1 + k % 5 * 300)
    tag = [("X-Seq", str(k))]
    if request.method == "HEAD":
        return response(200, b"", tag + [("Content-Length", str(len(body)))])
    if k % 3 == 0:
        return chunked([body[:10], body[10:]], headers=tag)
    if k % 3 == 1:
        # A slow answer must not let a later one overtake it.
        return [("sleep", 0.01), response(200, body, tag)]
    return response(200, body, tag)


def test_pipelined_requests_are_answered_in_order():
    count = 30
    wire, expected = [], []
    for k in range(count):
        body = os.urandom(k * 911)
        kind = k % 5
        if kind == 0:
            wire.append(request_bytes("GET", f"/p/{k}"))
            expected.append(("GET", b""))
        elif kind == 1:
            wire.append(request_bytes("POST", f"/p/{k}", body))
            expected.append(("POST", body))
        elif kind == 2:
            parts = [body[:100], body[100:]] if body[100:] else [body]
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p)
            wire.append(f"PUT /p/{k} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked"
                        "\r\n\r\n".encode() + chunks + b"0\r\n\r\n")
            expected.append(("PUT", body))
        elif kind == 3:
            wire.append(request_bytes("HEAD", f"/p/{k}"))
            expected.append(("HEAD", b""))
        else:
            # A claimed request between passthrough ones keeps its place.
            wire.append(request_bytes("GET", "/_selproxy/status"))
            expected.append(("STATUS", b""))

    async def scenario():
        async with proxied(pipelined_reply) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(b"".join(wire))
            for k, (method, body) in enumerate(expected):
                res = await client.read_response("HEAD" if method == "HEAD" else "GET")
                assert res.status == 200, (k, res)
                if method == "STATUS":
                    assert res.json()["name"] == "selproxy"
                    continue
                assert res.header("X-Seq") == str(k)
                digest = hashlib.sha256(body).hexdigest().encode()
                if method == "HEAD":
                    assert res.body == b""
                else:
                    assert res.body == digest * (1 + k % 5 * 300)
            client.close()
            assert [r.target for r in up.requests] == [
                f"/p/{k}" for k, (m, _) in enumerate(expected) if m != "STATUS"]
            assert [r.body for r in up.requests] == [b for m, b in expected if m != "STATUS"]

    run(scenario(), 30)


def test_pipelined_large_bodies_behind_a_slow_answer():
    """Bodies queued behind an unanswered request (more than the proxy keeps
    in hand) wait their turn and then arrive whole."""
    bodies = [os.urandom(1536 * 1024) for _ in range(3)]

    def respond(request):
        digest = hashlib.sha256(request.body).hexdigest().encode()
        return [("sleep", 0.2 if request.target == "/0" else 0.0), response(200, digest)]

    async def scenario():
        async with proxied(respond) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(b"".join(request_bytes("POST", f"/{k}", body)
                                 for k, body in enumerate(bodies)))
            for body in bodies:
                res = await client.read_response()
                assert res.body == hashlib.sha256(body).hexdigest().encode()
            client.close()
            assert [r.body for r in up.requests] == bodies

    run(scenario(), 30)


def test_pipelined_requests_after_a_close_delimited_response():
    def respond(request):
        if request.target == "/eof":
            return [b"HTTP/1.1 200 OK\r\n\r\nuntil the end", "close"]
        return echo(request)

    async def scenario():
        async with proxied(respond) as (_up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(request_bytes("GET", "/eof") + request_bytes("POST", "/next", b"abc")
                        + request_bytes("GET", "/eof") + request_bytes("GET", "/last"))
            first = await client.read_response()
            assert first.body == b"until the end"
            assert (await client.read_response()).body == b"abc"
            assert (await client.read_response()).body == b"until the end"
            assert (await client.read_response()).header("X-Target") == "/last"
            client.close()

    run(scenario(), 20)


# -- concurrency -------------------------------------------------------------------

async def talk(url: str, name: int, rounds: int, size: int = 0):
    client = await RawClient.connect(url)
    try:
        for k in range(rounds):
            body = b"%d:%d:" % (name, k) + os.urandom(size or name % 50 * 10)
            res = await client.request("POST", f"/c/{name}/{k}", body)
            assert res.status == 200 and res.body == body, (name, k, res.status)
    finally:
        client.close()


def test_many_concurrent_clients_are_all_answered():
    async def scenario():
        async with proxied() as (up, proxy):
            await asyncio.gather(*(talk(proxy.url, n, 3) for n in range(200)))
            assert len(up.requests) == 600

    run(scenario(), 30)


def test_upstream_connections_stay_within_the_bound():
    def slow_echo(request):
        return [("sleep", 0.005), echo(request)]

    async def scenario():
        async with proxied(slow_echo, max_upstream_connections=4) as (up, proxy):
            await asyncio.gather(*(talk(proxy.url, n, 4) for n in range(50)))
            assert len(up.requests) == 200
            # Every connection the upstream ever accepted, not just the open ones.
            assert len(up.connections) <= 4, len(up.connections)

    run(scenario(), 30)


def test_the_gauges_follow_the_connections_they_count():
    """Open, idle and waiting are written from the worker's and the pool's
    containers where those change: they rise with the connections and fall
    back to zero once every connection has closed."""
    def slow_echo(request):
        return [("sleep", 0.1), echo(request)]

    async def scenario():
        async with proxied(slow_echo, max_upstream_connections=2,
                           max_idle_upstream_connections=4) as (up, proxy):
            counters = proxy.core.counters
            clients = [await RawClient.connect(proxy.url) for _ in range(3)]
            assert await eventually(lambda: counters.client_connections == 3), counters.snapshot()
            for client in clients:
                client.send(request_bytes("GET", "/x"))
            # Two upstream connections busy, the third request waiting for one.
            assert await eventually(lambda: counters.upstream_waiters == 1), counters.snapshot()
            assert counters.upstream_connections == 2 and counters.upstream_idle == 0
            for client in clients:
                assert (await client.read_response()).status == 200
            assert await eventually(lambda: counters.upstream_idle == 2), counters.snapshot()
            snapshot = counters.snapshot()
            assert (snapshot["client_connections"], snapshot["upstream_connections"],
                    snapshot["upstream_idle"], snapshot["upstream_waiters"]) == (3, 2, 2, 0)
            assert snapshot["upstream_waits"] == 1
            for client in clients:
                client.close()
            assert await eventually(lambda: counters.client_connections == 0), counters.snapshot()
            proxy.core.drain()      # closes the idle upstream connections
            assert await eventually(lambda: counters.upstream_connections == 0), counters.snapshot()
            assert counters.upstream_idle == 0
            assert await eventually(lambda: up.open_connections == 0)

    run(scenario(), 30)


def test_bodies_wait_whole_for_a_bounded_pool():
    """Clients queued for one of two upstream connections keep their
    (larger than buffered) bodies intact while they wait."""
    async def scenario():
        async with proxied(max_upstream_connections=2) as (up, proxy):
            await asyncio.gather(*(talk(proxy.url, n, 2, size=700_000) for n in range(12)))
            assert len(up.requests) == 24
            assert len(up.connections) <= 2

    run(scenario(), 30)


# -- responses without a body ---------------------------------------------------

def test_head_204_304_and_1xx_carry_no_body_and_keep_the_connection():
    def respond(request):
        if request.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n"
        if request.target == "/204":
            return b"HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n"
        if request.target == "/304":
            return (b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n'
                    b"Content-Length: 5000\r\n\r\n")
        if request.target == "/103":
            return [b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
                    ("sleep", 0.01),
                    b"HTTP/1.1 102 Processing\r\n\r\n",
                    response(200, b"after hints")]
        return echo(request)

    async def scenario():
        async with proxied(respond) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            for _round in range(2):
                res = await client.request("HEAD", "/head")
                assert res.status == 200 and res.header("Content-Length") == "1234"
                assert (await client.request("POST", "/after", b"x" * 10)).body == b"x" * 10

                res = await client.request("GET", "/204")
                assert res.status == 204 and res.header("X-Kind") == "204"
                assert res.header("Content-Length") is None
                assert res.header("Transfer-Encoding") is None
                assert (await client.request("POST", "/after", b"y" * 10)).body == b"y" * 10

                res = await client.request("GET", "/304",
                                           headers=[("Host", "t"), ("If-None-Match", '"v1"')])
                assert res.status == 304 and res.header("ETag") == '"v1"'
                assert res.header("Transfer-Encoding") is None
                assert (await client.request("POST", "/after", b"z" * 10)).body == b"z" * 10

                res = await client.request("GET", "/103")
                assert res.status == 103 and res.header("Link") == "</a.css>; rel=preload"
                res = await client.read_response()
                assert res.status == 102
                res = await client.read_response()
                assert res.status == 200 and res.body == b"after hints"
                assert (await client.request("POST", "/after", b"w" * 10)).body == b"w" * 10

            # Nothing stray is left on the wire.
            assert not await client.at_eof(0.2)
            assert client.reader._buffer == b""
            client.close()

    run(scenario(), 20)


def test_bodiless_responses_keep_the_upstream_connection_reusable():
    """HEAD, 204, 304 and 1xx answers must not cost a new upstream connection:
    Elasticsearch clients send ``HEAD /<index>`` for every existence check."""
    def respond(request):
        if request.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
        if request.target == "/204":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if request.target == "/304":
            return b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n'
        if request.target == "/100":
            return [b"HTTP/1.1 103 Early Hints\r\n\r\n", response(200, b"ok")]
        return echo(request)

    async def scenario():
        async with proxied(respond) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            for method, target in [("GET", "/a"), ("GET", "/204"), ("GET", "/304"),
                                   ("GET", "/100"), ("HEAD", "/index"), ("HEAD", "/index"),
                                   ("GET", "/a")]:
                res = await client.request(method, target)
                if target == "/100":
                    assert res.status == 103    # forwarded to an HTTP/1.1 client
                while res.status < 200:
                    res = await client.read_response()
                assert res.status == {"/204": 204, "/304": 304}.get(target, 200), target
                if method == "HEAD":
                    assert res.header("Content-Length") == "1234" and res.body == b""
                used = len(up.connections)
                assert used == 1, f"{method} {target}: {used} upstream connections"
            client.close()

    run(scenario(), 20)


def test_interim_responses_are_not_sent_to_an_http10_client():
    """RFC 9110 section 15.2: a proxy must not forward a 1xx response to an
    HTTP/1.0 client, which would read it as the final answer."""
    def respond(request):
        return [b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
                response(200, b"final")]

    async def scenario():
        async with proxied(respond) as (_up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(b"GET /hints HTTP/1.0\r\nHost: t\r\n\r\n")
            res = await asyncio.wait_for(client.read_response(), 3)
            assert res.status == 200 and res.body == b"final"
            client.close()

    run(scenario(), 20)


@pytest.mark.parametrize("field", [b"Connection", b"Proxy-Connection"])
def test_http10_keep_alive_client_gets_a_delimited_body(field):
    """An HTTP/1.0 client cannot read chunks: a chunked answer reaches it
    either with a length or ended by a close, never as an open connection.
    llhttp reads keep-alive from Proxy-Connection too."""
    body = os.urandom(50_000)

    async def scenario():
        async with proxied(lambda req: chunked([body[:7], body[7:]])) as (_up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(b"GET /x HTTP/1.0\r\nHost: t\r\n" + field + b": keep-alive\r\n\r\n")
            res = await asyncio.wait_for(client.read_response(), 3)
            assert res.status == 200 and not res.chunked and res.body == body
            if res.header("Content-Length") is None:
                assert await client.at_eof(1.0)
            client.close()

    run(scenario(), 20)


def test_expect_100_continue_passthrough():
    """The upstream's own 100 reaches the client, which only then sends the body
    (RFC 9110 section 10.1.1: a proxy forwards the expectation)."""
    body = os.urandom(200_000)

    async def scenario():
        async with proxied(send_continue=True) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            res = await send_after_continue(client, "/upload", body)
            assert res.status == 200 and res.body == body
            assert up.requests[0].body == body
            # The connection is still in step.
            assert (await client.request("GET", "/next")).header("X-Target") == "/next"
            client.close()

    run(scenario(), 20)


def test_expect_100_continue_on_a_claimed_route():
    """For a request it claims the proxy is the server, so it sends the 100."""
    async def reverse(request, upstream):
        return Response(200, [("Content-Type", "application/octet-stream")], request.body[::-1])

    body = os.urandom(100_000)

    async def scenario():
        routes = [Route(("POST",), "/_reverse", reverse, "reverse")]
        async with proxied(routes=routes) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            res = await send_after_continue(client, "/_reverse", body)
            assert res.status == 200 and res.body == body[::-1]
            assert (await client.request("GET", "/next")).header("X-Target") == "/next"
            client.close()
            assert [r.target for r in up.requests] == ["/next"]

    run(scenario(), 20)


# -- the Upgrade tunnel ---------------------------------------------------------

SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
          b"Upgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


def test_upgrade_becomes_a_two_way_tunnel():
    def respond(request):
        return [SWITCH, ("tunnel", lambda data: data.upper())]

    async def scenario():
        async with proxied(respond) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(b"GET /chat HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n"
                        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            res = await client.read_response()
            assert res.status == 101 and res.header("Upgrade") == "websocket"
            got = up.requests[0]
            assert got.header("Upgrade") == "websocket"
            assert "upgrade" in got.header("Connection").lower()
            # Small messages, both ways, several times.
            for word in (b"hello", b"\x81\x05world", b"GET / HTTP/1.1\r\n\r\n"):
                client.send(word)
                assert await client.reader.readexactly(len(word)) == word.upper()
            # A large one streams through.
            blob = os.urandom(4 * MiB).lower()
            client.send(blob)
            assert await client.reader.readexactly(len(blob)) == blob.upper()
            # The client closing ends the upstream side too.
            client.close()
            assert await eventually(lambda: up.open_connections == 0)

    run(scenario(), 30)


def test_tunnel_bytes_sent_before_the_101_wait_for_it():
    def respond(request):
        return [("sleep", 0.05), SWITCH, ("tunnel", lambda data: data.upper())]

    async def scenario():
        async with proxied(respond) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(b"GET /chat HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n"
                        b"Upgrade: websocket\r\n\r\nearly bytes")
            res = await client.read_response()
            assert res.status == 101
            assert await client.reader.readexactly(11) == b"EARLY BYTES"
            client.send(b"later")
            assert await client.reader.readexactly(5) == b"LATER"
            assert len(up.requests) == 1
            client.close()

    run(scenario(), 20)


async def after_declined_upgrade(client: RawClient, res) -> None:
    """A declined upgrade leaves an HTTP connection (RFC 9110 section 7.8), or
    one the proxy announces it closes; anything else is out of step."""
    if (res.header("Connection") or "").lower() == "close":
        assert await client.at_eof(2.0)
        return
    res = await client.request("POST", "/after", b"still http")
    assert res.status == 200 and res.body == b"still http"


def test_upgrade_declined_by_the_upstream():
    async def scenario():
        async with proxied() as (up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(b"GET /chat HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n"
                        b"Upgrade: websocket\r\n\r\n")
            res = await client.read_response()
            assert res.status == 200 and res.header("X-Target") == "/chat"
            await after_declined_upgrade(client, res)
            client.close()

    run(scenario(), 20)


def test_upgrade_request_with_a_body_is_forwarded_whole():
    """``curl --http2 -d ... http://...`` sends ``Upgrade: h2c`` on a POST with
    a body; an upstream without h2c answers it as plain HTTP/1.1.  The body
    belongs to the request, not to a tunnel that may never open."""
    async def scenario():
        async with proxied() as (up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(b"POST /idx/_doc HTTP/1.1\r\nHost: test\r\n"
                        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
                        b"Content-Length: 5\r\n\r\nhello")
            res = await asyncio.wait_for(client.read_response(), 3)
            assert res.status == 200 and res.body == b"hello"
            assert up.requests[0].body == b"hello"
            await after_declined_upgrade(client, res)
            client.close()

    run(scenario(), 20)


def test_upstream_closing_a_tunnel_closes_the_client():
    def respond(request):
        return [SWITCH, b"server-hello", ("sleep", 0.05), "close"]

    async def scenario():
        async with proxied(respond) as (_up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(b"GET /chat HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n"
                        b"Upgrade: websocket\r\n\r\n")
            res = await client.read_response()
            assert res.status == 101
            assert await client.reader.readexactly(12) == b"server-hello"
            assert await client.at_eof(2.0)
            client.close()

    run(scenario(), 20)


# -- X-Forwarded-For ----------------------------------------------------------------

def test_forwarded_headers_are_off_by_default():
    async def scenario():
        async with proxied() as (up, proxy):
            client = await RawClient.connect(proxy.url)
            assert (await client.request("GET", "/")).status == 200
            client.close()
            names = {k.lower() for k, _ in up.requests[0].headers}
            assert not names & {"x-forwarded-for", "x-forwarded-proto", "forwarded"}

    run(scenario(), 20)


def test_forwarded_headers_when_enabled():
    async def scenario():
        async with proxied(forwarded_headers=True) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            assert (await client.request("GET", "/a")).status == 200
            assert (await client.request("GET", "/b", headers=[
                ("Host", "t"), ("X-Forwarded-For", "10.0.0.1")])).status == 200
            client.close()
            first, second = up.requests
            assert first.header("X-Forwarded-For") == "127.0.0.1"
            assert first.header("X-Forwarded-Proto") == "http"
            assert first.header("Forwarded") == "for=127.0.0.1;proto=http"
            # An existing chain is extended, not replaced.
            chain = [hop.strip() for hop in second.header("X-Forwarded-For").split(",")]
            assert chain == ["10.0.0.1", "127.0.0.1"]
            assert sum(k.lower() == "x-forwarded-for" for k, _ in second.headers) == 1

    run(scenario(), 20)


def test_forwarded_quotes_an_ipv6_client():
    """RFC 7239 section 6: an IPv6 node is bracketed and quoted."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")

    async def scenario():
        async with proxied(forwarded_headers=True, listen="[::1]:0") as (up, proxy):
            client = await RawClient.connect(proxy.url)
            assert (await client.request("GET", "/v6")).status == 200
            client.close()
            (got,) = up.requests
            assert got.header("X-Forwarded-For") == "::1"
            assert got.header("Forwarded") == 'for="[::1]";proto=http'

    run(scenario(), 20)


def test_forwarded_for_joins_every_earlier_hop():
    """Several X-Forwarded-For lines are one comma-separated list (RFC 9110
    section 5.3): every earlier hop stays, in order."""
    async def scenario():
        async with proxied(forwarded_headers=True) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            res = await client.request("GET", "/", headers=[
                ("Host", "t"), ("X-Forwarded-For", "10.0.0.1, 10.0.0.2"),
                ("Accept", "*/*"), ("X-Forwarded-For", "10.0.0.3")])
            assert res.status == 200
            client.close()
            (got,) = up.requests
            lines = [v for k, v in got.headers if k.lower() == "x-forwarded-for"]
            chain = [hop.strip() for line in lines for hop in line.split(",")]
            assert chain == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "127.0.0.1"]

    run(scenario(), 20)


# -- resources ---------------------------------------------------------------------

def test_file_descriptors_return_to_baseline():
    def respond(request):
        if request.target.startswith("/stall"):
            return ["stall"]
        return echo(request)

    async def one(url: str, k: int):
        client = await RawClient.connect(url)
        kind = k % 5
        if kind == 0:      # keep-alive, then the client closes
            await client.request("GET", f"/ok/{k}")
        elif kind == 1:    # the client asks to close
            await client.request("GET", f"/ok/{k}", headers=[("Host", "t"), ("Connection", "close")])
            assert await client.at_eof(2.0)
        elif kind == 2:    # the client leaves halfway through its body
            client.send(b"POST /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nhalf")
            await client.drain()
            await asyncio.sleep(0.01)
            hard_close(client)
            return
        elif kind == 3:    # the client leaves while the upstream is thinking
            client.send(request_bytes("GET", f"/stall/{k}"))
            await client.drain()
            await asyncio.sleep(0.02)
            hard_close(client)
            return
        else:              # a half-close after a whole request: answered, then closed
            client.send(request_bytes("GET", f"/ok/{k}"))
            client.writer.write_eof()
            assert (await client.read_response()).status == 200
            assert await client.at_eof(2.0)
        client.close()

    async def scenario():
        async with proxied(respond, max_idle_upstream_connections=4) as (up, proxy):
            def clients():
                return proxy.core.counters.snapshot()["client_connections"]

            def fds():
                # Both ends of an upstream connection live in this process;
                # the idle pool may hold a different number of them at the end.
                return open_fds() - 2 * up.open_connections

            await asyncio.gather(*(one(proxy.url, k) for k in range(8)))
            # uvloop closes a socket one loop turn before it calls
            # connection_lost, so the fd count and the connection counter
            # settle apart: the baseline is taken, and the end checked, only
            # once both have.
            assert await eventually(lambda: clients() == 0, timeout=5.0), clients()
            await asyncio.sleep(0.1)
            baseline = fds()
            for batch in range(6):
                await asyncio.gather(*(one(proxy.url, batch * 50 + k) for k in range(50)))
            settled = await eventually(lambda: fds() <= baseline and clients() == 0, timeout=5.0)
            assert settled, (fds(), baseline, proxy.core.counters.snapshot())
            assert up.open_connections <= 4

    run(scenario(), 30)


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_rss_stays_bounded_while_a_slow_client_reads_a_large_response(framing):
    piece = os.urandom(MiB)
    total = 256 * MiB
    heads = {"length": f"Content-Length: {total}\r\n", "chunked": "Transfer-Encoding: chunked\r\n",
             "close": ""}
    if framing == "chunked":
        piece = b"%x\r\n%s\r\n" % (len(piece), piece)

    def respond(request):
        if request.target != "/large":
            return response(200, b"warm")
        out = [f"HTTP/1.1 200 OK\r\n{heads[framing]}\r\n".encode()]
        for _ in range(total // MiB):
            out += [piece, ("drain",)]
        return out

    async def scenario():
        async with RecordingUpstream(respond) as up:
            with ProxyProcess(["--upstream", up.url]) as proc:
                client = await RawClient.connect(proc.url)
                assert (await client.request("GET", "/warm")).body == b"warm"
                before = rss_bytes(proc.worker_pid)
                # A client that reads a little at a time, from a small buffer.
                host, port = proc.url.split("//", 1)[1].rsplit(":", 1)
                raw = socket.socket()
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                raw.setblocking(False)
                loop = asyncio.get_running_loop()
                await loop.sock_connect(raw, (host, int(port)))
                await loop.sock_sendall(raw, b"GET /large HTTP/1.1\r\nHost: t\r\n\r\n")
                received, peak = 0, before
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    data = await loop.sock_recv(raw, 64 * 1024)
                    assert data
                    received += len(data)
                    peak = max(peak, rss_bytes(proc.worker_pid))
                    await asyncio.sleep(0.01)
                assert received > MiB           # it did stream
                assert received < total // 2    # and the client really was slow
                assert up.bytes_received > 0
                growth = peak - before
                print(f"slow client ({framing}): {received / MiB:.1f} MiB read in 2 s; proxy RSS "
                      f"{before / MiB:.1f} -> peak {peak / MiB:.1f} MiB")
                assert growth < 64 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
                raw.close()
                client.close()
                # The abandoned response releases the upstream connection.
                assert await eventually(lambda: up.open_connections == 0, 5.0)

    run(scenario(), 40)


def test_rss_stays_bounded_while_a_slow_client_reads_a_tunnel():
    blob = os.urandom(32 * MiB)

    def respond(request):
        if request.target != "/chat":
            return response(200, b"warm")
        return [SWITCH, ("tunnel", lambda data: blob)]

    async def scenario():
        async with RecordingUpstream(respond) as up:
            with ProxyProcess(["--upstream", up.url]) as proc:
                client = await RawClient.connect(proc.url)
                assert (await client.request("GET", "/warm")).body == b"warm"
                before = rss_bytes(proc.worker_pid)
                client.send(b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
                            b"Upgrade: websocket\r\n\r\n")
                assert (await client.read_response()).status == 101
                for _ in range(4):          # 128 MiB coming back
                    client.send(b"go")
                    await asyncio.sleep(0.01)
                received, peak = 0, before
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    received += len(await client.reader.read(64 * 1024))
                    peak = max(peak, rss_bytes(proc.worker_pid))
                    await asyncio.sleep(0.01)
                growth = peak - before
                print(f"slow tunnel reader: {received / MiB:.1f} MiB in 2 s; proxy RSS "
                      f"{before / MiB:.1f} -> peak {peak / MiB:.1f} MiB")
                assert 64 * 1024 < received < 64 * MiB    # it flowed, and slowly
                assert growth < 64 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
                client.close()

    run(scenario(), 40)


def test_rss_holding_1000_idle_keep_alive_connections():
    """The issue's target: under 64 MiB while 1,000 keep-alive clients idle."""
    async def scenario():
        async with RecordingUpstream(echo) as up:
            with ProxyProcess(["--upstream", up.url]) as proc:
                clients = []
                try:
                    for batch in range(10):
                        opened = await asyncio.gather(
                            *(RawClient.connect(proc.url) for _ in range(100)))
                        clients += opened
                        answers = await asyncio.gather(
                            *(c.request("GET", "/idle") for c in opened))
                        assert all(a.status == 200 for a in answers)
                    status = await clients[0].request("GET", "/_selproxy/status")
                    assert status.json()["proxy"]["client_connections"] == 1000
                    rss = rss_bytes(proc.worker_pid)
                    print(f"1,000 idle keep-alive connections: proxy RSS {rss / MiB:.1f} MiB")
                    assert rss < 64 * MiB
                finally:
                    for client in clients:
                        client.close()

    run(scenario(), 40)


def test_rss_stays_bounded_while_the_upstream_reads_a_large_body_slowly():
    """The request direction: while the upstream does not read, the proxy
    stops reading from the client instead of buffering the body."""
    total = 64 * MiB
    piece = os.urandom(MiB)

    async def scenario():
        async with RecordingUpstream(digest_of_body) as up:
            with ProxyProcess(["--upstream", up.url]) as proc:
                client = await RawClient.connect(proc.url)
                assert (await client.request("POST", "/warm", b"w")).status == 200
                before = rss_bytes(proc.worker_pid)
                # The connection that carried /warm (the command also
                # connects once at start, to say if the upstream is down).
                conn = up.connections[up.requests[-1].connection]
                conn.transport.pause_reading()
                client.send(f"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {total}"
                            "\r\n\r\n".encode())
                for _ in range(total // MiB):
                    client.send(piece)
                peak = before
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    peak = max(peak, rss_bytes(proc.worker_pid))
                    await asyncio.sleep(0.02)
                stuck = client.writer.transport.get_write_buffer_size()
                growth = peak - before
                print(f"paused upstream: client still holds {stuck / MiB:.1f} MiB; proxy RSS "
                      f"{before / MiB:.1f} -> peak {peak / MiB:.1f} MiB")
                assert stuck > total // 2, "the proxy took the body faster than the upstream"
                assert growth < 64 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
                # Once the upstream reads again, the whole body gets through.
                conn.transport.resume_reading()
                res = await client.read_response()
                assert res.status == 200
                expected = hashlib.sha256(piece * (total // MiB)).hexdigest()
                assert res.header("X-Body-Sha256") == expected
                client.close()

    run(scenario(), 40)


def digest_of_body(request):
    return response(200, b"", [("X-Body-Sha256", hashlib.sha256(request.body).hexdigest())])


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_disconnect_mid_request_body_releases_the_upstream(how):
    """A client gone halfway through its body can never finish the request,
    whether it closed (FIN) or reset: the upstream exchange must be dropped."""
    async def scenario():
        async with proxied() as (up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n"
                        + b"a" * 300_000)
            await client.drain()
            assert await eventually(lambda: up.bytes_received > 100_000)
            assert up.open_connections == 1
            if how == "reset":
                hard_close(client)
            else:
                client.close()
            assert await eventually(lambda: up.open_connections == 0)
            assert up.requests == []
            assert await eventually(
                lambda: proxy.core.counters.snapshot()["client_connections"] == 0)

    run(scenario(), 20)


def test_client_disconnect_while_waiting_releases_the_upstream():
    async def scenario():
        async with proxied(lambda req: ["stall"]) as (up, proxy):
            client = await RawClient.connect(proxy.url)
            client.send(request_bytes("GET", "/slow"))
            await client.drain()
            assert await eventually(lambda: len(up.requests) == 1)
            hard_close(client)
            # The upstream connection cannot be reused for another answer:
            # the proxy must close it rather than keep it forever.
            assert await eventually(lambda: up.open_connections == 0)
            assert await eventually(
                lambda: proxy.core.counters.snapshot()["client_connections"] == 0)

    run(scenario(), 20)


def test_no_memory_growth_across_keep_alive_requests():
    async def batch(client, up, count: int):
        for k in range(count):
            res = await client.request("POST", "/m", b"payload-%d" % k)
            assert res.status == 200
            up.requests.clear()

    async def scenario():
        async with proxied() as (up, proxy):
            client = await RawClient.connect(proxy.url)
            await batch(client, up, 300)
            gc.collect()
            tracemalloc.start()
            try:
                await batch(client, up, 200)
                gc.collect()
                start, _ = tracemalloc.get_traced_memory()
                await batch(client, up, 2000)
                gc.collect()
                end, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            client.close()
            growth = end - start
            print(f"traced memory growth over 2,000 requests: {growth} B")
            assert growth < 100 * 1024, f"{growth} bytes more after 2,000 requests"

    run(scenario(), 40)
