"""Rankers: the pluggable models that reorder a search's candidate window."""
from .base import Ranker
from .wrappers import wrap

__all__ = ("Ranker", "wrap")
