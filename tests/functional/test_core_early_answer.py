"""An upstream that answers before the request body is all sent (an auth
error, a 413): the proxy reads and drops a small known remainder so the client
connection stays usable, as nginx does, and closes when it cannot.

A body up to ``request_buffer_size`` is read whole before it goes upstream,
so these tests set it to 0: the streaming path is what they exercise, as
larger bodies take it."""
import asyncio
import contextlib

from support.aio import run
from support.proxy import in_process
from support.rawhttp import RawClient

HEAD = b"POST /idx/_doc HTTP/1.1\r\nHost: t\r\n"


@contextlib.asynccontextmanager
async def early_upstream():
    """Answers 401 as soon as a request head is in, and GETs with 200; it
    never waits for a body.  Yields its URL and the heads it saw."""
    heads = []

    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                if head.startswith(b"GET"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                else:
                    writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\ndenied")
                    await writer.drain()
                    # What follows the head is a body this upstream ignores:
                    # keep reading until the proxy closes.
                    while await reader.read(65536):
                        pass
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", heads
    finally:
        server.close()
        await server.wait_closed()


def test_a_small_remainder_is_dropped_and_the_connection_goes_on():
    async def main():
        async with early_upstream() as (url, heads):
            async with in_process(url, shutdown_grace=1.0, request_buffer_size=0) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(HEAD + b"Content-Length: 1000\r\n\r\n" + b"a" * 10)
                first = await client.read_response("POST")
                # The rest of the body, then a next request on the same connection.
                client.send(b"b" * 990 + b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
                second = await client.read_response()
                client.close()
                return first, second, heads

    first, second, heads = run(main(), 20)
    assert first.status == 401 and first.body == b"denied"
    assert first.header("connection") is None
    assert second.status == 200 and second.body == b"ok"
    # Nothing of the dropped rest reached the upstream as a request.
    assert [h.split(b" ", 2)[:2] for h in heads] == [[b"POST", b"/idx/_doc"], [b"GET", b"/after"]]


def test_a_large_remainder_closes_after_the_answer():
    async def one(head_and_start):
        async with early_upstream() as (url, _heads):
            async with in_process(url, shutdown_grace=1.0, request_buffer_size=0) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(head_and_start)
                res = await client.read_response("POST")
                closed = await client.at_eof(5.0)
                client.close()
                return res, closed

    cases = [
        HEAD + b"Content-Length: %d\r\n\r\nxx" % (64 * 1024 * 1024),
        HEAD + b"Expect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    ]
    for head_and_start in cases:
        res, closed = run(one(head_and_start), 20)
        assert res.status == 401 and res.body == b"denied", head_and_start
        assert res.header("connection") == "close", head_and_start
        assert closed, head_and_start


def test_a_remainder_that_never_comes_ends_with_the_body_timeout_and_the_answer_intact():
    async def main():
        async with early_upstream() as (url, _heads):
            async with in_process(url, shutdown_grace=1.0, request_buffer_size=0, body_timeout=0.3) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(HEAD + b"Content-Length: 100\r\n\r\nxx")
                res = await client.read_response("POST")
                closed = await client.at_eof(5.0)
                client.close()
                return res, closed

    res, closed = run(main(), 20)
    assert res.status == 401 and res.body == b"denied"
    assert closed


def test_a_chunked_remainder_is_dropped_up_to_a_bound():
    async def main(rest_size):
        async with early_upstream() as (url, heads):
            async with in_process(url, shutdown_grace=1.0, request_buffer_size=0) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nxx\r\n")
                first = await client.read_response("POST")
                piece = b"%x\r\n%s\r\n" % (64 * 1024, b"z" * 64 * 1024)
                try:
                    for _ in range(rest_size // (64 * 1024)):
                        client.send(piece)
                        await client.drain()
                except ConnectionError:
                    pass   # the proxy has stopped reading: the cut this test expects
                if rest_size < 1024 * 1024:
                    client.send(b"0\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n")
                    second = await client.read_response()
                    client.close()
                    return first, second, None
                closed = await client.at_eof(5.0)
                client.close()
                return first, None, closed

    first, second, _ = run(main(256 * 1024), 20)
    assert first.status == 401 and first.header("connection") is None
    assert second.status == 200 and second.body == b"ok"

    # An endless one: cut once 1 MiB has been dropped, the answer intact.
    first, _, closed = run(main(2 * 1024 * 1024), 20)
    assert first.status == 401 and first.body == b"denied"
    assert closed
