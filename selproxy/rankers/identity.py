"""The identity ranker: the engine's order, unchanged."""
from __future__ import annotations

from typing import List, Sequence

__all__ = ("IdentityRanker",)


class IdentityRanker:
    """Keeps the engine's order: the first document scores highest.

    Scores are ``len(docs) - i``.  It is ``async`` so it never takes a thread
    hop, which makes it the ranker for measuring the proxy's own overhead and
    for tests.
    """

    async def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        n = len(docs)
        return [float(n - i) for i in range(n)]
