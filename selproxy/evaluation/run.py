"""Run judged queries through the engine and through the proxy, and score both orders.

Both sides get the same request, ``size`` = the rerank window, so the proxy
reranks exactly the window that the engine's order is scored on (as long as
the proxy's configured ``topn`` is not above it), and Recall@window is the
ceiling that any reranking of that window can reach.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ._client import Reply, SearchClient, SearchClientError, index_path
from .metrics import mrr_at, ndcg_at, percentile, recall_at
from .trec import Qrels, Topic

__all__ = (
    "DEFAULT_FIELDS",
    "SearchResult",
    "RunSummary",
    "Report",
    "search_body",
    "parse_server_timing",
    "run_topics",
    "summarise",
    "judged_topics",
    "evaluate",
)

DEFAULT_FIELDS = ("title", "text")


@dataclass
class SearchResult:
    """One query's answer as the client saw it."""

    topic_id: str
    doc_ids: List[str]
    latency_ms: float
    # From the proxy's ``Server-Timing: rank;dur=…``; None when absent (the engine).
    rank_ms: Optional[float] = None
    # The proxy's ``X-Selproxy-Rerank`` header as tallied (:func:`rerank_kind`).
    rerank: Optional[str] = None
    # ``Server-Timing: encode`` and ``queue``: embedding, and waiting for the model.
    encode_ms: Optional[float] = None
    queue_ms: Optional[float] = None


@dataclass
class RunSummary:
    """Mean relevance over the judged queries, and latency percentiles, for one order."""

    label: str
    queries: int
    ndcg: float
    mrr: float
    recall: float
    latency_p50_ms: float
    latency_p99_ms: float
    rank_p50_ms: Optional[float]
    rank_p99_ms: Optional[float]
    rerank: Dict[str, int] = field(default_factory=dict)
    encode_p50_ms: Optional[float] = None
    queue_p50_ms: Optional[float] = None


@dataclass
class Report:
    index: str
    k: int
    window: int
    topics: int
    judged: int
    runs: List[RunSummary]

    def table(self) -> str:
        """A Markdown table, one row per run, with nDCG's change against the first run."""
        k, n = self.k, self.window
        header = (
            f"| run | nDCG@{k} | vs first | MRR@{k} | Recall@{n} | rank p50 ms | rank p99 ms "
            f"| encode p50 ms | queue p50 ms | search p50 ms | search p99 ms | rerank header |"
        )
        lines = [header, "|" + "---|" * (header.count("|") - 1)]
        base = self.runs[0].ndcg if self.runs else 0.0
        for run in self.runs:
            change = f"{(run.ndcg - base) / base * 100:+.1f}%" if base else "n/a"
            tally = ", ".join(f"{value} {count}" for value, count in sorted(run.rerank.items())) or "-"
            lines.append(
                f"| {run.label} | {run.ndcg:.4f} | {change} | {run.mrr:.4f} | {run.recall:.4f} "
                f"| {_ms(run.rank_p50_ms)} | {_ms(run.rank_p99_ms)} "
                f"| {_ms(run.encode_p50_ms)} | {_ms(run.queue_p50_ms)} "
                f"| {_ms(run.latency_p50_ms)} | {_ms(run.latency_p99_ms)} | {tally} |"
            )
        return "\n".join(lines)

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def _ms(value: Optional[float]) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def search_body(text: str, fields: Sequence[str], size: int) -> Dict[str, Any]:
    """The search sent for one topic: a plain analysed match, the query form every
    Elasticsearch-compatible engine supports and the proxy extracts text from."""
    if len(fields) == 1:
        query: Dict[str, Any] = {"match": {fields[0]: {"query": text}}}
    else:
        query = {"multi_match": {"query": text, "fields": list(fields)}}
    return {"query": query, "size": size}


def parse_server_timing(values: Sequence[str]) -> Dict[str, float]:
    """Durations by metric name from ``Server-Timing`` header values
    (``upstream;dur=3.1, rank;desc="minilm";dur=12.5``), in milliseconds."""
    durations: Dict[str, float] = {}
    for value in values:
        for metric in value.split(","):
            name, *params = (part.strip() for part in metric.split(";"))
            for param in params:
                key, _, number = param.partition("=")
                if name and key.strip().lower() == "dur":
                    try:
                        durations[name] = float(number.strip().strip('"'))
                    except ValueError:
                        pass
    return durations


