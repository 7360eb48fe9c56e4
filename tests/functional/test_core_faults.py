"""Timeouts and upstream faults: each gets its status and an Elasticsearch-shaped
JSON error, or a cut connection once a response has begun."""
import asyncio
import socket

from support.aio import run
from support.proxy import in_process
from support.rawhttp import RawClient
from support.upstream import RecordingUpstream, response


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _es_error(res, status, es_type):
    assert res.status == status
    assert res.header("content-type") == "application/json"
    doc = res.json()
    assert doc["status"] == status
    assert doc["error"]["type"] == es_type
    assert doc["error"]["root_cause"][0]["type"] == es_type
    assert doc["error"]["reason"]


def _one_request(respond, target="/", **options):
    """One GET through a proxy in front of an upstream answering ``respond``."""
    async def main():
        async with RecordingUpstream(respond) as up:
            async with in_process(up.url, **options) as proxy:
                client = await RawClient.connect(proxy.url)
                res = await client.request("GET", target)
                client.close()
                return res
    return run(main())


def test_refused_upstream_gives_502_and_the_connection_stays_usable():
    async def main():
        port = _free_port()
        async with in_process(f"http://127.0.0.1:{port}") as proxy:
            client = await RawClient.connect(proxy.url)
            first = await client.request("GET", "/")
            second = await client.request("GET", "/_selproxy/status")
            client.close()
            return first, second, proxy.core.counters.snapshot()

    first, second, counters = run(main())
    _es_error(first, 502, "bad_gateway_exception")
    assert second.status == 200
    assert counters["errors"]["upstream_connect_failed"] == 1


