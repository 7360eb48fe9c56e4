"""Rankers: the pluggable models that reorder a search's candidate window."""
from .base import Ranker

__all__ = ("Ranker",)