def rerank_kind(value: str) -> str:
    """An ``X-Selproxy-Rerank`` value as tallied: ``applied``, ``partial``
    (``applied; partial=K/N``), or as it is (``fallback; reason=deadline``)."""
    if value.startswith("applied") and "partial=" in value:
        return "partial"
    if value.startswith("applied"):
        return "applied"
    return value


def _hit_ids(reply: Reply) -> List[str]:
    try:
        hits = reply.body["hits"]["hits"]
    except (KeyError, TypeError):
        raise SearchClientError("a search answer without hits.hits", reply.status, reply.body) from None
    return [str(hit["_id"]) for hit in hits]


async def run_topics(
    client: SearchClient,
    index: str,
    topics: Sequence[Topic],
    *,
    size: int,
    fields: Sequence[str] = DEFAULT_FIELDS,
    warmup: int = 0,
) -> List[SearchResult]:
    """Send one search per topic, one at a time, so that latencies are those of an
    unloaded server; the first ``warmup`` topics are sent once beforehand, unrecorded."""
    path = index_path(index, "_search")
    for topic in topics[:warmup]:
        await client.request("POST", path, json_body=search_body(topic.text, fields, size))
    results = []
    for topic in topics:
        reply = await client.request("POST", path, json_body=search_body(topic.text, fields, size))
        timings = parse_server_timing(reply.header_values("Server-Timing"))
        rerank = reply.header_values("X-Selproxy-Rerank")
        results.append(SearchResult(
            topic.id, _hit_ids(reply), reply.elapsed_ms, timings.get("rank"),
            rerank_kind(rerank[0]) if rerank else None, timings.get("encode"), timings.get("queue"),
        ))
    return results


def judged_topics(topics: Sequence[Topic], qrels: Qrels) -> List[Topic]:
    """The topics with at least one relevant judgement: the only ones a metric can
    say anything about (trec_eval likewise skips unjudged queries)."""
    return [topic for topic in topics if any(rel > 0 for rel in qrels.get(topic.id, {}).values())]


def summarise(label: str, results: Sequence[SearchResult], qrels: Qrels, *, k: int, window: int) -> RunSummary:
    scored = [result for result in results if result.topic_id in qrels]
    count = len(scored) or 1

    def mean(metric: Callable[[Sequence[str], Mapping[str, int], int], float], cutoff: int) -> float:
        return sum(metric(r.doc_ids, qrels[r.topic_id], cutoff) for r in scored) / count

    latencies = [result.latency_ms for result in results]
    rank_times = [result.rank_ms for result in results if result.rank_ms is not None]
    return RunSummary(
        label=label,
        queries=len(scored),
        ndcg=mean(ndcg_at, k),
        mrr=mean(mrr_at, k),
        recall=mean(recall_at, window),
        latency_p50_ms=percentile(latencies, 50),
        latency_p99_ms=percentile(latencies, 99),
        rank_p50_ms=percentile(rank_times, 50) if rank_times else None,
        rank_p99_ms=percentile(rank_times, 99) if rank_times else None,
        rerank=dict(Counter(result.rerank for result in results if result.rerank is not None)),
        encode_p50_ms=_p50([r.encode_ms for r in results]),
        queue_p50_ms=_p50([r.queue_ms for r in results]),
    )


def _p50(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return percentile(present, 50) if present else None


async def evaluate(
    engine_url: str,
    index: str,
    topics: Sequence[Topic],
    qrels: Qrels,
    *,
    proxies: Optional[Mapping[str, str]] = None,
    k: int = 10,
    window: int = 50,
    fields: Sequence[str] = DEFAULT_FIELDS,
    warmup: int = 2,
    timeout: float = 60.0,
) -> Report:
    """Score the engine's own order, then each proxy's reranked order (``proxies``
    maps a label to the proxy's URL), on the judged ``topics``."""
    if window < k:
        raise ValueError(f"the window ({window}) must hold at least k ({k}) hits")
    judged = judged_topics(topics, qrels)
    runs = []
    targets = [("engine", engine_url), *(proxies or {}).items()]
    for label, url in targets:
        async with SearchClient(url, timeout=timeout) as client:
            results = await run_topics(client, index, judged, size=window, fields=fields, warmup=warmup)
        runs.append(summarise(label, results, qrels, k=k, window=window))
    return Report(index, k, window, len(topics), len(judged), runs)
