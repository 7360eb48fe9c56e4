"""Search-path overhead: a reranked search through selproxy against the same search sent directly.

The upstream is a fixed loopback server that answers every search with the same
50-hit window (hits of about 400 B), so the difference between the two setups
is the proxy's own work: buffering, JSON decode and encode, the ranker call
(``identity`` by default) and the cut to the client's page.

    python benchmarks/bench_search.py --requests 5000 --connections 1
    python benchmarks/bench_search.py --json

Targets (issue 4): overhead under 1 ms at p50 with 1 connection, under 3 ms at p99.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any, Dict, List, Tuple

import uvloop

from selproxy import Proxy
from selproxy.rankers.registry import parse_ranker_options, resolve_ranker
from selproxy.search import SearchConfig, SearchService


def window_body(hits: int, hit_bytes: int) -> bytes:
    filler = "lorem ipsum dolor sit amet "
    docs = []
    for i in range(hits):
        source = {"title": f"Document {i} about rockets", "year": 1990 + i % 30,
                  "body": (filler * (hit_bytes // len(filler) + 1))[:max(hit_bytes - 150, 10)]}
        docs.append({"_index": "bench", "_id": f"doc-{i:05d}", "_score": 20.0 - i * 0.1, "_source": source})
    doc = {"took": 2, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
           "hits": {"total": {"value": 10000, "relation": "gte"}, "max_score": 20.0, "hits": docs}}
    return json.dumps(doc).encode()


async def fixed_upstream(body: bytes) -> Tuple[asyncio.AbstractServer, int]:
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in request_head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                writer.write(head + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return head + await reader.readexactly(length)


async def measure(port: int, request: bytes, count: int, connections: int,
                  warmup: int) -> Tuple[List[float], float]:
    """Latency samples, and the wall time the measured requests took."""
    samples: List[float] = []
    measuring: List[float] = []

    async def one_connection(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(n + warmup):
                started = time.perf_counter()
                writer.write(request)
                await read_response(reader)
                if i == warmup and not measuring:
                    measuring.append(started)
                if i >= warmup:
                    samples.append(time.perf_counter() - started)
        finally:
            writer.close()

    per = max(1, count // connections)
    await asyncio.gather(*(one_connection(per) for _ in range(connections)))
    return samples, time.perf_counter() - (measuring[0] if measuring else time.perf_counter())


def latency(samples: List[float]) -> Dict[str, float]:
    """Count, p50, p99 and mean, in ms, of latency samples in seconds."""
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return {"n": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "mean_ms": statistics.fmean(ordered) * 1e3}


def summary(measured: Tuple[List[float], float]) -> Dict[str, float]:
    # req/s is over all connections together: requests per second of wall time.
    samples, elapsed = measured
    return {**latency(samples), "req_per_s": len(samples) / elapsed if elapsed else 0.0}


def search_request(size: int) -> bytes:
    """The client's search, a match query for ``size`` hits, as request bytes."""
    search = json.dumps({"query": {"match": {"title": "rockets"}}, "size": size}).encode()
    return (b"POST /bench/_search HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(search)).encode() + b"\r\n\r\n" + search)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """The window the fixed upstream answers, the search the client sends,
    and the ranker: the options every search-path benchmark here takes."""
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--window", type=int, default=50, help="hits the upstream returns (topn)")
    parser.add_argument("--hit-bytes", type=int, default=400)
    parser.add_argument("--size", type=int, default=10, help="hits the client asks for")
    parser.add_argument("--ranker", default="identity")


async def main(args: argparse.Namespace) -> Dict[str, Any]:
    body = window_body(args.window, args.hit_bytes)
    server, upstream_port = await fixed_upstream(body)
    ranker = resolve_ranker(args.ranker, parse_ranker_options(args.ranker_option))
    service = SearchService(ranker, SearchConfig(topn=args.window))
    proxy = Proxy(upstream=f"http://127.0.0.1:{upstream_port}", listen="127.0.0.1:0", routes=service.routes())
    await proxy.start()
    request = search_request(args.size)
    results: Dict[str, Any] = {"window_bytes": len(body), "ranker": args.ranker}
    try:
        for name, port in (("direct", upstream_port), ("selproxy", proxy.address[1])):
            results[name] = summary(await measure(port, request, args.requests, args.connections, args.warmup))
    finally:
        await proxy.stop(grace=1.0)
        server.close()
        await service.aclose()
    results["overhead_p50_ms"] = results["selproxy"]["p50_ms"] - results["direct"]["p50_ms"]
    results["overhead_p99_ms"] = results["selproxy"]["p99_ms"] - results["direct"]["p99_ms"]
    return results


def print_table(results: Dict[str, Any]) -> None:
    print(f"window {results['window_bytes']} B, ranker {results['ranker']}")
    print(f"{'setup':<10}{'n':>7}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'p50 vs direct':>15}")
    base = results["direct"]["p50_ms"]
    for name in ("direct", "selproxy"):
        row = results[name]
        print(f"{name:<10}{row['n']:>7}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}"
              f"{row['req_per_s']:>10.0f}{row['p50_ms'] / base:>14.2f}x")
    print(f"overhead: p50 {results['overhead_p50_ms']:.3f} ms, p99 {results['overhead_p99_ms']:.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    add_search_arguments(parser)
    parser.add_argument("--ranker-option", action="append", default=[])
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    options = parser.parse_args()
    outcome = uvloop.run(main(options))
    if options.json:
        json.dump(outcome, sys.stdout, indent=2)
        print()
    else:
        print_table(outcome)
