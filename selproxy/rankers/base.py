"""The ranker protocol.

A ranker scores candidate documents for one query; higher is better.  The proxy
reorders the engine's window by these scores.

Contract (each part is a :class:`typing.Protocol` below; only ``rank`` is
required, and :class:`~selproxy.rankers.adapter.RankerAdapter` looks for the
others once, when it is built):

* :class:`Ranker`: ``rank(query, docs)`` returns one float per document, in
  the order of ``docs``.  It may be ``async def`` or a plain ``def``; a plain
  one is run in a worker thread, never on the event loop.
* :class:`BatchRanker`: ``batch_rank(requests)`` is optional.  It takes a
  sequence of ``(query, docs)`` pairs and returns one score list per pair.
  The proxy uses it when many searches arrive together (``_msearch``,
  micro-batching).
* :class:`RankKeywords`: ``rank`` and ``batch_rank`` may each declare any of
  the keywords ``keys``, ``engine_scores`` and ``timeout`` (with a default),
  and get them:

  - ``keys``: one stable, hashable key per document (for the proxy:
    ``(index, _id, sha1-of-text)``), which a ranker may use to cache
    per-document work;
  - ``engine_scores``: the engine's score of each document (for score
    fusion), or None when a hit had none (a sort, an unscored query);
  - ``timeout``: the seconds left of the search's deadline, so a ranker that
    queues can refuse work it cannot finish in time.

  ``batch_rank`` gets one list of keys (or scores) per search.
* :class:`WarmsUp`: ``warmup()`` is optional.  The proxy calls it once when
  it starts, in a thread of its own; the status page says ``"ready": false``
  until it returns.
* :class:`AsyncCloses`: ``async aclose()`` is optional.  The proxy awaits it
  when it stops (within what is left of its shutdown grace), so a ranker can
  end work of its own on the loop (a worker task, a client session).
* A ranker that raises (anything, ``SystemExit`` and ``CancelledError``
  included), returns anything but one finite real number per document, or
  does not answer within the route's deadline, never fails a search: the
  proxy falls back to the engine's order.  A late call is not waited for:
  an async one is cancelled (and left to run if it ignores that), a sync one
  keeps its worker thread until it returns; meanwhile further searches fall
  back (reason ``overloaded``) instead of queueing.
* With more than one worker thread (``SearchConfig.ranker_threads``) a sync
  ``rank`` must be thread-safe.  An ``async`` ``rank`` must not block the loop:
  do heavy work in a thread or process of your own.

A worked example, a ranker that prefers short documents containing the query
words::

    from typing import Sequence

    class ShortAndRelevant:
        def __init__(self, length_penalty: float = 0.01) -> None:
            self.length_penalty = float(length_penalty)

        def rank(self, query: str, docs: Sequence[str]) -> list[float]:
            words = set(query.lower().split())
            return [len(words & set(doc.lower().split()))
                    - self.length_penalty * len(doc) for doc in docs]

Use it from code with ``selproxy.Proxy(..., ranker=ShortAndRelevant())``, or
from the command line with ``--ranker mypackage.rankers:ShortAndRelevant
--ranker-option length_penalty=0.02``.  A package can give it a short name
through the entry-point group ``selproxy.rankers``::

    [project.entry-points."selproxy.rankers"]
    short = "mypackage.rankers:ShortAndRelevant"
"""
from __future__ import annotations

import inspect
from typing import (Any, Awaitable, Callable, Dict, Hashable, Iterable, List, Optional, Protocol, Sequence,
                    Tuple, Union, runtime_checkable)

__all__ = ("Ranker", "BatchRanker", "RankKeywords", "WarmsUp", "AsyncCloses", "Scores", "ScoreList",
           "RankQuery", "RANK_KEYWORDS", "batch_rank_pairs")

#: What ``rank`` gives for one search: one real number per document (a list,
#: :class:`Scores`, a NumPy array...), or an awaitable of that.
ScoreList = Iterable[float]
#: One search as ``batch_rank`` takes it: the query and the window's texts.
RankQuery = Tuple[str, Sequence[str]]


