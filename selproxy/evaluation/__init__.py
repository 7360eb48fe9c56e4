"""Relevance evaluation: TREC inputs, metrics, loading a collection and scoring
engine order against reranked order.  ``selproxy eval`` is :func:`cli.main`."""
from .metrics import mrr_at, ndcg_at, percentile, recall_at
from .trec import Topic, read_collection, read_qrels, read_topics

__all__ = (
    "ndcg_at",
    "mrr_at",
    "recall_at",
    "percentile",
    "Topic",
    "read_topics",
    "read_qrels",
    "read_collection",
)
