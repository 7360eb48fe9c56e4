"""Relevance metrics over ranked lists of document ids, and latency percentiles.

Conventions follow trec_eval, so numbers are comparable with published ones:

* graded judgements use linear gain (``rel``, not ``2**rel - 1``) and the
  ``log2(rank + 1)`` discount, as trec_eval's ``ndcg_cut`` does;
* a judgement of 0 or below means "not relevant";
* documents without a judgement count as not relevant.

Queries without any relevant judgement are the caller's business: the mean
helpers in :mod:`selproxy.evaluation.run` leave them out and say how many.
"""
from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence, Set

__all__ = ("ndcg_at", "mrr_at", "recall_at", "percentile", "rbo", "sign_test")

Judgements = Mapping[str, int]


def ndcg_at(ranking: Sequence[str], judged: Judgements, k: int) -> float:
    """Normalised discounted cumulative gain of the first ``k`` of ``ranking``.

    Returns 0.0 when the query has no relevant document, since no ordering can
    be better than another then.
    """
    ideal = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:k]
    if not ideal:
        return 0.0
    ideal_dcg = sum(rel / math.log2(rank + 2) for rank, rel in enumerate(ideal))
    dcg = 0.0
    for rank, doc_id in enumerate(ranking[:k]):
        rel = judged.get(doc_id, 0)
        if rel > 0:
            dcg += rel / math.log2(rank + 2)
    return dcg / ideal_dcg


def mrr_at(ranking: Sequence[str], judged: Judgements, k: int) -> float:
    """Reciprocal rank of the first relevant document within the first ``k``, else 0."""
    for rank, doc_id in enumerate(ranking[:k], start=1):
        if judged.get(doc_id, 0) > 0:
            return 1.0 / rank
    return 0.0


def recall_at(ranking: Sequence[str], judged: Judgements, k: int) -> float:
    """Share of the relevant documents found within the first ``k``; 0 if none are relevant."""
    relevant = {doc_id for doc_id, rel in judged.items() if rel > 0}
    if not relevant:
        return 0.0
    # A ranking that repeats an id must not count it twice.
    found = relevant.intersection(ranking[:k])
    return len(found) / len(relevant)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between the
    closest ranks, which is numpy's default method; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q!r}")
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def rbo(first: Sequence[Hashable], second: Sequence[Hashable], p: float = 0.9) -> float:
    """Rank-biased overlap of two rankings, extrapolated (Webber, Moffat and
    Zobel, "A similarity measure for indefinite rankings", TOIS 2010, eq. 32),
    over the depth of the shorter one: 1.0 for the same order, 0.0 for no
    item in common; ``p`` weighs the top (0.9: the first 10 ranks carry
    about 86 % of the weight).  An item repeated within a ranking counts once."""
    if not 0 < p < 1:
        raise ValueError(f"p must be within (0, 1), not {p!r}")
    depth = min(len(first), len(second))
    if depth == 0:
        return 0.0
    seen_first: Set[Hashable] = set()
    seen_second: Set[Hashable] = set()
    overlap = 0
    weighted = 0.0
    for d in range(1, depth + 1):
        a, b = first[d - 1], second[d - 1]
        if a == b:
            if a not in seen_first or a not in seen_second:
                overlap += 1
        else:
            if a in seen_second and a not in seen_first:
                overlap += 1
            if b in seen_first and b not in seen_second:
                overlap += 1
        seen_first.add(a)
        seen_second.add(b)
        weighted += overlap / d * p ** d
    return overlap / depth * p ** depth + (1 - p) / p * weighted


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial sign test of ``wins`` against ``losses``
    (ties left out by the caller): the probability, were both sides equally
    likely to win each comparison, of a split at least this uneven.  Sums
    the binomial(n, 1/2) tail in log space, so it stays exact to float
    precision for any n."""
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses must be counts")
    n = wins + losses
    if n == 0:
        return 1.0
    low = min(wins, losses)
    if 2 * low == n:
        return 1.0
    log_half = n * math.log(0.5)
    log_n = math.lgamma(n + 1)
    tail = math.fsum(math.exp(log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half)
                     for i in range(low + 1))
    return min(1.0, 2.0 * tail)
