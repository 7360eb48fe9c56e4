"""Capture's cost to the client: a reranked search through selproxy with
``--capture`` off, at 1 % and at 100 % (with and without texts), in one run.

The upstream is ``bench_search.py``'s fixed loopback server (the same 50-hit
window every time), the ranker ``identity`` by default, so the differences are
the proxy's own work: sampling, building the record on the loop, the writer
thread's JSON encoding and file writes competing for the same cores.
Setups are measured in interleaved rounds, so drift of a shared machine
spreads over all of them.

    python benchmarks/bench_capture.py --requests 2000 --rounds 3
    python benchmarks/bench_capture.py --json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import uvloop

from bench_search import add_search_arguments, fixed_upstream, latency, measure, search_request, window_body
from selproxy import Proxy
from selproxy.rankers.registry import resolve_ranker
from selproxy.search import SearchConfig, SearchService
from selproxy.search.capture import CaptureConfig

#: (label, capture rate or None for off, texts)
SETUPS: List[Tuple[str, Optional[float], bool]] = [
    ("capture off", None, False), ("capture 1 %", 0.01, False),
    ("capture 100 %", 1.0, False), ("capture 100 % + texts", 1.0, True)]


async def main(args: argparse.Namespace) -> Dict[str, Any]:
    body = window_body(args.window, args.hit_bytes)
    server, upstream_port = await fixed_upstream(body)
    request = search_request(args.size)
    samples: Dict[str, List[float]] = {label: [] for label, _, _ in SETUPS}
    captured: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as directory:
        for round_number in range(args.rounds):
            for label, rate, texts in SETUPS:
                capture = None
                if rate is not None:
                    path = os.path.join(directory, f"{round_number}-{rate}-{texts}.jsonl")
                    capture = CaptureConfig(path, rate=rate, texts=texts, seed=round_number)
                service = SearchService(resolve_ranker(args.ranker),
                                        SearchConfig(topn=args.window, capture=capture))
                proxy = Proxy(upstream=f"http://127.0.0.1:{upstream_port}", listen="127.0.0.1:0",
                              routes=service.routes())
                await proxy.start()
                try:
                    measured, _elapsed = await measure(proxy.address[1], request, args.requests,
                                                       args.connections, args.warmup)
                    samples[label].extend(measured)
                    if service.relevance is not None and service.relevance.writer is not None:
                        snapshot = service.relevance.writer.snapshot()
                        totals = captured.setdefault(label, {"written": 0, "dropped": 0, "errors": 0})
                        for key in ("written", "dropped", "errors"):
                            totals[key] += snapshot[key]
                finally:
                    await proxy.stop(grace=1.0)
                    await service.aclose()
                if service.relevance is not None and service.relevance.writer is not None:
                    captured[label]["bytes_per_line"] = round(
                        os.path.getsize(service.relevance.writer.path) / max(1, snapshot["written"]))
    server.close()
    results: Dict[str, Any] = {"window_bytes": len(body), "ranker": args.ranker, "setups": {}}
    for label, values in samples.items():
        results["setups"][label] = {**latency(values), **captured.get(label, {})}
    return results


def print_table(results: Dict[str, Any]) -> None:
    print(f"window {results['window_bytes']} B, ranker {results['ranker']}")
    print("| setup | n | p50 ms | p99 ms | mean ms | p50 vs off | lines written | dropped | bytes/line |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = results["setups"]["capture off"]["p50_ms"]
    for label, row in results["setups"].items():
        print(f"| {label} | {row['n']} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['mean_ms']:.3f} "
              f"| {row['p50_ms'] - base:+.3f} ms | {row.get('written', '-')} | {row.get('dropped', '-')} "
              f"| {row.get('bytes_per_line', '-')} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per setup and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=100)
    add_search_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    options = parser.parse_args()
    outcome = uvloop.run(main(options))
    if options.json:
        json.dump(outcome, sys.stdout, indent=2)
        print()
    else:
        print_table(outcome)
