"""``selproxy eval replay``: re-rank captured windows offline with other rankers.

Reads the JSON lines ``--capture`` wrote (``search`` and ``click`` lines; any
number of files, rotated ones included) and ranks each captured window again
with each ``--ranker``, from the texts the capture holds.  A capture made
without ``--capture-texts`` holds only each text's hash: :func:`fetch_texts`
then reads the documents from the engine (``_mget``), makes their texts as
the proxy does (the same ``--text-field`` specs), and keeps a window only if
every text hashes to what was captured (a document changed since, or other
text fields, would replay something the live ranker never saw).
The replayed ranker gets exactly what the live one got: the query, the
window's texts, their store keys and the engine's scores; its order is made
as the proxy makes a page's (highest score first, ties in engine order).

Rows of the report: ``engine`` (the window as the engine returned it),
``live`` (the order the proxy served, as captured) and one per ranker.
Judgements come from TREC qrels (``--qrels``, with ``--topics`` to name the
captured queries' topics), else from the captured clicks (a clicked hit is
relevant, grade 1).  Without either, the report has no nDCG, only the
agreement with the live order and the positions the clicks would move to.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .metrics import mrr_at, ndcg_at, percentile, rbo
from .trec import Qrels, Topic

__all__ = ("CapturedSearch", "read_capture", "fetch_texts", "replay_rankers", "ReplayReport", "report")


class CaptureFormatError(ValueError):
    """A capture line that is not what ``--capture`` writes."""


@dataclass
class CapturedSearch:
    query: str
    ids: List[str]
    window: List[Dict[str, Any]]
    live_order: List[int]
    result_set: Optional[str]
    rank_ms: Optional[float]
    texts: Optional[List[str]]


def read_capture(paths: Iterable[str]) -> Tuple[List[CapturedSearch], Dict[str, List[Dict[str, Any]]]]:
    """The captured searches, and the clicks by result set."""
    searches: List[CapturedSearch] = []
    clicks: Dict[str, List[Dict[str, Any]]] = {}
    for path in paths:
        with open(path, encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    kind = record["type"]
                except (ValueError, KeyError, TypeError):
                    raise CaptureFormatError(f"{path}:{number}: not a capture line") from None
                if kind == "click":
                    clicks.setdefault(str(record.get("result_set")), []).append(record)
                elif kind == "search":
                    window = record["window"]
                    texts = [hit.get("text") for hit in window]
                    # "live" is the order served: for an interleaved page, the merge.
                    served = (record.get("interleaving") or {}).get("order") or record.get("order")
                    searches.append(CapturedSearch(
                        query=record["query"], ids=[str(hit.get("_id")) for hit in window], window=window,
                        live_order=list(served or range(len(window))),
                        result_set=record.get("result_set"),
                        rank_ms=(record.get("timings_ms") or {}).get("rank"),
                        texts=texts if all(isinstance(t, str) for t in texts) else None))
    return searches, clicks


def fetch_texts(searches: Sequence[CapturedSearch], upstream: str, text_fields: Sequence[str] = (),
                max_field_chars: int = 2000, timeout: float = 60.0) -> Tuple[List[CapturedSearch], int]:
    """The searches with their texts, those without read from the engine at
    ``upstream`` with ``_mget``; and how many were dropped because a text
    no longer hashes to the captured one."""
    import hashlib
    import urllib.request

    from ..search.extract import parse_field_spec
    from ..search.service import hit_texts
    specs = [parse_field_spec(name, max_field_chars) for name in text_fields]
    kept: List[CapturedSearch] = []
    stale = 0
    for search in searches:
        if search.texts is not None:
            kept.append(search)
            continue
        body = json.dumps({"docs": [{"_index": h.get("_index"), "_id": h.get("_id")}
                                    for h in search.window]}).encode()
        request = urllib.request.Request(upstream.rstrip("/") + "/_mget", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            docs = json.loads(answer.read()).get("docs", [])
        hits = [{"_index": d.get("_index"), "_id": d.get("_id"), "_source": d.get("_source", {})}
                if isinstance(d, dict) and d.get("found") else {} for d in docs]
        texts = hit_texts(hits, specs, max_field_chars) if len(hits) == len(search.window) else []
        hashes = [hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]
        if hashes and hashes == [h.get("text_sha1") for h in search.window]:
            search.texts = texts
            kept.append(search)
        else:
            stale += 1
    return kept, stale


def _order(scores: Sequence[float], n: int) -> List[int]:
    from ..search.interleave import ranked_order
    return ranked_order(scores, n)


async def _rank_all(spec: str, searches: Sequence[CapturedSearch], deadline: float
                    ) -> Tuple[List[List[int]], List[float]]:
    from ..rankers.adapter import RankerAdapter, RankJob
    from ..rankers.registry import check_ranker, resolve_ranker
    from ..search.service import _engine_scores, document_key
    options = check_ranker(spec, {"batching": False})
    adapter = RankerAdapter(resolve_ranker(spec, options), threads=1, max_pending=4)
    orders: List[List[int]] = []
    latencies: List[float] = []
    try:
        for search in searches:
            assert search.texts is not None
            hits = [{"_index": h.get("_index"), "_id": h.get("_id"), "_score": h.get("engine_score")}
                    for h in search.window]
            keys = [document_key(h, t) for h, t in zip(hits, search.texts)] if adapter.wants_keys else None
            engine = _engine_scores(hits) if adapter.wants_engine_scores else None
            started = time.perf_counter()
            ranked, _timing = await adapter.rank([RankJob(search.query, search.texts, keys, engine)], deadline)
            latencies.append((time.perf_counter() - started) * 1e3)
            orders.append(_order(ranked[0], len(search.ids)))
    finally:
        aclose = getattr(adapter.ranker, "aclose", None)
        if callable(aclose):
            await aclose()
        adapter.close()
    return orders, latencies


def replay_rankers(specs: Sequence[str], searches: Sequence[CapturedSearch], deadline: float = 60.0
                   ) -> Dict[str, Tuple[List[List[int]], List[float]]]:
    """Each ranker's order of every window, and its time per window (ms)."""
    results: Dict[str, Tuple[List[List[int]], List[float]]] = {}
    for spec in specs:
        label = spec if spec not in results else f"{spec}#{len(results) + 1}"
        results[label] = asyncio.run(_rank_all(spec, searches, deadline))
    return results


