"""Bodies and headers through the proxy core, over real loopback sockets.

Every byte of a body arrives unchanged whatever its size and framing, in both
directions; close-delimited responses are re-framed for the client's version;
headers keep their bytes and order, and only the hop-by-hop ones are dropped
(RFC 9110 section 7.6.1).
"""
import asyncio
import contextlib
import functools
import hashlib
import random

import pytest
from support.aio import run
from support.proxy import in_process
from support.rawhttp import RawClient
from support.upstream import RecordingUpstream, chunked, echo, response

MiB = 1024 * 1024
SIZES = [1, 1000, 65537, MiB]
# Headers the proxy may add or rewrite on its own hop (framing, connection
# management); every other header line must arrive byte for byte.
HOP_OWN = {"connection", "keep-alive", "transfer-encoding"}


@functools.lru_cache(maxsize=8)
def random_body(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_chunks(body: bytes, seed: int, largest: int = 128 * 1024):
    """The body cut at random points, so chunk sizes vary from 1 byte up."""
    rng = random.Random(seed)
    parts, pos = [], 0
    while pos < len(body):
        step = rng.choice((1, 7, 4096, 65536, largest))
        parts.append(body[pos:pos + step])
        pos += step
    return parts


def chunked_request(target: str, parts, trailers=(), headers=()) -> bytes:
    head = f"POST {target} HTTP/1.1\r\nHost: test\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    head += "Transfer-Encoding: chunked\r\n\r\n"
    out = [head.encode()]
    for part in parts:
        out.append(b"%x\r\n%s\r\n" % (len(part), part))
    out.append(b"0\r\n")
    out.extend(f"{k}: {v}\r\n".encode() for k, v in trailers)
    out.append(b"\r\n")
    return b"".join(out)


def digest_reply(request):
    """Answer with the body's size and hash rather than the body itself."""
    return response(200, b"", [("X-Body-Sha256", sha(request.body)),
                               ("X-Body-Length", str(len(request.body)))])


@contextlib.asynccontextmanager
async def proxied(respond, **options):
    async with RecordingUpstream(respond) as up:
        options.setdefault("shutdown_grace", 1.0)
        async with in_process(up.url, **options) as proxy:
            client = await RawClient.connect(proxy.url)
            try:
                yield up, proxy, client
            finally:
                client.close()


def head_lines(raw: bytes):
    return raw[:raw.index(b"\r\n\r\n")].split(b"\r\n")


# -- request bodies ------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES + [64 * MiB], ids=lambda n: f"{n}B")
def test_request_body_with_content_length_arrives_intact(size):
    body = random_body(size)

    async def scenario():
        async with proxied(digest_reply) as (up, _proxy, client):
            res = await client.request("POST", "/upload", body)
            assert res.status == 200
            assert res.header("X-Body-Sha256") == sha(body)
            (got,) = up.requests
            assert got.header("Content-Length") == str(size)
            assert got.header("Transfer-Encoding") is None
            assert len(got.body) == size and sha(got.body) == sha(body)

    run(scenario(), 60)


@pytest.mark.parametrize("size", SIZES + [64 * MiB], ids=lambda n: f"{n}B")
def test_chunked_request_body_arrives_intact(size):
    body = random_body(size)
    largest = MiB if size > 8 * MiB else 128 * 1024

    async def scenario():
        async with proxied(digest_reply) as (up, _proxy, client):
            client.send(chunked_request("/upload", split_chunks(body, size, largest)))
            res = await client.read_response()
            assert res.status == 200
            assert res.header("X-Body-Sha256") == sha(body)
            (got,) = up.requests
            assert got.header("Transfer-Encoding") == "chunked"
            assert got.header("Content-Length") is None
            assert sha(got.body) == sha(body)

    run(scenario(), 60)


def test_chunked_request_trailers_reach_the_upstream():
    body = random_body(5000)

    async def scenario():
        async with proxied(digest_reply) as (up, _proxy, client):
            client.send(chunked_request("/t", split_chunks(body, 3),
                                        trailers=[("X-Checksum", sha(body)), ("X-Count", "2")]))
            res = await client.read_response()
            assert res.status == 200 and res.header("X-Body-Sha256") == sha(body)
            raw = up.requests[0].raw
            tail = raw[raw.rindex(b"\r\n0\r\n") + 2:]
            assert tail == b"0\r\nX-Checksum: %s\r\nX-Count: 2\r\n\r\n" % sha(body).encode()

    run(scenario(), 20)


# -- response bodies -----------------------------------------------------------

@pytest.mark.parametrize("size", SIZES + [64 * MiB], ids=lambda n: f"{n}B")
def test_response_body_with_content_length_arrives_intact(size):
    body = random_body(size)

    async def scenario():
        def respond(req):
            return response(200, body if req.target == "/download" else b"small")

        async with proxied(respond) as (_up, _proxy, client):
            res = await client.request("GET", "/download")
            assert res.status == 200
            assert res.header("Content-Length") == str(size)
            assert not res.chunked
            assert len(res.body) == size and sha(res.body) == sha(body)
            # The connection stays usable after the body.
            again = await client.request("GET", "/again")
            assert again.body == b"small"

    run(scenario(), 60)


@pytest.mark.parametrize("size", SIZES + [64 * MiB], ids=lambda n: f"{n}B")
def test_chunked_response_body_arrives_intact(size):
    body = random_body(size)
    largest = MiB if size > 8 * MiB else 128 * 1024
    reply = chunked(split_chunks(body, size + 1, largest))

    async def scenario():
        def respond(req):
            return reply if req.target == "/download" else chunked([b"sm", b"all"])

        async with proxied(respond) as (_up, _proxy, client):
            res = await client.request("GET", "/download")
            assert res.status == 200
            assert res.chunked and res.header("Content-Length") is None
            assert len(res.body) == size and sha(res.body) == sha(body)
            again = await client.request("GET", "/again")
            assert again.body == b"small"

    run(scenario(), 60)


def test_chunked_response_trailers_reach_the_client():
    body = random_body(70000)
    reply = chunked(split_chunks(body, 9), trailers=[("X-Checksum", sha(body)),
                                                     ("Server-Timing", "db;dur=53")])

    async def scenario():
        async with proxied(lambda req: reply) as (_up, _proxy, client):
            res = await client.request("GET", "/t")
            assert res.chunked and sha(res.body) == sha(body)
            assert res.trailers == [("X-Checksum", sha(body)), ("Server-Timing", "db;dur=53")]

    run(scenario(), 20)


# -- close-delimited responses -------------------------------------------------

def close_delimited(body: bytes):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Kind: eof\r\n\r\n"
    return [head, body[:len(body) // 2], ("sleep", 0.02), body[len(body) // 2:], "close"]


@pytest.mark.parametrize("size", [1000, MiB], ids=lambda n: f"{n}B")
def test_close_delimited_response_is_rechunked_for_http11_client(size):
    body = random_body(size)

    async def scenario():
        async with proxied(lambda req: close_delimited(body)) as (up, _proxy, client):
            res = await client.request("GET", "/eof")
            assert res.status == 200 and res.header("X-Kind") == "eof"
            # The proxy cannot know the length up front: it must frame the
            # body itself so that the client sees where it ends.
            assert res.chunked, res.headers
            assert sha(res.body) == sha(body)
            # ... and the client connection stays usable.
            again = await client.request("GET", "/eof")
            assert sha(again.body) == sha(body)
            assert len(up.connections) == 2

    run(scenario(), 20)


@pytest.mark.parametrize("size", [1000, MiB], ids=lambda n: f"{n}B")
def test_close_delimited_response_reaches_http10_client_until_close(size):
    body = random_body(size)

    async def scenario():
        async with proxied(lambda req: close_delimited(body)) as (_up, _proxy, client):
            client.send(b"GET /eof HTTP/1.0\r\nHost: test\r\n\r\n")
            res = await client.read_response()
            assert res.status == 200
            assert res.header("Transfer-Encoding") is None
            # Read until the proxy closes: the whole body, nothing more.
            assert sha(res.body) == sha(body)
            assert await client.at_eof(2.0)

    run(scenario(), 20)


def test_http10_client_gets_content_length_body_and_close():
    body = random_body(3000)

    async def scenario():
        async with proxied(lambda req: response(200, body)) as (_up, _proxy, client):
            client.send(b"GET /x HTTP/1.0\r\nHost: test\r\n\r\n")
            res = await client.read_response()
            assert res.status == 200 and res.body == body
            assert await client.at_eof(2.0)

    run(scenario(), 20)


def test_chunked_response_reaches_http10_client_unchunked():
    body = random_body(70000)
    reply = chunked(split_chunks(body, 5))

    async def scenario():
        async with proxied(lambda req: reply) as (_up, _proxy, client):
            client.send(b"GET /x HTTP/1.0\r\nHost: test\r\n\r\n")
            res = await client.read_response()
            # HTTP/1.0 has no chunked coding (RFC 9112 section 7): the body is
            # delimited by the close.
            assert res.status == 200 and not res.chunked
            assert res.header("Transfer-Encoding") is None
            assert sha(res.body) == sha(body)

    run(scenario(), 20)


# -- headers ---------------------------------------------------------------------

END_TO_END_REQUEST = [
    ("Host", "search.example:9200"),
    ("User-Agent", "test/1.0 (raw; +loopback)"),
    ("x-MiXeD-CaSe", "Keep The Case"),
    ("X-Dup", "first"),
    ("Accept", "application/json, text/plain;q=0.5"),
    ("X-Dup", "second"),
    ("Authorization", "Basic dXNlcjpwYXNz"),
    ("X-Empty", ""),
    ("Cookie", "a=1; b=2"),
    ("X-Utf8-Bytes", "caf\u00e9"),
    ("Content-Type", "application/json"),
]
HOP_REQUEST = [
    ("Connection", "keep-alive, X-Drop-Me, x-also-drop"),
    ("Keep-Alive", "timeout=5, max=100"),
    ("TE", "trailers"),
    ("Upgrade", "h2c"),
    ("Proxy-Connection", "keep-alive"),
    ("X-Drop-Me", "secret-for-this-hop"),
    ("X-Also-Drop", "1"),
]


def test_request_headers_arrive_byte_exact_minus_hop_by_hop():
    body = b'{"query": {"match_all": {}}}'
    # Interleave the hop-by-hop headers with the others.
    headers = []
    for k, pair in enumerate(END_TO_END_REQUEST):
        headers.append(pair)
        if k < len(HOP_REQUEST):
            headers.append(HOP_REQUEST[k])
    target = "/idx/_search?q=a%20b&size=3&pretty"

    async def scenario():
        async with proxied(digest_reply) as (up, _proxy, client):
            head = f"POST {target} HTTP/1.1\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers)
            head += f"Content-Length: {len(body)}\r\n\r\n"
            client.send(head.encode("latin-1") + body)
            res = await client.read_response()
            assert res.status == 200
            (got,) = up.requests
            lines = head_lines(got.raw)
            assert lines[0] == f"POST {target} HTTP/1.1".encode()
            names = [line.split(b":", 1)[0].decode("latin-1").lower() for line in lines[1:]]
            for dropped in ("te", "upgrade", "proxy-connection", "x-drop-me", "x-also-drop",
                            "keep-alive"):
                assert dropped not in names, lines
            connection = got.header("Connection")
            assert connection is None or connection.lower() in ("keep-alive", "close"), connection
            kept = [line.rstrip() for line in lines[1:]
                    if line.split(b":", 1)[0].decode("latin-1").lower() not in HOP_OWN
                    and not line.lower().startswith(b"x-forwarded")
                    and not line.lower().startswith(b"forwarded")]
            expected = [f"{k}: {v}".encode("latin-1").rstrip() for k, v in END_TO_END_REQUEST]
            expected.append(f"Content-Length: {len(body)}".encode())
            assert kept == expected
            assert got.body == body

    run(scenario(), 20)


def test_response_headers_arrive_unchanged_minus_hop_by_hop():
    body = b'{"took": 1}'
    end_to_end = [
        ("Content-Type", "application/json; charset=UTF-8"),
        ("X-Elastic-Product", "Elasticsearch"),
        ("set-cookie", "a=1; Path=/"),
        ("Warning", '299 Elasticsearch-8.0 "deprecated"'),
        ("set-cookie", "b=2; Path=/"),
        ("ETag", '"abc"'),
        ("X-Empty", ""),
        ("Content-Length", str(len(body))),
    ]
    hop = [("Connection", "keep-alive, X-Hop"), ("Keep-Alive", "timeout=30"),
           ("X-Hop", "only-for-the-proxy"), ("Proxy-Connection", "keep-alive"),
           ("Upgrade", "h2c")]
    headers = [end_to_end[0], hop[0], end_to_end[1], hop[1], end_to_end[2], hop[2],
               end_to_end[3], hop[3], end_to_end[4], hop[4], *end_to_end[5:]]

    async def scenario():
        async with proxied(lambda req: response(200, body, headers)) as (_up, _proxy, client):
            res = await client.request("GET", "/")
            assert res.status == 200 and res.body == body
            names = [k.lower() for k, _ in res.headers]
            for dropped in ("x-hop", "proxy-connection", "upgrade", "keep-alive"):
                assert dropped not in names, res.headers
            assert res.header("Connection") in (None, "keep-alive", "close")
            kept = [(k, v) for k, v in res.headers if k.lower() not in HOP_OWN]
            assert kept == end_to_end
            # The connection survives the hop-by-hop headers.
            again = await client.request("GET", "/")
            assert again.body == body

    run(scenario(), 20)


def test_http10_request_without_host_gets_the_upstreams():
    async def scenario():
        async with proxied(digest_reply) as (up, _proxy, client):
            client.send(b"GET /old HTTP/1.0\r\nUser-Agent: old\r\n\r\n")
            res = await client.read_response()
            assert res.status == 200
            (got,) = up.requests
            assert got.header("Host") == up.url.split("//", 1)[1]
            assert got.header("User-Agent") == "old"

    run(scenario(), 20)


def test_response_status_line_reason_passes():
    async def scenario():
        reply = response(418, b"teapot", reason="I'm A Teapot")
        async with proxied(lambda req: reply) as (_up, _proxy, client):
            res = await client.request("GET", "/")
            assert res.status == 418 and res.body == b"teapot"
            assert res.reason == "I'm A Teapot"

    run(scenario(), 20)


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("buffer_size", [64 * 1024, 0], ids=["buffered", "streamed"])
def test_a_body_in_many_tiny_reads_arrives_intact(framing, buffer_size):
    # Queued tiny pieces are merged into one buffer (an object per read would
    # cost many times the body's size): the bytes and their order survive.
    body = bytes(range(256)) * 6

    async def main():
        def respond(req):
            return [("sleep", 0.3), echo(req)]

        async with RecordingUpstream(respond) as up:
            async with in_process(up.url, request_buffer_size=buffer_size) as proxy:
                client = await RawClient.connect(proxy.url)
                # A first request keeps the upstream busy, so the second's
                # body is queued behind it whatever the buffering.
                client.send(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
                head = b"POST /tiny HTTP/1.1\r\nHost: a\r\n"
                head += (b"Content-Length: %d\r\n\r\n" % len(body) if framing == "length"
                         else b"Transfer-Encoding: chunked\r\n\r\n")
                client.send(head)
                for i in range(len(body)):
                    piece = body[i:i + 1]
                    client.send(piece if framing == "length" else b"1\r\n" + piece + b"\r\n")
                    await client.drain()
                    await asyncio.sleep(0)
                if framing == "chunked":
                    client.send(b"0\r\n\r\n")
                first = await asyncio.wait_for(client.read_response(), 10)
                second = await asyncio.wait_for(client.read_response("POST"), 10)
                client.close()
                return first, second, up.requests

    first, second, seen = run(main())
    assert first.status == 200 and second.status == 200
    assert second.body == body
    assert seen[1].body == body
