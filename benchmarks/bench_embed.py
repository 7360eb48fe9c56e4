"""``selproxy embed`` against the bare model, on the same texts, in one run.

Starts the embedded engine on loopback (in a thread of this process), indexes
Cranfield (1,400 abstracts, read in place from ../shared/data/cranfield) with
``selproxy eval load``, walks the index once to get each document's text
exactly as the search path extracts it, then, per round:

* ``bare``: the model alone, ``MiniLMRanker(...).encoder.embed`` on those
  texts in batches of ``--batch-size``, after one warm-up call;
* ``embed``: ``python -m selproxy embed`` into a fresh temporary store, as a
  user runs it: wall time of the whole command (interpreter start and model
  load included) and the walk-and-embed time it reports itself.

It prints both throughputs and the ratio of times (embed / bare; the target
is <= 1.25).  Rounds alternate their order; the table shows each round and
the medians.

    python benchmarks/bench_embed.py                  # one round
    python benchmarks/bench_embed.py --rounds 3 --json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # run from a checkout without installing

# Beside the checkout (../shared), or where the shared data lives when the
# checkout is a worktree elsewhere.
CRANFIELD = next((p for p in (os.path.join(os.path.dirname(ROOT), "shared", "data", "cranfield"),
                              "/work/shared/data/cranfield") if os.path.isdir(p)), "")


class EngineThread:
    """The embedded engine on its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._stop: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._failure: List[BaseException] = []
        self._thread = threading.Thread(target=self._main, name="engine", daemon=True)

    def _main(self) -> None:
        import uvloop

        from selproxy.engine import Engine

        async def serve() -> None:
            self._stop = asyncio.Event()
            try:
                async with Engine(data=":memory:") as engine:
                    self.url = engine.url
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._failure.append(exc)
                self._ready.set()

        self._loop = uvloop.new_event_loop()
        self._loop.run_until_complete(serve())
        self._loop.close()

    def __enter__(self) -> "EngineThread":
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the engine did not start")
        if self._failure:
            raise self._failure[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def child_env() -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH", "")])))


def walk_texts(url: str, index: str, text_fields: List[str]) -> List[str]:
    """Every document's text, in the walk's order, as the search path extracts it."""
    from selproxy.embed import EngineHTTP, IndexWalk, source_request
    from selproxy.search.config import SearchConfig
    from selproxy.search.extract import parse_field_spec
    from selproxy.search.service import hit_texts

    limit = SearchConfig().max_field_chars
    specs = [parse_field_spec(s, limit) for s in text_fields]
    source, fields = source_request(specs)
    http = EngineHTTP(url)
    walk = IndexWalk(http, index, page_size=500, source=source, fields=fields)
    texts: List[str] = []
    try:
        for page in walk.pages():
            texts.extend(t for t in hit_texts(page, specs, limit) if t)
    finally:
        walk.close()
        http.close()
    return texts


def batches(items: List[str], size: int) -> Iterator[List[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def cpu_seconds(children: bool = False) -> float:
    t = os.times()
    return t.children_user + t.children_system if children else t.user + t.system


def time_bare(encoder: Any, texts: List[str], batch_size: int) -> Dict[str, float]:
    cpu = cpu_seconds()
    started = time.perf_counter()
    for chunk in batches(texts, batch_size):
        encoder.embed(chunk)
    return {"bare_s": time.perf_counter() - started, "bare_cpu_s": cpu_seconds() - cpu}


def time_embed(url: str, index: str, batch_size: int, text_fields: List[str]) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        store = os.path.join(tmp, "vectors.sqlite3")
        argv = [sys.executable, "-m", "selproxy", "embed", "--upstream", url, "--index", index,
                "--ranker", "minilm", "--embedding-store", store, "--batch-size", str(batch_size)]
        for field in text_fields:
            argv += ["--text-field", field]
        cpu, engine_cpu = cpu_seconds(children=True), cpu_seconds()
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=child_env(), cwd=tmp,
                              stdin=subprocess.DEVNULL, timeout=3600)
        wall = time.perf_counter() - started
        # The command's CPU, and the engine's (in this process) serving its walk.
        cpu = cpu_seconds(children=True) - cpu + cpu_seconds() - engine_cpu
    if done.returncode != 0:
        raise RuntimeError(f"selproxy embed exited with {done.returncode}: {done.stderr[-2000:]}")
    totals = dict(re.findall(r"^([a-z/ ()]+):\s+(.*)$", done.stdout, re.M))
    return {"wall_s": wall, "run_s": float(totals["seconds"]), "model_s": float(totals["model seconds"]),
            "cpu_s": cpu, "embedded": int(totals["embedded"]), "command": " ".join(argv[1:])}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=CRANFIELD, help="directory holding cran.all.1400.xml")
    parser.add_argument("--index", default="cranfield")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--text-field", action="append", default=[], metavar="SPEC")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, metavar="N",
                        help="index only the first N documents (a quick run)")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)

    from selproxy.rankers.minilm import MiniLMRanker

    with EngineThread() as engine:
        collection = os.path.join(args.data, "cran.all.1400.xml")
        if args.limit:
            from selproxy.evaluation.trec import read_collection
            collection = os.path.join(tempfile.mkdtemp(prefix="bench-embed-"), "docs.jsonl")
            with open(collection, "w") as out:
                for n, doc in enumerate(read_collection(os.path.join(args.data, "cran.all.1400.xml"))):
                    if n >= args.limit:
                        break
                    out.write(json.dumps(doc) + "\n")
        load = subprocess.run([sys.executable, "-m", "selproxy", "eval", "load", "--upstream", engine.url,
                               "--index", args.index, collection],
                              capture_output=True, text=True, env=child_env(), stdin=subprocess.DEVNULL,
                              timeout=600)
        if load.returncode != 0:
            raise SystemExit(f"loading Cranfield failed: {load.stderr[-2000:]}")
        texts = walk_texts(engine.url, args.index, args.text_field)
        print(f"{len(texts)} documents with text; batch size {args.batch_size}", file=sys.stderr)
        ranker = MiniLMRanker(embedding_store=":memory:", background_queue=0)
        ranker.encoder.embed(texts[:8])  # allocation, first-call costs
        rounds: List[Dict[str, Any]] = []
        for n in range(args.rounds):
            result: Dict[str, Any] = {}
            # Alternate the order: a busy neighbour then hurts each side alike.
            for step in (("bare", "embed") if n % 2 == 0 else ("embed", "bare")):
                print(f"round {n + 1}: {step}", file=sys.stderr)
                if step == "bare":
                    result.update(time_bare(ranker.encoder, texts, args.batch_size))
                else:
                    result.update(time_embed(engine.url, args.index, args.batch_size, args.text_field))
            if result["embedded"] != len(texts):
                raise SystemExit(f"selproxy embed embedded {result['embedded']} of {len(texts)} documents")
            result["ratio_run"] = result["run_s"] / result["bare_s"]
            result["ratio_wall"] = result["wall_s"] / result["bare_s"]
            result["ratio_cpu"] = result["cpu_s"] / result["bare_cpu_s"]
            # What selproxy embed spends besides the model (walk, keys, store), in its own run.
            result["overhead_s"] = result["run_s"] - result["model_s"]
            rounds.append(result)
        ranker.close()

    median = {k: statistics.median(r[k] for r in rounds)
              for k in ("bare_s", "run_s", "wall_s", "ratio_run", "ratio_wall", "bare_cpu_s", "cpu_s",
                        "ratio_cpu", "overhead_s")}
    report = {"documents": len(texts), "batch_size": args.batch_size, "rounds": rounds, "median": median,
              "python": platform.python_version(), "cpus": os.cpu_count(),
              "loadavg": os.getloadavg(), "command": rounds[0]["command"]}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    docs = len(texts)
    print(f"{docs} Cranfield documents with text, batch size {args.batch_size}, {len(rounds)} round(s); "
          f"load average {report['loadavg'][0]:.2f}")
    print(f"{'round':>5} | {'bare s':>7} | {'bare doc/s':>10} | {'embed s (run)':>13} | {'doc/s':>6} | "
          f"{'embed s (wall)':>14} | {'x bare (run)':>12} | {'x bare (wall)':>13} | {'CPU s bare/embed':>16} | "
          f"{'x bare (CPU)':>12} | {'not model s':>11}")
    for n, r in enumerate(rounds + [dict(median)], 1):
        label = str(n) if n <= len(rounds) else "med"
        print(f"{label:>5} | {r['bare_s']:7.2f} | {docs / r['bare_s']:10.1f} | {r['run_s']:13.2f} | "
              f"{docs / r['run_s']:6.1f} | {r['wall_s']:14.2f} | {r['ratio_run']:12.3f} | {r['ratio_wall']:13.3f} | "
              f"{r['bare_cpu_s']:7.1f}/{r['cpu_s']:<8.1f} | {r['ratio_cpu']:12.3f} | {r['overhead_s']:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
