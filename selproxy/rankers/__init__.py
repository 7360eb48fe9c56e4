"""Rankers: the pluggable models that reorder a search's candidate window.

The contract a ranker meets is written down in :mod:`selproxy.rankers.base`."""
from .base import AsyncCloses, BatchRanker, Ranker, RankKeywords, Scores, WarmsUp

__all__ = ("Ranker", "BatchRanker", "RankKeywords", "WarmsUp", "AsyncCloses", "Scores")
