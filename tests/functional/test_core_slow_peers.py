"""Slow peers cannot starve the others, and are not cut for the proxy's own
pauses.  Each hostile case asserts both sides: the slow client gets a bounded
answer, and an innocent request on another connection is served in a bound.

- A request body must come at ``min_body_rate`` over each ``body_timeout``
  window, or the client gets 408; a small body is read whole before an
  upstream connection is taken.
- Waiting for a pooled upstream connection is bounded in number (503) and in
  time (504).
- The response timeout counts only the upstream's silence while the proxy
  reads it; a client that reads nothing for ``send_timeout`` is cut.
"""
import asyncio
import socket
import struct

import pytest

from support.aio import run
from support.proxy import in_process
from support.rawhttp import RawClient
from support.upstream import RecordingUpstream, response


def _es_error(res, status, es_type):
    assert res.status == status, res
    assert res.header("content-type") == "application/json"
    doc = res.json()
    assert doc["status"] == status
    assert doc["error"]["type"] == es_type


async def _trickle(url, head, interval):
    """Send ``head``, then one body byte per ``interval`` until the proxy
    answers; return (response, seconds until it did)."""
    loop = asyncio.get_running_loop()
    client = await RawClient.connect(url)
    client.send(head)
    started = loop.time()

    async def drip():
        try:
            for _ in range(10000):
                await asyncio.sleep(interval)
                client.send(b"x")
        except ConnectionError:
            pass

    dripping = loop.create_task(drip())
    try:
        res = await asyncio.wait_for(client.read_response("POST"), 20)
    finally:
        dripping.cancel()
        client.close()
    return res, loop.time() - started


async def _timed_get(url, target="/innocent"):
    loop = asyncio.get_running_loop()
    client = await RawClient.connect(url)
    started = loop.time()
    try:
        res = await asyncio.wait_for(client.request("GET", target), 20)
    finally:
        client.close()
    return res, loop.time() - started


@pytest.mark.parametrize("length,buffer_size", [(1000, 64 * 1024), (256 * 1024, 64 * 1024),
                                                (256 * 1024, 0)],
                         ids=["small-body", "large-body", "streamed"])
def test_trickling_bodies_get_408_and_do_not_starve_other_requests(length, buffer_size):
    # More clients than upstream connections, each sending one body byte per
    # 50 ms: below 200 bytes/s over 0.5 s windows.
    head = b"POST /idx/_doc HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % length

    async def main():
        async with RecordingUpstream(lambda req: response(200, b"ok")) as up:
            async with in_process(up.url, max_upstream_connections=2, body_timeout=0.5,
                                  min_body_rate=200, upstream_queue_timeout=30,
                                  request_buffer_size=buffer_size) as proxy:
                tricklers = [asyncio.ensure_future(_trickle(proxy.url, head, 0.05))
                             for _ in range(4)]
                await asyncio.sleep(0.2)
                innocent = await _timed_get(proxy.url)
                slow = await asyncio.gather(*tricklers)
                return innocent, slow

    (innocent, innocent_time), slow = run(main())
    assert innocent.status == 200 and innocent.body == b"ok"
    for res, elapsed in slow:
        _es_error(res, 408, "request_timeout_exception")
        assert res.header("connection") == "close"
        assert elapsed < 5
    if buffer_size:
        # Read before an upstream connection is taken (whole, or its first
        # request_buffer_size bytes): none is held by a trickle.
        assert innocent_time < 2
    else:
        # Streamed from the first byte, each holds a connection until the
        # rate rule cuts it.
        assert innocent_time < 5


def test_a_body_at_a_fair_pace_is_not_cut():
    # 40 bytes per 50 ms is 800 bytes/s, over the 200 required.
    async def main():
        async with RecordingUpstream() as up:
            async with in_process(up.url, body_timeout=0.3, min_body_rate=200) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 1200\r\n\r\n")
                for _ in range(30):
                    await asyncio.sleep(0.05)
                    client.send(b"y" * 40)
                res = await asyncio.wait_for(client.read_response("POST"), 5)
                client.close()
                return res

    res = run(main())
    assert res.status == 200 and res.body == b"y" * 1200


