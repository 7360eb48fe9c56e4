"""The ranker protocol.

A ranker scores candidate documents for one query; higher is better.  The proxy
reorders the engine's window by these scores.

Contract:

* ``rank(query, docs)`` returns one float per document, in the order of
  ``docs``.  It may be ``async def`` or a plain ``def``; a plain one is run in a
  worker thread, never on the event loop.
* ``keys``, when the ranker's ``rank`` accepts it, carries one stable,
  hashable key per document (for the proxy: ``(index, _id, sha1-of-text)``),
  which a ranker may use to cache per-document work.
* ``batch_rank(requests)`` is optional.  It takes a sequence of
  ``(query, docs)`` pairs and returns one score list per pair.  The proxy uses
  it when many searches arrive together (``_msearch``, micro-batching).
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

from typing import Any, Dict, Protocol, Sequence, runtime_checkable

__all__ = ("Ranker", "Scores")


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

    def rank(self, query: str, docs: Sequence[str]) -> Any:
        """Return (or, if async, resolve to) one float score per document."""
        ...
