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
``--concurrency`` clients (windows per second).  Every pass gets windows no
ranker has seen, so an embedding cache never flatters a row; the in-process
and remote rows see the same windows in the same order.

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
            "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING"]
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
    passes = {"sequential": (1, windows(words, args.windows, args.window, args.words, 0)),
              "concurrent": (args.concurrency, windows(words, args.windows * 2, args.window, args.words,
                                                       args.windows))}
    results: Dict[str, Any] = {"ranker": args.ranker, "options": args.ranker_option, "window": args.window,
                               "words": args.words, "concurrency": args.concurrency, "rows": {}}

    # The bare ranker: sequential only.
    bare_options = check_ranker(args.ranker, options)
    if _batches(args.ranker):
        bare_options["batching"] = False  # the ranker itself, not its micro-batcher
    bare = resolve_ranker(args.ranker, bare_options)
    warm = getattr(bare, "warmup", None)
    if callable(warm):
        warm()
    rank = bare.rank
    latencies = []
    started = time.perf_counter()
    for job in passes["sequential"][1]:
        t0 = time.perf_counter()
        out = rank(job.query, job.docs)
        if asyncio.iscoroutine(out):
            out = await out
        latencies.append(time.perf_counter() - t0)
    results["rows"]["bare"] = {"sequential": summary(time.perf_counter() - started, latencies)}
    print(f"bare: {results['rows']['bare']}", file=sys.stderr, flush=True)
    close = getattr(bare, "close", None)
    if callable(close):
        close()

    async def run_row(name: str, ranker: Any) -> None:
        adapter = RankerAdapter(ranker, threads=1, max_pending=1024)
        # One untimed window first: connections, thread pools.
        await adapter.rank([windows(words, 1, args.window, args.words, args.windows * 3)[0]], DEADLINE)
        row = {}
        for label, (clients, jobs) in passes.items():
            elapsed, lat = await drive(adapter, jobs, clients)
            row[label] = summary(elapsed, lat)
        results["rows"][name] = row
        print(f"{name}: {row}", file=sys.stderr, flush=True)
        aclose = getattr(ranker, "aclose", None)
        if callable(aclose):
            await aclose()
        adapter.close()

    local = resolve_ranker(args.ranker, check_ranker(args.ranker, options))
    warm = getattr(local, "warmup", None)
    if callable(warm):
        warm()
    await run_row("in-process", local)
    del local

    proc, url = start_serve_ranker(args.ranker, args.ranker_option)
    try:
        await run_row("remote tei", RemoteRanker(url + "/rerank", api="tei", timeout=DEADLINE,
                                                 concurrency=64))
        # The next row gets a server of its own: this one has seen the windows.
    finally:
        proc.terminate()
        proc.wait(30)
    proc, url = start_serve_ranker(args.ranker, args.ranker_option)
    try:
        await run_row("remote cohere", RemoteRanker(url + "/v2/rerank", model="served", timeout=DEADLINE,
                                                    concurrency=64))
    finally:
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
