"""``selproxy demo``: the standard library's documentation, searched by the engine
alone and through selproxy, side by side.

The flow takes URLs or running objects, so the caller chooses what runs:

    from selproxy.demo import app
    await app.run_demo(Engine(data=":memory:"), lambda upstream: Proxy(upstream=upstream, ranker="minilm"))

or, with both already running, ``await app.load_corpus(engine_url)`` and then
``await app.show_comparisons(engine_url, proxy_url)``.
"""
from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any, AsyncContextManager, Callable, List, Optional, Sequence, TextIO
from urllib.parse import quote_plus

from ..evaluation._client import SearchClient, index_path
from ..evaluation.loader import LoadReport, load_collection
from ..evaluation.run import search_body, parse_server_timing
from .corpus import Passage, build_passages

__all__ = (
    "INDEX",
    "EXAMPLE_QUERIES",
    "Comparison",
    "load_corpus",
    "compare",
    "format_comparison",
    "curl_examples",
    "show_comparisons",
    "run_demo",
)

INDEX = "pydocs"
FIELDS = ("title", "text")
EXAMPLE_QUERIES = (
    "how do I read a file line by line",
    "run a shell command and capture its output",
    "parse command line arguments",
    "how to wait for several things concurrently",
    "compare two sequences and show the differences",
)


@dataclass
class Comparison:
    """One query's top hits as the engine orders them and as selproxy reranks them."""

    query: str
    engine_titles: List[str]
    reranked_titles: List[str]
    engine_ms: float
    proxy_ms: float
    # From the proxy's Server-Timing header, when it sent one.
    rank_ms: Optional[float] = None
    rerank: Optional[str] = None
    notes: List[str] = field(default_factory=list)


async def load_corpus(
    engine_url: str,
    *,
    index: str = INDEX,
    passages: Optional[Sequence[Passage]] = None,
    out: TextIO = sys.stdout,
) -> LoadReport:
    """Build the stdlib passages (unless given) and index them, replacing ``index``."""
    if passages is None:
        started = time.perf_counter()
        # The walk blocks for a second or two; keep the loop (and any engine
        # served from it) responsive meanwhile.
        passages = await asyncio.get_running_loop().run_in_executor(None, build_passages)
        print(f"built {len(passages)} passages from Python {sys.version.split()[0]}'s documentation "
              f"in {time.perf_counter() - started:.1f} s", file=out)
    docs = ({"_id": passage.id, **passage.source()} for passage in passages)
    async with SearchClient(engine_url) as client:
        report = await load_collection(client, index, docs, recreate=True)
    print(f"indexed {report.indexed} passages into {index!r} in {report.seconds:.1f} s", file=out)
    return report


async def compare(
    engine_url: str, proxy_url: str, query: str, *, index: str = INDEX, k: int = 5
) -> Comparison:
    """Ask the engine and the proxy the same search for ``k`` hits; the proxy
    widens it to its window and reranks."""
    body = search_body(query, FIELDS, k)
    path = index_path(index, "_search")
    async with SearchClient(engine_url) as engine:
        direct = await engine.request("POST", path, json_body=body)
    async with SearchClient(proxy_url) as proxy:
        reranked = await proxy.request("POST", path, json_body=body)
    rerank = reranked.header_values("X-Selproxy-Rerank")
    return Comparison(
        query=query,
        engine_titles=_titles(direct.body),
        reranked_titles=_titles(reranked.body),
        engine_ms=direct.elapsed_ms,
        proxy_ms=reranked.elapsed_ms,
        rank_ms=parse_server_timing(reranked.header_values("Server-Timing")).get("rank"),
        rerank=rerank[0] if rerank else None,
    )