def test_waiting_for_an_upstream_connection_is_bounded_in_number_and_time():
    def respond(req):
        if req.target == "/stall":
            return ["stall"]
        return response(200, b"ok")

    async def main():
        async with RecordingUpstream(respond) as up:
            async with in_process(up.url, max_upstream_connections=1, max_upstream_waiters=1,
                                  upstream_queue_timeout=0.5, response_timeout=30,
                                  shutdown_grace=0.5) as proxy:
                holder = await RawClient.connect(proxy.url)
                holder.send(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
                for _ in range(200):
                    if up.requests:
                        break
                    await asyncio.sleep(0.01)
                waiter = asyncio.ensure_future(_timed_get(proxy.url, "/waits"))
                for _ in range(200):
                    if proxy.core.counters.upstream_waiters == 1:
                        break
                    await asyncio.sleep(0.01)
                full = await _timed_get(proxy.url, "/queue-full")
                timed_out = await waiter
                waiting_after = proxy.core.counters.upstream_waiters
                holder.close()
                return full, timed_out, waiting_after, proxy.core.counters.snapshot()

    (full, full_time), (timed_out, waited), waiting_after, counters = run(main())
    _es_error(full, 503, "es_rejected_execution_exception")
    assert full.header("retry-after") == "1"
    assert full_time < 2
    _es_error(timed_out, 504, "gateway_timeout_exception")
    assert 0.4 <= waited < 5
    assert waiting_after == 0
    assert counters["errors"]["upstream_queue_full"] == 1
    assert counters["errors"]["upstream_queue_timeout"] == 1


def test_a_waiter_that_leaves_frees_its_place():
    def respond(req):
        if req.target == "/stall":
            return ["stall"]
        return response(200, b"ok")

    async def main():
        async with RecordingUpstream(respond) as up:
            async with in_process(up.url, max_upstream_connections=1, max_upstream_waiters=1,
                                  upstream_queue_timeout=30, response_timeout=30,
                                  shutdown_grace=0.5) as proxy:
                holder = await RawClient.connect(proxy.url)
                holder.send(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
                for _ in range(200):
                    if up.requests:
                        break
                    await asyncio.sleep(0.01)
                leaver = await RawClient.connect(proxy.url)
                leaver.send(b"GET /leaves HTTP/1.1\r\nHost: a\r\n\r\n")
                for _ in range(200):
                    if proxy.core.counters.upstream_waiters == 1:
                        break
                    await asyncio.sleep(0.01)
                # A reset: a FIN alone would be a half-close, still owed its answer.
                sock = leaver.writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                leaver.writer.transport.abort()
                for _ in range(200):
                    if proxy.core.counters.upstream_waiters == 0:
                        break
                    await asyncio.sleep(0.01)
                left = proxy.core.counters.upstream_waiters
                # Its place is free: the next one waits instead of a 503, and
                # is served once the holder goes.
                after = asyncio.ensure_future(_timed_get(proxy.url, "/after"))
                for _ in range(200):
                    if proxy.core.counters.upstream_waiters == 1 or after.done():
                        break
                    await asyncio.sleep(0.01)
                sock = holder.writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                holder.writer.transport.abort()
                return left, await after

    left, (after, _elapsed) = run(main())
    assert left == 0
    assert after.status == 200 and after.body == b"ok"


async def _raw_socket(url):
    """A plain non-blocking socket: the test decides when it is read, so a
    slow reader is really slow (a StreamReader would read ahead)."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return sock


BIG = 24 * 1024 * 1024


def test_a_slow_reader_is_not_cut_by_the_response_timeout():
    async def main():
        loop = asyncio.get_running_loop()
        async with RecordingUpstream(lambda req: response(200, b"z" * BIG)) as up:
            async with in_process(up.url, response_timeout=0.3, send_timeout=30) as proxy:
                sock = await _raw_socket(proxy.url)
                await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
                # Read nothing for well past the response timeout, twice.
                received = 0
                for pause in (1.0, 1.0):
                    await asyncio.sleep(pause)
                    chunk = await loop.sock_recv(sock, 65536)
                    received += len(chunk)
                while True:
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received >= BIG + 38:
                        break
                sock.close()
                return received, proxy.core.counters.snapshot()

    received, counters = run(main())
    head_size = len(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
    assert received == BIG + head_size
    assert "UpstreamTimeout" not in counters["errors"]


def test_a_client_that_reads_nothing_is_cut_after_send_timeout_and_blamed():
    async def main():
        loop = asyncio.get_running_loop()
        async with RecordingUpstream(lambda req: response(200, b"z" * BIG)) as up:
            async with in_process(up.url, response_timeout=30, send_timeout=0.5) as proxy:
                sock = await _raw_socket(proxy.url)
                await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
                started = loop.time()
                for _ in range(1000):
                    if proxy.core.counters.client_connections == 0:
                        break
                    await asyncio.sleep(0.01)
                cut_after = loop.time() - started
                innocent = await _timed_get(proxy.url)
                for _ in range(200):
                    if up.open_connections <= 1:
                        break
                    await asyncio.sleep(0.01)
                sock.close()
                return cut_after, innocent, proxy.core.counters.snapshot()

    cut_after, (innocent, innocent_time), counters = run(main())
    assert cut_after < 5
    assert counters["errors"]["client_send_timeout"] == 1
    assert "UpstreamTimeout" not in counters["errors"]
    assert innocent.status == 200 and innocent_time < 2


SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
          b"Upgrade: websocket\r\n\r\n")


def test_an_idle_tunnel_is_closed_after_idle_timeout_and_a_busy_one_is_not():
    def respond(req):
        return [SWITCH, ("tunnel", lambda data: data.upper())]

    async def main():
        loop = asyncio.get_running_loop()
        async with RecordingUpstream(respond) as up:
            async with in_process(up.url, idle_timeout=0.4) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                            b"Upgrade: websocket\r\n\r\n")
                assert (await asyncio.wait_for(client.read_response(), 5)).status == 101
                # Busy for three times the idle timeout: it stays open.
                started = loop.time()
                while loop.time() - started < 1.2:
                    client.send(b"ping")
                    assert await asyncio.wait_for(client.reader.readexactly(4), 5) == b"PING"
                    await asyncio.sleep(0.1)
                # Then idle: closed, and the upstream connection with it.
                idle_from = loop.time()
                closed = await client.at_eof(timeout=5)
                idle_for = loop.time() - idle_from
                for _ in range(200):
                    if up.open_connections == 0:
                        break
                    await asyncio.sleep(0.01)
                client.close()
                return closed, idle_for, up.open_connections

    closed, idle_for, open_upstream = run(main())
    assert closed
    assert 0.3 <= idle_for < 3
    assert open_upstream == 0


def test_an_upstream_that_reads_none_of_a_request_gives_504_after_send_timeout():
    # The client's body pace is then not the client's fault: its reading is
    # paused by the proxy, and the wait is the upstream's.
    async def main():
        loop = asyncio.get_running_loop()
        accepted = []

        async def never_reads(reader, writer):
            accepted.append(writer)     # read nothing past the stream's own buffer

        server = await asyncio.start_server(never_reads, "127.0.0.1", 0, limit=16 * 1024)
        port = server.sockets[0].getsockname()[1]
        try:
            async with in_process(f"http://127.0.0.1:{port}", send_timeout=0.5,
                                  body_timeout=0.3, response_timeout=30) as proxy:
                client = await RawClient.connect(proxy.url)
                size = 64 * 1024 * 1024
                client.send(b"POST /idx/_bulk HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
                started = loop.time()

                async def send_body():
                    try:
                        for _ in range(size // (1024 * 1024)):
                            client.send(b"b" * (1024 * 1024))
                            await client.drain()
                    except ConnectionError:
                        pass

                sending = asyncio.ensure_future(send_body())
                try:
                    res = await asyncio.wait_for(client.read_response("POST"), 10)
                except ConnectionError:
                    res = None
                elapsed = loop.time() - started
                sending.cancel()
                client.close()
                return res, elapsed, proxy.core.counters.snapshot()
        finally:
            for writer in accepted:
                writer.close()
            server.close()

    res, elapsed, counters = run(main())
    # The upstream is blamed, in a bound.
    assert counters["errors"]["UpstreamTimeout"] == 1
    assert "body_timeout" not in counters["errors"]
    assert elapsed < 5
    # The 504 is written before the close; closing on a body the proxy has
    # not read sends a reset, which a loaded machine may deliver first.
    if res is not None:
        _es_error(res, 504, "gateway_timeout_exception")


def test_a_handler_call_waits_for_an_upstream_connection_in_the_same_bounds():
    from selproxy import Request, Response, Route

    async def calls(request: Request, upstream) -> Response:
        res = await upstream.request("GET", "/inner", [])
        return Response(200, [], res.body)

    def respond(req):
        if req.target == "/stall":
            return ["stall"]
        return response(200, b"inner")

    async def main():
        async with RecordingUpstream(respond) as up:
            routes = [Route(("GET",), "/_calls", calls, "calls")]
            async with in_process(up.url, routes=routes, max_upstream_connections=1,
                                  upstream_queue_timeout=0.3, response_timeout=30,
                                  shutdown_grace=0.5) as proxy:
                holder = await RawClient.connect(proxy.url)
                holder.send(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
                for _ in range(200):
                    if up.requests:
                        break
                    await asyncio.sleep(0.01)
                res, waited = await _timed_get(proxy.url, "/_calls")
                waiting = proxy.core.counters.upstream_waiters
                holder.close()
                return res, waited, waiting

    res, waited, waiting = run(main())
    _es_error(res, 504, "gateway_timeout_exception")
    assert 0.25 <= waited < 5
    assert waiting == 0


def test_a_flood_of_pipelined_requests_costs_a_bounded_amount_of_memory():
    # 256 KiB of the smallest requests in one write, behind one that stalls:
    # what the proxy holds for them before it stops reading stays small.
    import tracemalloc
    flood = b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n" * 9000

    async def main():
        async with RecordingUpstream(lambda req: ["stall"]) as up:
            async with in_process(up.url, shutdown_grace=0.5) as proxy:
                client = await RawClient.connect(proxy.url)
                await _timed_get(proxy.url, "/_selproxy/status")
                tracemalloc.start()
                try:
                    before = tracemalloc.get_traced_memory()[0]
                    client.send(flood)
                    for _ in range(100):
                        await asyncio.sleep(0.01)
                        if up.requests:
                            break
                    await asyncio.sleep(0.2)
                    grown = tracemalloc.get_traced_memory()[0] - before
                finally:
                    tracemalloc.stop()
                innocent = await _timed_get(proxy.url, "/_selproxy/status")
                client.close()
                return grown, innocent

    grown, (innocent, innocent_time) = run(main())
    assert grown < 1024 * 1024, f"{grown / 1024:.0f} KiB"   # 2.6 MiB before reads were bounded
    assert innocent.status == 200 and innocent_time < 2