@dataclass
class RowSummary:
    label: str
    queries: int
    ndcg: Optional[float]
    mrr: Optional[float]
    #: Against the baseline row, per query, by nDCG (or RBO without judgements).
    wins: int = 0
    losses: int = 0
    ties: int = 0
    rbo_live: Optional[float] = None
    top_overlap_live: Optional[float] = None
    #: Mean 1-based rank of the clicked hits in this row's order.
    click_rank: Optional[float] = None
    rank_p50_ms: Optional[float] = None
    rank_p99_ms: Optional[float] = None


@dataclass
class ReplayReport:
    judgements: str  # "qrels", "clicks" or "none"
    k: int
    searches: int
    judged: int
    baseline: str
    rows: List[RowSummary]
    rbo: Dict[str, float] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        k = self.k
        header = (f"| order | queries | nDCG@{k} | MRR@{k} | vs {self.baseline}: wins/losses/ties "
                  f"| RBO vs live | top-{k} overlap vs live | click rank | rank p50 ms | rank p99 ms |")
        lines = [header, "|" + "---|" * (header.count("|") - 1)]
        for row in self.rows:
            lines.append(f"| {row.label} | {row.queries} | {_num(row.ndcg)} | {_num(row.mrr)} "
                         f"| {row.wins}/{row.losses}/{row.ties} | {_num(row.rbo_live)} "
                         f"| {_num(row.top_overlap_live)} | {_num(row.click_rank, 2)} "
                         f"| {_num(row.rank_p50_ms, 1)} | {_num(row.rank_p99_ms, 1)} |")
        lines.append("")
        pairs = ", ".join(f"{pair} {value:.4f}" for pair, value in self.rbo.items())
        lines.append(f"RBO (p=0.9) between orders: {pairs}")
        return "\n".join(lines)