def _titles(body: Any) -> List[str]:
    titles = []
    for hit in body["hits"]["hits"]:
        title = str(hit.get("_source", {}).get("title", hit.get("_id")))
        # Long docstrings span several passages ("open#0", "open#1"…): tell them apart.
        _, sep, part = str(hit.get("_id", "")).rpartition("#")
        titles.append(f"{title} (part {int(part) + 1})" if sep and part.isdigit() and part != "0" else title)
    return titles


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_comparison(comparison: Comparison, *, width: int = 44) -> str:
    """Two columns, engine order on the left and reranked order on the right."""
    rank = f", rank {comparison.rank_ms:.0f} ms" if comparison.rank_ms is not None else ""
    status = f" [{comparison.rerank}]" if comparison.rerank and comparison.rerank != "applied" else ""
    left_head = f"engine order ({comparison.engine_ms:.0f} ms)"
    right_head = f"selproxy reranked ({comparison.proxy_ms:.0f} ms{rank}){status}"
    lines = [f"\n  {comparison.query!r}", f"      {left_head:<{width}}  {right_head}"]
    rows = max(len(comparison.engine_titles), len(comparison.reranked_titles))
    for row in range(rows):
        left = comparison.engine_titles[row] if row < len(comparison.engine_titles) else ""
        right = comparison.reranked_titles[row] if row < len(comparison.reranked_titles) else ""
        lines.append(f"  {row + 1:>2}. {_cell(left, width):<{width}}  {_cell(right, width)}")
    return "\n".join(lines)


def curl_examples(proxy_url: str, engine_url: str, *, index: str = INDEX) -> str:
    """Commands to try by hand against the running demo."""
    body = json.dumps(search_body(EXAMPLE_QUERIES[0], FIELDS, 3))
    search = f"{proxy_url}{index_path(index, '_search')}"
    simple = f"{search}?q={quote_plus(EXAMPLE_QUERIES[0])}&size=3"
    return "\n".join([
        "\nTry it (selproxy answers exactly as the engine would, with reranked hits):",
        f"  curl -s {shlex.quote(simple)}",
        f"  curl -s {search} -H 'Content-Type: application/json' -d {shlex.quote(body)}",
        "  # the same search, showing selproxy's X-Selproxy-Rerank and Server-Timing headers:",
        f"  curl -si {search} -H 'Content-Type: application/json' -d {shlex.quote(body)} | head -20",
        "  # the engine's own order, for comparison:",
        f"  curl -s {engine_url}{index_path(index, '_search')} -H 'Content-Type: application/json' "
        f"-d {shlex.quote(body)}",
        "  # selproxy's counters:",
        f"  curl -s {proxy_url}/_selproxy/status",
    ])


async def show_comparisons(
    engine_url: str,
    proxy_url: str,
    *,
    queries: Sequence[str] = EXAMPLE_QUERIES,
    index: str = INDEX,
    k: int = 5,
    out: TextIO = sys.stdout,
) -> List[Comparison]:
    """Run the example queries both ways and print them side by side."""
    comparisons = []
    for query in queries:
        comparison = await compare(engine_url, proxy_url, query, index=index, k=k)
        print(format_comparison(comparison), file=out)
        comparisons.append(comparison)
    return comparisons


def _url_of(entered: Any, manager: Any) -> str:
    for candidate in (entered, manager):
        if isinstance(candidate, str):
            return candidate
        url = getattr(candidate, "url", None)
        if isinstance(url, str):
            return url
    raise TypeError(f"cannot tell the URL of {manager!r}: give it a .url")


async def run_demo(
    engine: AsyncContextManager[Any],
    make_proxy: Callable[[str], AsyncContextManager[Any]],
    *,
    queries: Sequence[str] = EXAMPLE_QUERIES,
    index: str = INDEX,
    serve_forever: bool = True,
    out: TextIO = sys.stdout,
) -> List[Comparison]:
    """Start the engine, load the corpus, start the proxy in front of it, show
    the example searches and the curl commands, then keep serving until cancelled.

    ``engine`` and ``make_proxy(engine_url)`` are async context managers whose
    entered value (or themselves) has a ``.url``.
    """
    async with engine as running_engine:
        engine_url = _url_of(running_engine, engine)
        print(f"engine listening on {engine_url}", file=out)
        await load_corpus(engine_url, index=index, out=out)
        proxy = make_proxy(engine_url)
        async with proxy as running_proxy:
            proxy_url = _url_of(running_proxy, proxy)
            print(f"selproxy listening on {proxy_url}, in front of {engine_url}", file=out)
            comparisons = await show_comparisons(engine_url, proxy_url, queries=queries, index=index, out=out)
            print(curl_examples(proxy_url, engine_url, index=index), file=out)
            out.flush()
            if serve_forever:
                print("\nserving; press Ctrl-C to stop", file=out)
                await asyncio.Event().wait()
    return comparisons
