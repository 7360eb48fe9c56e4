"""A worker-wide budget for buffered bodies: claimed request bodies and the
responses handlers' upstream calls collect.  Past ``max_buffered_bodies`` a
new claimed request gets 503 with Retry-After in Elasticsearch's error shape,
and the budget is given back whenever an exchange ends, however it ends."""
import asyncio

from selproxy import Request, Response, Route
from support.aio import run
from support.proxy import in_process
from support.rawhttp import RawClient
from support.upstream import RecordingUpstream, response

KIB = 1024


async def _size(request: Request, upstream) -> Response:
    return Response(200, [], str(len(request.body)).encode())


async def _fetch(request: Request, upstream) -> Response:
    res = await upstream.request("GET", "/big", [])
    return Response(200, [], str(len(res.body)).encode())


ROUTES = [Route(("POST",), "/_size", _size, "size"), Route(("GET",), "/_fetch", _fetch, "fetch")]


def _es_503(res):
    assert res.status == 503
    assert res.header("content-type") == "application/json"
    assert res.header("retry-after") == "1"
    doc = res.json()
    assert doc["status"] == 503
    assert doc["error"]["type"] == "es_rejected_execution_exception"


async def _wait_for(predicate, limit=5.0):
    for _ in range(int(limit / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def test_claimed_bodies_past_the_budget_get_503_and_small_ones_still_pass():
    head = b"POST /_size HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (400 * KIB)

    async def main():
        async with RecordingUpstream() as up:
            async with in_process(up.url, routes=ROUTES, max_buffered_body=512 * KIB,
                                  max_buffered_bodies=1024 * KIB) as proxy:
                counters = proxy.core.counters
                holders = []
                # Two bodies held, their last bytes unsent: 800 KiB of 1 MiB.
                for _ in range(2):
                    holder = await RawClient.connect(proxy.url)
                    holder.send(head + b"h" * (400 * KIB - 1))
                    holders.append(holder)
                assert await _wait_for(lambda: counters.buffered_bodies == 2 * (400 * KIB - 1))
                # A third would pass the budget: refused at its head.
                third = await RawClient.connect(proxy.url)
                refused = await asyncio.wait_for(
                    third.request("POST", "/_size", b"t" * (400 * KIB)), 5)
                third.close()
                # A chunked one is refused once it passes the budget.
                chunked = await RawClient.connect(proxy.url)
                chunked.send(b"POST /_size HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + b"%x\r\n%s\r\n" % (300 * KIB, b"c" * (300 * KIB)))
                cut = await asyncio.wait_for(chunked.read_response("POST"), 5)
                chunked.close()
                # A small claimed request still fits.
                small = await RawClient.connect(proxy.url)
                fits = await asyncio.wait_for(small.request("POST", "/_size", b"s" * 1000), 5)
                held = counters.buffered_bodies
                # The holders finish theirs: answered, and the budget given back.
                done = []
                for holder in holders:
                    holder.send(b"h")
                    done.append(await asyncio.wait_for(holder.read_response("POST"), 5))
                    holder.close()
                after_done = counters.buffered_bodies
                again = await asyncio.wait_for(small.request("POST", "/_size", b"t" * (400 * KIB)), 5)
                small.close()
                return refused, cut, fits, held, done, after_done, again, counters.snapshot()

    refused, cut, fits, held, done, after_done, again, counters = run(main())
    _es_503(refused)
    assert refused.header("connection") == "close"
    _es_503(cut)
    assert fits.status == 200 and fits.body == b"1000"
    assert held == 2 * (400 * KIB - 1)
    assert [(r.status, r.body) for r in done] == [(200, str(400 * KIB).encode())] * 2
    assert after_done == 0
    assert again.status == 200 and again.body == str(400 * KIB).encode()
    assert counters["buffered_bodies"] == 0


def test_bodies_of_clients_that_leave_are_given_back():
    head = b"POST /_size HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (400 * KIB)

    async def main():
        async with RecordingUpstream() as up:
            async with in_process(up.url, routes=ROUTES, max_buffered_body=512 * KIB,
                                  max_buffered_bodies=1024 * KIB) as proxy:
                counters = proxy.core.counters
                for _ in range(3):
                    client = await RawClient.connect(proxy.url)
                    client.send(head + b"h" * (300 * KIB))
                    assert await _wait_for(lambda: counters.buffered_bodies == 300 * KIB)
                    client.writer.transport.abort()
                    assert await _wait_for(lambda: counters.buffered_bodies == 0)
                return counters.buffered_bodies

    assert run(main()) == 0


def test_a_handler_call_whose_response_passes_the_budget_gets_503():
    async def main():
        async with RecordingUpstream(lambda req: response(200, b"r" * (600 * KIB))) as up:
            async with in_process(up.url, routes=ROUTES,
                                  max_buffered_bodies=512 * KIB) as proxy:
                client = await RawClient.connect(proxy.url)
                res = await asyncio.wait_for(client.request("GET", "/_fetch"), 5)
                client.close()
                return res, proxy.core.counters.buffered_bodies

    res, held = run(main())
    _es_503(res)
    assert held == 0


def test_a_handler_call_within_the_budget_gives_it_back():
    async def main():
        async with RecordingUpstream(lambda req: response(200, b"r" * (300 * KIB))) as up:
            async with in_process(up.url, routes=ROUTES,
                                  max_buffered_bodies=512 * KIB) as proxy:
                client = await RawClient.connect(proxy.url)
                results = [await asyncio.wait_for(client.request("GET", "/_fetch"), 5)
                           for _ in range(3)]
                client.close()
                return results, proxy.core.counters.buffered_bodies

    results, held = run(main())
    assert [(r.status, r.body) for r in results] == [(200, str(300 * KIB).encode())] * 3
    assert held == 0
