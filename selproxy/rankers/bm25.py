"""A lexical BM25 ranker over the window's own text, built on ``bm25s``.

NOTE: this ranker is never the default, and over a real search engine it makes
results worse.  The engine already ranks with BM25 using statistics (IDF,
average length) from the whole index; this ranker only sees the 50 or so hits
of the window, so its IDF is a poor estimate.  On Cranfield it measured
nDCG@10 0.28 against the engine's own 0.37.  It exists for upstreams that do
not rank lexically at all, such as JSON APIs that return unranked lists.
"""
from __future__ import annotations

import importlib
from typing import Any, List, Optional, Sequence

__all__ = ("BM25Ranker",)


class BM25Ranker:
    """BM25 (Lucene variant) over the candidate documents of one query.

    Options: ``k1`` and ``b`` (BM25's term-frequency saturation and length
    normalisation), ``stopwords`` (a language such as ``"en"``, or ``""`` for
    none), ``stemmer`` (a Snowball language such as ``"english"``; needs the
    ``PyStemmer`` package).  ``rank`` is synchronous and CPU-bound, so the
    proxy runs it in a worker thread.
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75, stopwords: str = "en",
                 stemmer: Optional[str] = None) -> None:
        # Imported here, so that selproxy imports without the extra installed.
        self._bm25s: Any = importlib.import_module("bm25s")
        self.k1 = float(k1)
        self.b = float(b)
        self.stopwords = stopwords or None
        self._stem: Any = None
        if stemmer:
            self._stem = importlib.import_module("Stemmer").Stemmer(stemmer).stemWords

    def _tokenize(self, texts: List[str]) -> List[List[str]]:
        tokens: List[List[str]] = self._bm25s.tokenize(
            texts, stopwords=self.stopwords, stemmer=self._stem, return_ids=False, show_progress=False)
        return tokens

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        if not docs:
            return []
        corpus = self._tokenize(list(docs))
        query_tokens = self._tokenize([query])[0]
        if not query_tokens or not any(corpus):
            return [0.0] * len(docs)
        index = self._bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        index.index(corpus, show_progress=False)
        return [float(s) for s in index.get_scores(query_tokens)]
