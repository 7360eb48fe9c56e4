"""Relevance on Cranfield: the engine's BM25 order against each ranker through selproxy.

Indexes the Cranfield collection (read in place from ../shared/data/cranfield,
never copied) into the embedded engine, runs the 225 judged queries against
the engine directly, then through a selproxy started in front of it once per
ranker, and prints nDCG@10, MRR@10, Recall@window and rank latency.

    python benchmarks/relevance.py                        # identity, bm25, minilm
    python benchmarks/relevance.py --ranker minilm --ranker 'fusion=minilm fusion_weight=0.3' --write

A ``--ranker`` is ``[LABEL=]NAME [key=value…]``.  By default selproxy runs in
this process (``selproxy.Proxy`` with the search service and the ranker built
from NAME and the key=value options); with ``--proxy-command`` it runs as its
own process instead, and the words after NAME are added to its command line.  Reference on this machine: SQLite
FTS5's BM25 order gives nDCG@10 0.37; all-MiniLM-L6-v2 over its top 50, 0.42.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from typing import AsyncIterator, List, Optional, Sequence, Tuple

import uvloop

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from selproxy.evaluation._client import SearchClient, SearchClientError  # noqa: E402
from selproxy.evaluation.loader import load_collection  # noqa: E402
from selproxy.evaluation.run import Report, judged_topics, run_topics, summarise  # noqa: E402
from selproxy.evaluation.trec import read_collection, read_qrels, read_topics  # noqa: E402

CRANFIELD = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data", "cranfield")
DEFAULT_RANKERS = ("identity", "bm25", "minilm")
# Short names not (yet) registered as entry points in a source checkout.
RANKER_PATHS = {"minilm": "selproxy.rankers.minilm:MiniLMRanker"}


def parse_ranker(spec: str) -> Tuple[str, List[str]]:
    label, sep, rest = spec.partition("=")
    if not sep or " " in label:
        label, rest = spec, spec
    args = shlex.split(rest)
    if not args:
        raise argparse.ArgumentTypeError(f"no ranker named in {spec!r}")
    return label.strip(), args


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def embedded_engine() -> AsyncIterator[str]:
    from selproxy.engine import Engine

    async with Engine(data=":memory:") as engine:
        yield engine.url


@contextlib.asynccontextmanager
async def proxy_in_process(upstream: str, ranker: List[str], window: int, deadline: float) -> AsyncIterator[str]:
    """selproxy on this loop: the search service with the ranker, in front of ``upstream``."""
    from selproxy.rankers.registry import available_rankers, parse_ranker_options, resolve_ranker
    from selproxy.search.config import SearchConfig
    from selproxy.search.service import SearchService
    from selproxy.server import Proxy

    name = ranker[0] if ranker[0] in available_rankers() else RANKER_PATHS.get(ranker[0], ranker[0])
    model = resolve_ranker(name, parse_ranker_options(ranker[1:]))
    warmup = getattr(model, "warmup", None)
    if callable(warmup):
        await asyncio.get_running_loop().run_in_executor(None, warmup)
    service = SearchService(model, SearchConfig(topn=window, rank_deadline=deadline))
    try:
        async with Proxy(upstream=upstream, listen="127.0.0.1:0", routes=service.routes()) as proxy:
            yield proxy.url
    finally:
        await service.aclose()


@contextlib.asynccontextmanager
async def proxy_process(template: str, upstream: str, ranker: List[str], start_timeout: float) -> AsyncIterator[str]:
    """Start selproxy as its own process (as a user would) and wait until its
    status endpoint answers, which it does only after the model warmed up."""
    port = free_port()
    command = shlex.split(template.format(python=shlex.quote(sys.executable), port=port, upstream=upstream,
                                          ranker=shlex.quote(ranker[0])))
    command += ranker[1:]
    search_path = [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, search_path)))
    process = await asyncio.create_subprocess_exec(
        *command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        async with SearchClient(url, timeout=2.0) as probe:
            while True:
                if process.returncode is not None:
                    assert process.stderr is not None
                    errors = (await process.stderr.read()).decode(errors="replace")[-2000:]
                    raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}: {errors}")
                with contextlib.suppress(SearchClientError):
                    await probe.request("GET", "/_selproxy/status")
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"selproxy did not report ready within {start_timeout:.0f} s")
                await asyncio.sleep(0.2)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()


async def benchmark(args: argparse.Namespace) -> Report:
    topics = read_topics(os.path.join(args.data, "cran.qry.xml"), ids="ordinal")
    qrels = read_qrels(os.path.join(args.data, "cranqrel.trec.txt"))
    judged = judged_topics(topics, qrels)
    fields = [name for name in args.fields.split(",") if name]
    engine = contextlib.nullcontext(args.engine_url) if args.engine_url else embedded_engine()
    runs = []
    async with engine as engine_url:
        async with SearchClient(engine_url, timeout=args.timeout) as upstream:
            if not args.skip_load:
                docs = read_collection(os.path.join(args.data, "cran.all.1400.xml"))
                loaded = await load_collection(upstream, args.index, docs, recreate=True)
                print(f"indexed {loaded.indexed} documents in {loaded.seconds:.1f} s", file=sys.stderr)
            results = await run_topics(upstream, args.index, judged, size=args.window, fields=fields,
                                       warmup=args.warmup)
        runs.append(summarise("engine BM25", results, qrels, k=args.k, window=args.window))
        for label, ranker in args.rankers:
            print(f"ranker {label}: starting selproxy", file=sys.stderr)
            if args.proxy_command:
                proxy = proxy_process(args.proxy_command, engine_url, ranker, args.start_timeout)
            else:
                proxy = proxy_in_process(engine_url, ranker, args.window, args.rank_deadline)
            async with proxy as proxy_url:
                async with SearchClient(proxy_url, timeout=args.timeout) as client:
                    results = await run_topics(client, args.index, judged, size=args.window, fields=fields,
                                               warmup=args.warmup)
            runs.append(summarise(label, results, qrels, k=args.k, window=args.window))
            if set(runs[-1].rerank) != {"applied"}:
                print(f"warning: not every search of {label!r} was reranked: {runs[-1].rerank}", file=sys.stderr)
    return Report(args.index, args.k, args.window, len(topics), len(judged), runs)


def results_entry(report: Report, argv: Sequence[str]) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                text=True, check=False).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"\n## Relevance on Cranfield ({now})\n",
        f"- commit {commit}; {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}",
        f"- command: `python benchmarks/relevance.py {' '.join(shlex.quote(arg) for arg in argv)}`",
        f"- {report.judged} judged queries of {report.topics}; window {report.window} (every run reranks "
        f"the engine's top {report.window}); rank times from selproxy's Server-Timing header",
        "",
        report.table(),
        "",
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranker", dest="rankers", type=parse_ranker, action="append",
                        help="[LABEL=]NAME [options]: a ranker to run through selproxy; repeatable "
                             f"(default: {', '.join(DEFAULT_RANKERS)})")
    parser.add_argument("--data", default=CRANFIELD, help="the Cranfield directory (default %(default)s)")
    parser.add_argument("--engine-url", help="use this running engine instead of starting the embedded one")
    parser.add_argument("--skip-load", action="store_true", help="the index is already loaded")
    parser.add_argument("--index", default="cranfield")
    parser.add_argument("--fields", default="title,text", help="fields the query searches (default %(default)s)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--window", type=int, default=50, help="hits per search = the rerank window")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds for selproxy to be ready")
    parser.add_argument("--rank-deadline", type=float, default=60.0,
                        help="selproxy's rank deadline in seconds (in-process mode); high by default so that "
                             "relevance is measured on reranked orders, not on fallbacks (default %(default)s)")
    parser.add_argument("--proxy-command",
                        help="start selproxy as a process with this command instead of in this one; "
                             "{python} {port} {upstream} {ranker} are filled in, e.g. '{python} -m selproxy "
                             "--listen 127.0.0.1:{port} --upstream {upstream} --ranker {ranker}'")
    parser.add_argument("--engine-only", action="store_true", help="score the engine's order alone")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    parser.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.engine_only:
        args.rankers = []
    elif args.rankers is None:
        args.rankers = [parse_ranker(name) for name in DEFAULT_RANKERS]
    # uvloop: selproxy's core uses its buffered-protocol path when in this process.
    report = uvloop.run(benchmark(args))
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    if args.write:
        with open(os.path.join(HERE, "RESULTS.md"), "a", encoding="utf-8") as results:
            results.write(results_entry(report, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