class Scores(list):  # type: ignore[type-arg]
    """A ranker's scores, as a list of floats, with what it cost.

    A ranker with ``partial_results = True`` may return fewer scores than
    documents: the scores of a prefix of the window (it ran out of time for
    the rest), which the proxy reranks while leaving the rest in engine
    order.  ``timing`` holds seconds by step (``wait``, ``lookup``,
    ``encode``, ``score``), ``encoded`` the documents embedded for this call,
    and ``fusion`` is ``"on"``, ``"off"`` (fusion configured but no engine
    scores) or ``""`` (not configured).
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.timing: Dict[str, float] = {}
        self.encoded = 0
        self.fusion = ""


@runtime_checkable
class Ranker(Protocol):
    """Scores documents for a query.  See the module docstring for the contract."""

    def rank(self, query: str, docs: Sequence[str]) -> Union[ScoreList, Awaitable[ScoreList]]:
        """Return (or, if async, resolve to) one float score per document."""
        ...


@runtime_checkable
class BatchRanker(Protocol):
    """Scores several searches in one call: the optional part of a ranker
    that the proxy uses for ``_msearch``, and all that
    :class:`~selproxy.rankers.batching.MicroBatcher` needs of the model it
    batches for."""

    def batch_rank(self, requests: Sequence[RankQuery]
                   ) -> Union[Iterable[ScoreList], Awaitable[Iterable[ScoreList]]]:
        """Return (or resolve to) one score list per ``(query, docs)`` pair."""
        ...


class RankKeywords(Protocol):
    """The keywords a ranker's ``rank`` and ``batch_rank`` may declare.

    No ranker needs to match this whole: each method declares the subset it
    wants, and the adapter passes exactly those (:data:`RANK_KEYWORDS`, read
    from this class).  The proxy never passes ``None`` for ``timeout``.
    """

    def rank(self, query: str, docs: Sequence[str], *,
             keys: Optional[Sequence[Hashable]] = None,
             engine_scores: Optional[Sequence[float]] = None,
             timeout: Optional[float] = None) -> Union[ScoreList, Awaitable[ScoreList]]:
        ...

    def batch_rank(self, requests: Sequence[RankQuery], *,
                   keys: Optional[Sequence[Optional[Sequence[Hashable]]]] = None,
                   engine_scores: Optional[Sequence[Optional[Sequence[float]]]] = None,
                   timeout: Optional[float] = None
                   ) -> Union[Iterable[ScoreList], Awaitable[Iterable[ScoreList]]]:
        ...


#: The keywords of :class:`RankKeywords`, in its order: the ones a ranker
#: may declare to receive more than the texts.
RANK_KEYWORDS: Tuple[str, ...] = tuple(
    name for name, parameter in inspect.signature(RankKeywords.rank).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY)


def batch_rank_pairs(requests: Sequence[RankQuery],
                     score_pairs: Callable[[List[Tuple[str, str]]], List[float]]) -> List[List[float]]:
    """``batch_rank`` for a model that scores ``(query, passage)`` pairs (a
    cross-encoder): every search's pairs go to ``score_pairs`` in one call,
    and its scores come back split per search."""
    pairs = [(query, doc) for query, docs in requests for doc in docs]
    flat = score_pairs(pairs) if pairs else []
    results: List[List[float]] = []
    offset = 0
    for _query, docs in requests:
        results.append(flat[offset:offset + len(docs)])
        offset += len(docs)
    return results


@runtime_checkable
class WarmsUp(Protocol):
    """A ranker with work to do once before its first search (load and run a model)."""

    def warmup(self) -> None:
        """Called once, in a thread, when the proxy starts."""
        ...


@runtime_checkable
class AsyncCloses(Protocol):
    """A ranker with work of its own on the event loop to end when the proxy stops."""

    async def aclose(self) -> None:
        """Awaited once, on the loop, when the proxy stops."""
        ...