def test_upstream_that_never_completes_its_connection_times_out_with_504():
    # A connection that never comes up, deterministically on loopback: an
    # https upstream whose TLS handshake never starts.  The TCP connect is
    # accepted at once, and the handshake is part of connecting (the proxy
    # has no connection to send on until it is done), so connect_timeout is
    # the only thing that can end the wait.
    async def main():
        accepted = []

        class Silent(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.append(transport)

        loop = asyncio.get_running_loop()
        server = await loop.create_server(Silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with in_process(f"https://127.0.0.1:{port}", connect_timeout=0.5,
                                  response_timeout=30) as proxy:
                client = await RawClient.connect(proxy.url)
                started = loop.time()
                res = await client.request("GET", "/")
                elapsed = loop.time() - started
                client.close()
                return res, elapsed, len(accepted), proxy.core.counters.snapshot()
        finally:
            server.close()
            for transport in accepted:
                transport.close()

    res, elapsed, accepted, counters = run(main())
    _es_error(res, 504, "gateway_timeout_exception")
    assert "connecting to the upstream took longer than 0.5s" in res.json()["error"]["reason"]
    assert accepted == 1
    assert counters["errors"] == {"upstream_connect_timeout": 1}
    # Not before the timeout; the upper bound only catches a wait that
    # something else ended (response_timeout is 30 s here).
    assert 0.45 <= elapsed < 20


def test_upstream_that_never_answers_gives_504():
    res = _one_request(lambda req: ["stall"], "/slow", response_timeout=0.3)
    _es_error(res, 504, "gateway_timeout_exception")


def test_upstream_that_stalls_mid_body_cuts_the_client():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10

    async def main():
        async with RecordingUpstream(lambda req: [head, "stall"]) as up:
            async with in_process(up.url, response_timeout=0.3) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                data = await asyncio.wait_for(client.reader.read(), 5)
                client.close()
                return data

    data = run(main())
    head_part, blank, body = data.partition(b"\r\n\r\n")
    assert blank and head_part.startswith(b"HTTP/1.1 200 OK\r\n")
    lengths = [line for line in head_part.split(b"\r\n")[1:] if line.lower().startswith(b"content-length:")]
    # The head promised 100 bytes, exactly 10 came, then the close (read()
    # returned at EOF): the client sees the response is incomplete.
    assert lengths == [b"Content-Length: 100"]
    assert body == b"x" * 10


def test_upstream_dying_mid_response_closes_the_client():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000

    async def main():
        async with RecordingUpstream(lambda req: [head, ("sleep", 0.05), "close"]) as up:
            async with in_process(up.url) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                try:
                    await client.read_response()
                except asyncio.IncompleteReadError as exc:
                    return len(exc.partial)
                finally:
                    client.close()
                return None

    assert run(main()) == 1000


def test_upstream_reset_before_answering_gives_502():
    _es_error(_one_request(lambda req: ["reset"]), 502, "bad_gateway_exception")


def test_chunked_response_cut_short_is_not_made_complete():
    partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"

    async def main():
        async with RecordingUpstream(lambda req: [partial, ("sleep", 0.05), "close"]) as up:
            async with in_process(up.url) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                data = await asyncio.wait_for(client.reader.read(), 5)
                client.close()
                return data

    data = run(main())
    assert b"hello" in data
    assert not data.endswith(b"0\r\n\r\n")


def test_invalid_upstream_response_gives_502():
    res = _one_request(lambda req: [b"HTTP/1.1 abc nonsense\r\n\r\n"])
    _es_error(res, 502, "bad_gateway_exception")


def test_pooled_connection_closed_by_upstream_while_idle_is_retried():
    # The upstream closes each connection right after answering, without
    # saying so: the next request lands on a dead pooled connection.
    async def main():
        async with RecordingUpstream(lambda req: [response(200, b"ok"), ("sleep", 0.05), "close"]) as up:
            async with in_process(up.url) as proxy:
                client = await RawClient.connect(proxy.url)
                first = await client.request("GET", "/a")
                await asyncio.sleep(0.2)
                second = await client.request("GET", "/b")
                client.close()
                return first, second, len(up.connections)

    first, second, conns = run(main())
    assert first.status == second.status == 200
    assert conns == 2


def test_slowloris_head_gets_408_and_close():
    async def main():
        async with RecordingUpstream() as up:
            async with in_process(up.url, header_timeout=0.4) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
                started = asyncio.get_running_loop().time()
                for _ in range(20):
                    client.send(b"X-Slow: 1\r\n")
                    await asyncio.sleep(0.05)
                    if client.reader.at_eof() or client.reader._buffer:  # noqa: SLF001
                        break
                res = await client.read_response()
                elapsed = asyncio.get_running_loop().time() - started
                closed = await client.at_eof()
                client.close()
                return res, elapsed, closed, up.requests

    res, elapsed, closed, seen = run(main())
    assert res.status == 408
    assert closed and seen == []
    assert elapsed < 2.0


def test_idle_keep_alive_client_is_closed_after_idle_timeout():
    async def main():
        async with RecordingUpstream() as up:
            async with in_process(up.url, idle_timeout=0.3) as proxy:
                client = await RawClient.connect(proxy.url)
                res = await client.request("GET", "/")
                started = asyncio.get_running_loop().time()
                closed = await client.at_eof(timeout=3)
                elapsed = asyncio.get_running_loop().time() - started
                client.close()
                return res, closed, elapsed

    res, closed, elapsed = run(main())
    assert res.status == 200
    assert closed and 0.2 < elapsed < 2.0


def test_client_disconnect_mid_request_releases_the_upstream():
    async def main():
        async with RecordingUpstream(lambda req: ["stall"]) as up:
            async with in_process(up.url) as proxy:
                client = await RawClient.connect(proxy.url)
                # Past request_buffer_size, so the request is on its way upstream.
                client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n"
                            + b"x" * 100_000)
                await client.drain()
                for _ in range(200):
                    if up.bytes_received:
                        break
                    await asyncio.sleep(0.01)
                assert up.bytes_received, "the request never reached the upstream"
                client.writer.transport.abort()
                for _ in range(200):
                    if up.open_connections == 0 and proxy.core.counters.client_connections == 0:
                        break
                    await asyncio.sleep(0.01)
                return up.open_connections, proxy.core.counters.snapshot()

    open_upstream, counters = run(main())
    assert open_upstream == 0
    assert counters["client_connections"] == 0
    assert counters["upstream_connections"] == 0


def test_client_that_stops_sending_its_body_is_cut_after_body_timeout():
    # Buffered first (a small body) or already streaming upstream: either
    # way a 408, a close, and no upstream connection left behind.
    async def main(buffer_size):
        async with RecordingUpstream(lambda req: ["stall"]) as up:
            async with in_process(up.url, body_timeout=0.3,
                                  request_buffer_size=buffer_size) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
                res = await asyncio.wait_for(client.read_response("POST"), 5)
                closed = await client.at_eof(timeout=3)
                for _ in range(100):
                    if up.open_connections == 0:
                        break
                    await asyncio.sleep(0.01)
                client.close()
                return res, closed, up, proxy.core.counters.snapshot()

    for buffer_size in (64 * 1024, 0):
        res, closed, up, counters = run(main(buffer_size))
        _es_error(res, 408, "request_timeout_exception")
        assert res.header("connection") == "close"
        assert closed
        assert up.open_connections == 0
        # Buffered, nothing reached the upstream; streamed, the head did.
        assert len(up.connections) == (0 if buffer_size else 1)
        assert counters["errors"]["body_timeout"] == 1