def _num(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def report(searches: Sequence[CapturedSearch], clicks: Mapping[str, List[Dict[str, Any]]],
           replayed: Mapping[str, Tuple[List[List[int]], List[float]]], *,
           qrels: Optional[Qrels] = None, topics: Sequence[Topic] = (), k: int = 10) -> ReplayReport:
    """Score every order of every captured search (see the module docstring)."""
    orders: Dict[str, List[List[int]]] = {
        "engine": [list(range(len(s.ids))) for s in searches],
        "live": [s.live_order for s in searches]}
    latency: Dict[str, List[float]] = {"live": [s.rank_ms for s in searches if s.rank_ms is not None]}
    for label, (ranked, times) in replayed.items():
        orders[label] = ranked
        latency[label] = times
    ranked_ids = {label: [[s.ids[i] for i in order] for s, order in zip(searches, per_search)]
                  for label, per_search in orders.items()}

    # The judgements of each search (None: unjudged).
    judged: List[Optional[Dict[str, int]]] = []
    mode = "none"
    if qrels is not None:
        mode = "qrels"
        by_text: Dict[str, str] = {}
        for topic in topics:
            by_text.setdefault(" ".join(topic.text.split()), topic.id)
        for s in searches:
            topic_id = by_text.get(" ".join(s.query.split()))
            grades = qrels.get(topic_id, {}) if topic_id is not None else {}
            judged.append(grades if any(g > 0 for g in grades.values()) else None)
    elif any(clicks.get(s.result_set or "") for s in searches):
        mode = "clicks"
        for s in searches:
            clicked = {str(c.get("_id")): 1 for c in clicks.get(s.result_set or "", [])}
            judged.append(clicked or None)
    else:
        judged = [None] * len(searches)

    baseline = "live"
    per_query: Dict[str, List[Optional[float]]] = {}
    rows = []
    for label, lists in ranked_ids.items():
        scores = [ndcg_at(r, j, k) if j is not None else None for r, j in zip(lists, judged)]
        per_query[label] = scores
        present = [x for x in scores if x is not None]
        mrrs = [mrr_at(r, j, k) for r, j in zip(lists, judged) if j is not None]
        row = RowSummary(label, len(present) if mode != "none" else len(lists),
                         _mean(present) if mode != "none" else None,
                         _mean(mrrs) if mode != "none" else None)
        live_lists = ranked_ids["live"]
        row.rbo_live = _mean([rbo(r, live, 0.9) for r, live in zip(lists, live_lists)])
        row.top_overlap_live = _mean([len(set(r[:k]) & set(live[:k])) / max(1, min(k, len(live)))
                                      for r, live in zip(lists, live_lists)])
        positions = []
        for s, r in zip(searches, lists):
            for c in clicks.get(s.result_set or "", []):
                if str(c.get("_id")) in r:
                    positions.append(r.index(str(c.get("_id"))) + 1)
        row.click_rank = _mean(positions)
        times = latency.get(label, [])
        if times:
            row.rank_p50_ms, row.rank_p99_ms = percentile(times, 50), percentile(times, 99)
        rows.append(row)
    for row in rows:
        for mine, theirs, r, live in zip(per_query[row.label], per_query[baseline],
                                         ranked_ids[row.label], ranked_ids[baseline]):
            if mode == "none":
                mine, theirs = rbo(r, live, 0.9), 1.0
            if mine is None or theirs is None:
                continue
            if mine > theirs:
                row.wins += 1
            elif mine < theirs:
                row.losses += 1
            else:
                row.ties += 1
    labels = list(ranked_ids)
    pairs = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            value = _mean([rbo(x, y, 0.9) for x, y in zip(ranked_ids[a], ranked_ids[b])])
            if value is not None:
                pairs[f"{a}~{b}"] = value
    return ReplayReport(mode, k, len(searches), sum(j is not None for j in judged), baseline, rows, pairs)
