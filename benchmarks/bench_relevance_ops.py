"""The window cache's later pages and shadow mode's client latency, on Cranfield.

Everything runs as its own process over loopback: the embedded engine
(``selproxy engine``), loaded with Cranfield, and selproxy as the command line
starts it, at its defaults (the default neural ranker) with one store that
``selproxy embed`` filled first, as a user would run it.  Cranfield's 225
queries go in sequence, as a user's would.

    python benchmarks/bench_relevance_ops.py                  # both phases, about 10 min on 2 cores
    python benchmarks/bench_relevance_ops.py --phases pages   # one of them
    python benchmarks/bench_relevance_ops.py --ranker bm25    # another ranker (no store needed)

Phases:

- ``pages``: per query, pages 1, 2 and 3 (``size`` 10) through selproxy at its
  defaults (window cache on), through selproxy with ``--no-window-cache``, and
  from the engine directly.  Wall time per page, p50/p90/p99, and how many of
  pages 2 and 3 said ``applied; cached``.
- ``shadow``: page 1 per query from the engine directly, through ``--ranker
  none`` (passthrough) and through ``--shadow``: the client's wall time, back to
  back and with a 100 ms gap between queries (``--gaps``: a user's think
  time, in which the shadow rerank runs), and the shadow records.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench_rerank import (INDEX, load_when_up, report, run_embed, start_engine, start_proxy, status,  # noqa: E402
                          wait_ready)
from relevance import CRANFIELD  # noqa: E402

from selproxy.evaluation._client import SearchClient  # noqa: E402
from selproxy.evaluation.run import search_body  # noqa: E402
from selproxy.evaluation.trec import read_topics  # noqa: E402

PAGE = 10


def start(engine_url: str, store: str, ranker: Optional[str], *extra: str) -> Any:
    if ranker and "--ranker" not in extra:
        extra += ("--ranker", ranker)
    return start_proxy(engine_url, store, *extra)


def quantiles(values: Sequence[float]) -> Dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(ordered), "mean": round(statistics.fmean(ordered), 2), "p50": at(0.5), "p90": at(0.9),
            "p99": at(0.99)}


async def pages(url: str, topics: Sequence[Any], count: int, gap: float = 0.0) -> List[List[Dict[str, Any]]]:
    """Pages 1..count of every topic, in order; wall ms and rerank header of each."""
    out: List[List[Dict[str, Any]]] = []
    async with SearchClient(url, timeout=120) as client:
        for topic in topics:
            row = []
            for page in range(count):
                body = dict(search_body(topic.text, ("title", "text"), PAGE), **{"from": page * PAGE})
                started = time.perf_counter()
                reply = await client.request("POST", f"/{INDEX}/_search", json_body=body)
                wall = (time.perf_counter() - started) * 1e3
                header = reply.header_values("X-Selproxy-Rerank")
                row.append({"wall_ms": wall, "rerank": header[0] if header else None,
                            "ids": [h["_id"] for h in reply.body["hits"]["hits"]]})
            out.append(row)
            if gap:
                await asyncio.sleep(gap)
    return out


def page_summary(rows: List[List[Dict[str, Any]]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for n in range(len(rows[0])):
        cells = [row[n] for row in rows]
        out[f"page{n + 1}"] = quantiles([c["wall_ms"] for c in cells])
        headers: Dict[str, int] = {}
        for c in cells:
            key = str(c["rerank"]).split("; partial")[0]
            headers[key] = headers.get(key, 0) + 1
        out[f"page{n + 1}"]["rerank"] = headers
    return out


async def phase_pages(engine_url: str, topics: Sequence[Any], store: str, ranker: Optional[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"engine": page_summary(await pages(engine_url, topics, 3))}
    for label, flags in (("selproxy", ()), ("selproxy --no-window-cache", ("--no-window-cache",))):
        proc, url = start(engine_url, store, ranker, *flags)
        try:
            await wait_ready(url)
            await pages(url, topics[:10], 1)   # warm-up: the model's first calls
            rows = await pages(url, topics, 3)
            out[label] = page_summary(rows)
            if label == "selproxy":
                out["cache_status"] = (await status(url))["search"]["window_cache"]
                cached = rows
            else:
                # The same pages, cached or not: the cache changes no result.
                out["identical_pages"] = sum(a[n]["ids"] == b[n]["ids"] for a, b in zip(cached, rows)
                                             for n in range(3))
        finally:
            proc.stop()
    return out


async def phase_shadow(engine_url: str, topics: Sequence[Any], store: str, ranker: Optional[str],
                       gaps: Sequence[float] = (0.0, 0.1)) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for gap in gaps:
        suffix = "" if not gap else f", {gap * 1e3:.0f} ms gap"
        out["engine" + suffix] = quantiles([r[0]["wall_ms"] for r in await pages(engine_url, topics, 1, gap)])
        for label, flags in (("selproxy --ranker none", ("--ranker", "none")), ("selproxy --shadow", ("--shadow",))):
            proc, url = start(engine_url, store, ranker, *flags)
            try:
                await wait_ready(url)
                await pages(url, topics[:10], 1)
                rows = await pages(url, topics, 1, gap)
                out[label + suffix] = quantiles([r[0]["wall_ms"] for r in rows])
                if "--shadow" in flags:
                    await asyncio.sleep(2.0)
                    shadow = (await status(url))["search"]["shadow"]
                    shadow.pop("recent", None)
                    out[label + suffix]["shadow"] = shadow
            finally:
                proc.stop()
    return out


async def benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    topics = read_topics(os.path.join(args.data, "cran.qry.xml"), ids="ordinal")
    if args.queries:
        topics = topics[:args.queries]
    engine, engine_url = start_engine()
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-relops-") as work:
        os.environ["XDG_CACHE_HOME"] = os.path.join(work, "xdg-default")
        store = os.path.join(work, "store.sqlite3")
        try:
            await load_when_up(engine_url, args.data)
            if args.ranker is None:
                results["embed"] = run_embed(engine_url, store)
            phases = args.phases.split(",")
            if "pages" in phases:
                results["pages"] = await phase_pages(engine_url, topics, store, args.ranker)
                print(json.dumps(results["pages"], indent=1), file=sys.stderr)
            if "shadow" in phases:
                results["shadow"] = await phase_shadow(engine_url, topics, store, args.ranker,
                                                       [float(g) for g in args.gaps.split(",")])
                print(json.dumps(results["shadow"], indent=1), file=sys.stderr)
        finally:
            engine.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=CRANFIELD)
    parser.add_argument("--phases", default="pages,shadow")
    parser.add_argument("--ranker", help="a --ranker for selproxy (default: its default, after selproxy embed)")
    parser.add_argument("--queries", type=int, default=0, help="only the first N queries")
    parser.add_argument("--gaps", default="0,0.1", help="seconds between queries in the shadow phase")
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    import uvloop
    report(uvloop.run(benchmark(args)), args.json, argv=sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
