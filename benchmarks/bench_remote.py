"""Benchmark the model tier apart from the proxy: the same ranker in-process
against the same ranker behind ``selproxy serve-ranker``, reached with the
``remote`` ranker, on the same windows, with the bare ranker as reference.

Rows, all in one run:

* ``bare``: the ranker's own ``rank(query, docs)``, called in this thread
  (no adapter, no batching, no HTTP): what the model costs.
* ``in-process``: what the proxy does with a local ranker: the
  :class:`RankerAdapter` around the ranker as ``--ranker`` builds it
  (micro-batched when the ranker is).
* ``remote tei``: the adapter around ``RemoteRanker(api="tei")``, which
  splits a 50-hit window into calls of 32 and 18, to a ``serve-ranker``
  subprocess running the same ranker (its micro-batcher puts them together).
* ``remote cohere``: the same with ``api="cohere"`` (one call per window).

Each row is run sequentially (1 client; latency per window) and with
``--concurrency`` clients (windows per second).  Every row has its own ranker
and server and sees each window once, cold, so an embedding cache never
flatters a row; the rows take turns window by window (the concurrent pass:
block by block), so a change in the machine's load falls on all of them.

    python benchmarks/bench_remote.py                                     # the default model
    python benchmarks/bench_remote.py --ranker bm25                       # the HTTP overhead, nearly alone
    python benchmarks/bench_remote.py --json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ranker import QUERIES, corpus_words, make_docs, p50, p99  # noqa: E402

from selproxy.rankers.adapter import RankerAdapter, RankJob  # noqa: E402
from selproxy.rankers.registry import check_ranker, parse_ranker_options, resolve_ranker  # noqa: E402
from selproxy.rankers.remote import RemoteRanker  # noqa: E402

DEADLINE = 60.0  # never the limit here: every window is scored


def windows(words: Sequence[str], count: int, size: int, words_per_doc: int, start: int) -> List[RankJob]:
    docs = make_docs(words, count * size, words_per_doc, start=start * size)
    return [RankJob(f"{QUERIES[n % len(QUERIES)]} {start + n}", docs[n * size:(n + 1) * size])
            for n in range(count)]


async def drive(adapter: RankerAdapter, jobs: List[RankJob], clients: int) -> Tuple[float, List[float]]:
    latencies: List[float] = []
    queue = iter(jobs)

    async def client() -> None:
        for job in queue:
            started = time.perf_counter()
            scores, _ = await adapter.rank([job], DEADLINE)
            assert len(scores[0]) == len(job.docs)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, latencies


def start_serve_ranker(ranker: str, options: List[str]) -> Tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [sys.executable, "-m", "selproxy", "serve-ranker", "--ranker", ranker,
            "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING",
            # The same deadline as in-process: a ranker with partial results
            # (the default model) would otherwise stop at serve-ranker's 10 s
            # on this loaded machine and do less work than the other rows.
            "--rank-timeout", str(DEADLINE)]
    for option in options:
        argv += ["--ranker-option", option]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve-ranker exited with {proc.returncode}")
        try:
            if json.loads(urllib.request.urlopen(url + "/info", timeout=2).read())["ready"]:
                return proc, url
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("serve-ranker did not become ready")


def summary(elapsed: float, latencies: List[float]) -> Dict[str, float]:
    return {"windows": len(latencies), "per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(p50(latencies) * 1e3, 2), "p99_ms": round(p99(latencies) * 1e3, 2)}


async def main_async(args: argparse.Namespace) -> Dict[str, Any]:
    options = parse_ranker_options(args.ranker_option)
    words = corpus_words()
    sequential = windows(words, args.windows, args.window, args.words, 0)
    concurrent = windows(words, args.windows * 2, args.window, args.words, args.windows)
    results: Dict[str, Any] = {"ranker": args.ranker, "options": args.ranker_option, "window": args.window,
                               "words": args.words, "concurrency": args.concurrency, "rows": {}}

    # Every row has a ranker of its own (so each sees each window cold), all
    # built up front; the rows then take turns, window by window, so a change
    # in the machine's load falls on all of them alike.
    bare_options = check_ranker(args.ranker, options)
    if _batches(args.ranker):
        bare_options["batching"] = False  # the ranker itself, not its micro-batcher
    bare = resolve_ranker(args.ranker, bare_options)
    local = resolve_ranker(args.ranker, check_ranker(args.ranker, options))
    for ranker in (bare, local):
        warm = getattr(ranker, "warmup", None)
        if callable(warm):
            warm()
    servers = [start_serve_ranker(args.ranker, args.ranker_option) for _ in range(2)]
    remotes = [RemoteRanker(servers[0][1] + "/rerank", api="tei", timeout=DEADLINE, concurrency=64),
               RemoteRanker(servers[1][1] + "/v2/rerank", model="served", timeout=DEADLINE, concurrency=64)]
    adapters = {"in-process": RankerAdapter(local, threads=1, max_pending=1024),
                "remote tei": RankerAdapter(remotes[0], threads=1, max_pending=1024),
                "remote cohere": RankerAdapter(remotes[1], threads=1, max_pending=1024)}
    try:
        # One untimed window first: connections, thread pools.
        for adapter in adapters.values():
            await adapter.rank([windows(words, 1, args.window, args.words, args.windows * 3)[0]], DEADLINE)
        seq: Dict[str, List[float]] = {name: [] for name in ["bare", *adapters]}
        for job in sequential:
            started = time.perf_counter()
            out = bare.rank(job.query, job.docs)
            if asyncio.iscoroutine(out):
                await out
            seq["bare"].append(time.perf_counter() - started)
            for name, adapter in adapters.items():
                _, latencies = await drive(adapter, [job], 1)
                seq[name].extend(latencies)
        conc: Dict[str, Tuple[float, List[float]]] = {name: (0.0, []) for name in adapters}
        block = args.concurrency * 2
        for first in range(0, len(concurrent), block):
            for name, adapter in adapters.items():
                elapsed, latencies = await drive(adapter, concurrent[first:first + block], args.concurrency)
                conc[name] = (conc[name][0] + elapsed, conc[name][1] + latencies)
        for name, latencies in seq.items():
            results["rows"][name] = {"sequential": summary(sum(latencies), latencies)}
            if name in conc:
                results["rows"][name]["concurrent"] = summary(*conc[name])
        results["remote_calls"] = {"tei": remotes[0].stats()["calls"], "cohere": remotes[1].stats()["calls"]}
    finally:
        for remote in remotes:
            await remote.aclose()
        for adapter in adapters.values():
            adapter.close()
        for proc, _ in servers:
            proc.terminate()
            proc.wait(30)
    return results


def _batches(spec: str) -> bool:
    from selproxy.rankers.registry import load_ranker_class
    return bool(getattr(load_ranker_class(spec), "micro_batching", False))


def table(results: Dict[str, Any]) -> str:
    rows = results["rows"]
    ref_seq = rows["in-process"]["sequential"]
    ref_conc = rows["in-process"]["concurrent"]
    lines = [f"ranker {results['ranker']} {' '.join(results['options'])}; windows of {results['window']} "
             f"documents of {results['words']} words; concurrent = {results['concurrency']} clients",
             "",
             "| row | 1 client: p50 ms | p99 ms | windows/s | vs. in-process | "
             f"{results['concurrency']} clients: windows/s | p50 ms | p99 ms | vs. in-process |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        seq = row["sequential"]
        cells = [name, f"{seq['p50_ms']:.2f}", f"{seq['p99_ms']:.2f}", f"{seq['per_s']:.1f}",
                 f"{seq['per_s'] / ref_seq['per_s']:.2f}x"]
        conc = row.get("concurrent")
        if conc:
            cells += [f"{conc['per_s']:.1f}", f"{conc['p50_ms']:.2f}", f"{conc['p99_ms']:.2f}",
                      f"{conc['per_s'] / ref_conc['per_s']:.2f}x"]
        else:
            cells += ["", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranker", default="default")
    parser.add_argument("--ranker-option", action="append", default=None, metavar="KEY=VALUE")
    parser.add_argument("--windows", type=int, default=40, help="windows in the sequential pass "
                        "(the concurrent pass takes twice as many)")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--words", type=int, default=60, help="words per document")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.ranker_option is None:
        # Cold windows, and no file shared between the in-process ranker and the server.
        args.ranker_option = ["embedding_store=:memory:"] if args.ranker == "default" else []
    results = asyncio.run(main_async(args))
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "cpu": _cpu_name()}
    print(json.dumps(results, indent=2) if args.json else table(results))


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    match = re.search(r"model name\s*:\s*(.*)", text)
    return match.group(1) if match else platform.processor()


if __name__ == "__main__":
    main()
