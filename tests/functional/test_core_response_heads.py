"""Response heads, which the core reads in place from its read buffer: heads
cut anywhere by the ends of reads, several heads in one read, the fields
going on byte for byte, and the upstreams whose heads it refuses."""
import asyncio
import contextlib
import hashlib
import random

import pytest
from support.aio import run
from support.proxy import in_process
from support.rawhttp import RawClient
from support.upstream import RecordingUpstream

BODY = b'{"took":3,"hits":{"hits":[]}}'
HEAD = (b"HTTP/1.1 200 OK\r\nServer: up\r\nX-Spaced:   a  b \t\r\nx-lower:tight\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY))


@contextlib.asynccontextmanager
async def proxied(respond):
    async with RecordingUpstream(respond) as up:
        async with in_process(up.url, shutdown_grace=1.0) as proxy:
            client = await RawClient.connect(proxy.url)
            try:
                yield up, client
            finally:
                client.close()


def pieces(data: bytes, cuts):
    """``data`` cut at ``cuts``, each piece its own read upstream."""
    out, last = [], 0
    for cut in sorted(cuts) + [len(data)]:
        out += [data[last:cut], ("drain",), ("sleep", 0.02)]
        last = cut
    return out


def head_bytes(raw: bytes) -> bytes:
    return raw[:raw.index(b"\r\n\r\n") + 4]


@pytest.mark.parametrize("cuts", [
    [1], [20], [len(HEAD) - 3], [len(HEAD) - 2], [len(HEAD) - 1], [len(HEAD)],
    [5, 40, len(HEAD) - 2], list(range(1, len(HEAD), 7)),
], ids=lambda c: ",".join(map(str, c)) if len(c) < 5 else f"{len(c)} cuts")
def test_a_head_cut_by_reads_anywhere_arrives_whole(cuts):
    async def scenario():
        async with proxied(lambda req: pieces(HEAD + BODY, cuts)) as (_up, client):
            for _ in range(2):   # and the connection is still in step
                client.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
                res = await client.read_response()
                assert res.status == 200 and res.body == BODY
                assert res.header("X-Spaced") == "a  b" and res.header("x-lower") == "tight"

    run(scenario(), 20)


def test_response_field_lines_go_on_byte_for_byte():
    async def scenario():
        async with proxied(lambda req: HEAD + BODY) as (_up, client):
            client.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            raw = await client.reader.readuntil(b"\r\n\r\n")
            assert b"\r\nX-Spaced:   a  b \t\r\nx-lower:tight\r\n" in raw
            assert raw.startswith(b"HTTP/1.1 200 OK\r\nServer: up\r\n")

    run(scenario(), 20)


def test_interim_heads_and_the_final_one_in_one_read():
    reply = (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
             b"HTTP/1.1 103 Early Hints\r\nLink: </b.js>\r\n\r\n" + HEAD + BODY)

    async def scenario():
        async with proxied(lambda req: reply) as (_up, client):
            client.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            first = await client.reader.readuntil(b"\r\n\r\n")
            second = await client.reader.readuntil(b"\r\n\r\n")
            assert first == b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            assert second == b"HTTP/1.1 103 Early Hints\r\nLink: </b.js>\r\n\r\n"
            res = await client.read_response()
            assert res.status == 200 and res.body == BODY

    run(scenario(), 20)


def test_chunked_body_and_trailers_in_the_read_of_the_head():
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
             b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: abc\r\n\r\n")

    async def scenario():
        async with proxied(lambda req: reply) as (_up, client):
            for _ in range(3):
                res = await client.request("GET", "/c")
                assert res.status == 200 and res.body == b"hello world"
                assert res.trailers == [("X-Sum", "abc")] and res.header("X-A") == "1"

    run(scenario(), 20)


def test_a_chunked_head_cut_before_its_body():
    reply = pieces(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                   [10, 47, 50])

    async def scenario():
        async with proxied(lambda req: reply) as (_up, client):
            for _ in range(2):
                res = await client.request("GET", "/c")
                assert res.status == 200 and res.body == b"hello"

    run(scenario(), 20)


def test_a_reason_phrase_of_any_shape():
    async def scenario():
        for status_line, reason in [(b"HTTP/1.1 200\r\n", ""), (b"HTTP/1.1 404 \r\n", ""),
                                    (b"HTTP/1.0 201 Made  It\r\n", "Made  It")]:
            reply = status_line + b"Content-Length: 2\r\n\r\nok"
            async with proxied(lambda req: reply) as (_up, client):
                client.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
                raw = await client.reader.readuntil(b"\r\n\r\n")
                code = status_line.split(b" ")[1].strip()
                assert raw.split(b"\r\n")[0] == b"HTTP/1.1 " + code + b" " + reason.encode()

    run(scenario(), 30)


@pytest.mark.parametrize("reply, reason", [
    # RFC 9112 section 5.2: a proxy must not forward obs-fold as it came.
    (b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
     b"invalid response from the upstream"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1024 * 1024 + 10) + b"\r\nContent-Length: 0\r\n\r\n",
     b"larger than 1048576 bytes"),
], ids=["obs-fold", "head-over-1MiB"])
def test_response_heads_the_proxy_will_not_forward_get_502(reply, reason):
    async def scenario():
        async with proxied(lambda req: reply) as (_up, client):
            client.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            res = await client.read_response()
            assert res.status == 502 and reason in res.body

    run(scenario(), 20)


def test_bytes_after_a_response_cost_the_upstream_connection_not_the_answer():
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async def scenario():
        async with proxied(lambda req: reply) as (up, client):
            for _ in range(2):
                client.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
                res = await client.read_response()
                assert res.status == 200 and res.body == b"ok"
            # The connection that carried the extra bytes was not reused.
            assert len(up.connections) == 2

    run(scenario(), 20)


def test_a_large_response_head_under_the_limit_arrives_whole():
    value = b"v" * 300_000
    reply = b"HTTP/1.1 200 OK\r\nX-Big: " + value + b"\r\nContent-Length: 2\r\n\r\nok"

    async def scenario():
        async with proxied(lambda req: reply) as (_up, client):
            for _ in range(2):
                res = await client.request("GET", "/x")
                assert res.status == 200 and res.body == b"ok"
                assert res.header("X-Big") == value.decode()

    run(scenario(), 20)


def test_a_slow_client_gets_every_piece_in_order():
    # The core sends straight to the client's socket while the transport
    # holds nothing; once the socket is full, the rest and every later piece
    # must queue behind what the transport holds.
    rng = random.Random(3)
    parts = [rng.randbytes(rng.choice([1, 100, 5000, 65536, 200_000])) for _ in range(120)]
    reply = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    for k, part in enumerate(parts):
        reply.append(b"%x\r\n" % len(part) + part + b"\r\n")
        if k % 10 == 0:
            reply += [("drain",), ("sleep", 0.01)]
    reply.append(b"0\r\n\r\n")
    body = b"".join(parts)

    async def scenario():
        async with proxied(lambda req: reply) as (_up, client):
            client.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            await asyncio.sleep(0.5)   # let the proxy fill the socket first
            res = await client.read_response()
            assert res.status == 200 and hashlib.sha256(res.body).digest() == hashlib.sha256(body).digest()
            res = await client.request("GET", "/again")
            assert res.status == 200 and len(res.body) == len(body)

    run(scenario(), 30)
