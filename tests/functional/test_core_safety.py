"""Strict parsing and request smuggling: every malformed or ambiguous request
gets a 400 (or the limit's status) and a close, and never reaches the upstream."""
import pytest

from support.aio import run
from support.proxy import in_process
from support.rawhttp import RawClient
from support.upstream import RecordingUpstream, echo


async def _send_raw(data: bytes, **options):
    async with RecordingUpstream(echo) as up:
        async with in_process(up.url, **options) as proxy:
            client = await RawClient.connect(proxy.url)
            client.send(data)
            res = await client.read_response()
            closed = await client.at_eof()
            client.close()
            return res, closed, up.requests


SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 4\r\n\r\n0\r\n\r\n",
    "duplicate_differing_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                              b"Content-Length: 5\r\n\r\nabcde",
    "cl_list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\r\nabcde",
    "negative_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "plus_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
    "te_not_chunked_last": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "te_unknown": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "te_obs_fold": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "space_before_colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "bad_chunk_size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk_size_overflow": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
    "chunk_missing_crlf": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"3\r\nabcX0\r\n\r\n",
    "bare_lf_line": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare_cr": b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    "no_host_11": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad_version": b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
    "bad_method": b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
    "nul_in_header": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "space_in_target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "relative_target": b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_ambiguous_or_malformed_request_is_refused_and_never_forwarded(name):
    res, closed, seen = run(_send_raw(SMUGGLING[name]))
    assert res.status == 400, (name, res.status, res.body)
    assert res.header("connection") == "close"
    body = res.json()
    assert body["status"] == 400 and body["error"]["type"] and body["error"]["reason"]
    assert closed
    assert seen == []


def test_requests_before_a_malformed_one_are_answered_in_order():
    data = (b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")

    async def main():
        async with RecordingUpstream(echo) as up:
            async with in_process(up.url) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(data)
                first = await client.read_response()
                second = await client.read_response()
                third = await client.read_response()
                assert await client.at_eof()
                client.close()
                return first, second, third, [r.target for r in up.requests]

    first, second, third, targets = run(main())
    assert first.header("x-target") == "/one"
    assert second.header("x-target") == "/two" and second.body == b"abc"
    assert third.status == 400
    assert targets == ["/one", "/two"]


def test_connect_is_refused():
    res, closed, seen = run(_send_raw(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"))
    assert res.status == 405
    assert closed and seen == []


def test_absolute_form_naming_another_host_is_refused():
    res, closed, seen = run(_send_raw(b"GET http://169.254.169.254/latest HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"))
    assert res.status == 421
    assert res.json()["error"]["reason"].endswith("169.254.169.254")
    assert seen == []


def test_absolute_form_naming_the_upstream_goes_out_in_origin_form():
    async def main():
        async with RecordingUpstream(echo) as up:
            async with in_process(up.url) as proxy:
                client = await RawClient.connect(proxy.url)
                authority = up.url.split("//")[1]
                res = await client.request("GET", f"http://{authority}/idx/_doc/1?x=1",
                                           headers=[("Host", authority)])
                client.close()
                return res, up.requests

    res, seen = run(main())
    assert res.status == 200
    assert seen[0].target == "/idx/_doc/1?x=1"


@pytest.mark.parametrize("size, status", [(9000, 414)])
def test_long_request_line_gets_414(size, status):
    data = b"GET /" + b"a" * size + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    res, closed, seen = run(_send_raw(data, max_request_line=8192))
    assert res.status == status
    assert closed and seen == []


def test_large_header_block_gets_431():
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n"
    res, closed, seen = run(_send_raw(data, max_header_bytes=16 * 1024))
    assert res.status == 431
    assert closed and seen == []


def test_one_endless_header_gets_431_without_waiting_for_its_end():
    async def main():
        async with RecordingUpstream(echo) as up:
            async with in_process(up.url, max_header_bytes=8192) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
                for _ in range(64):
                    client.send(b"v" * 4096)
                await client.drain()
                res = await client.read_response()
                client.close()
                return res, up.requests

    res, seen = run(main())
    assert res.status == 431
    assert seen == []


def test_limits_are_configurable():
    data = b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    res, _closed, seen = run(_send_raw(data, max_request_line=16384))
    assert res.status == 200
    assert len(seen) == 1


@pytest.mark.parametrize("buffer_size", [64 * 1024, 0], ids=["buffered", "streamed"])
@pytest.mark.parametrize("flood", ["many", "endless"])
def test_request_trailers_are_bounded_like_a_head(flood, buffer_size):
    # After the last chunk: a hundred thousand trailer fields, or one that
    # never ends.  Both get 431 and a close once past max_header_bytes, and
    # the proxy keeps serving others meanwhile.
    import asyncio

    async def main():
        async with RecordingUpstream(echo) as up:
            async with in_process(up.url, max_header_bytes=8 * 1024,
                                  request_buffer_size=buffer_size) as proxy:
                client = await RawClient.connect(proxy.url)
                client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"2\r\nab\r\n0\r\n" + (b"" if flood == "many" else b"X-Endless: "))
                piece = b"X-T: v\r\n" * 2048 if flood == "many" else b"a" * 16384

                async def flood_it():
                    try:
                        for _ in range(4096):    # 64 MiB at most
                            client.send(piece)
                            await client.drain()
                    except ConnectionError:
                        pass

                flooding = asyncio.ensure_future(flood_it())
                res = await asyncio.wait_for(client.read_response("POST"), 10)
                other = await RawClient.connect(proxy.url)
                fine = await asyncio.wait_for(other.request("GET", "/fine"), 5)
                other.close()
                flooding.cancel()
                try:
                    closed = await client.at_eof()
                except ConnectionError:
                    closed = True       # reset once the proxy stopped dropping the flood
                client.close()
                return res, closed, fine, [r.target for r in up.requests]

    res, closed, fine, targets = run(main())
    assert res.status == 431
    assert res.json()["error"]["type"] == "too_long_http_header_exception"
    assert closed
    assert fine.status == 200
    assert targets == ["/fine"]


def test_a_refused_request_whose_body_keeps_coming_still_reads_its_answer():
    # nginx's lingering close: the proxy half-closes after the answer and
    # drops what the client still sends, so no reset overtakes the answer.
    import asyncio
    from selproxy import Request, Response, Route

    async def never(request: Request, upstream) -> Response:
        return Response(200, [], b"unreachable")

    async def main():
        async with RecordingUpstream(echo) as up:
            routes = [Route(("POST",), "/_claimed", never, "claimed")]
            async with in_process(up.url, routes=routes, max_buffered_body=1024 * 1024) as proxy:
                results = []
                for _ in range(3):
                    client = await RawClient.connect(proxy.url)
                    size = 8 * 1024 * 1024
                    client.send(b"POST /_claimed HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                                % size)
                    # Like most HTTP clients: the whole body first, then the answer.
                    sent = 0
                    try:
                        while sent < size:
                            client.send(b"b" * (256 * 1024))
                            sent += 256 * 1024
                            await client.drain()
                        res = await asyncio.wait_for(client.read_response("POST"), 10)
                        closed = await client.at_eof(5)
                        results.append((res.status, res.header("connection"), closed))
                    except ConnectionError as exc:
                        results.append(type(exc).__name__)
                    client.close()
                return results

    assert run(main()) == [(413, "close", True)] * 3
