"""Rankers: the pluggable models that reorder a search's candidate window.

The contract a ranker meets is written down in :mod:`selproxy.rankers.base`;
:func:`wrap` adapts the rerankers of the common Python libraries to it."""
from .base import AsyncCloses, BatchRanker, Ranker, RankKeywords, Scores, WarmsUp
from .wrappers import wrap

__all__ = ("Ranker", "BatchRanker", "RankKeywords", "WarmsUp", "AsyncCloses", "Scores", "wrap")
