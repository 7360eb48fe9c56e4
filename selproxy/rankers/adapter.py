"""Call any ranker the same way: async, bounded in time and in pending work.

:class:`RankerAdapter` looks at a ranker once, when it is built:

* ``rank`` declared ``async def`` is awaited on the loop; a plain ``def`` runs
  in the adapter's worker threads, so a model never blocks the event loop;
* ``batch_rank``, when present, serves several searches in one call
  (``_msearch``); otherwise the searches are ranked one after another in the
  same call;
* a ``keys`` parameter on either method means the ranker wants one stable key
  per document, and gets it; an ``engine_scores`` parameter means it wants the
  engine's score of each document (for score fusion), and gets that; a
  ``timeout`` parameter gets the seconds left of the deadline, so a ranker
  that queues (:class:`~selproxy.rankers.batching.MicroBatcher`) can refuse
  work it cannot finish in time.

Every call has a deadline covering queueing and ranking.  A call that misses
it, raises, or returns the wrong number of scores (or a non-finite one) raises
:class:`RankFailed` with a short reason, so the caller can fall back to the
engine's order.  A sync ranker that overruns keeps its thread until it
returns; while too many calls are pending, new ones fail at once with reason
``overloaded`` rather than queue behind it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import logging
import math
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .base import Scores

__all__ = ("RankJob", "RankFailed", "RankTiming", "RankerAdapter")

log = logging.getLogger("selproxy.rankers")


@dataclasses.dataclass(frozen=True)
class RankJob:
    """One search to rank: the query, the window's texts, their keys and the
    engine's scores."""

    query: str
    docs: Sequence[str]
    keys: Optional[Sequence[Any]] = None
    engine_scores: Optional[Sequence[float]] = None


@dataclasses.dataclass(frozen=True)
class RankTiming:
    """Seconds spent waiting for a worker or the model (``queue``), in all
    (``rank``, the queue included), and, when the ranker says
    (:class:`~selproxy.rankers.base.Scores`), embedding and scoring."""

    queue: float = 0.0
    rank: float = 0.0
    encode: float = 0.0
    score: float = 0.0


class RankFailed(Exception):
    """The ranker gave no usable scores.  ``reason`` is ``error``, ``deadline``
    or ``overloaded``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


#: Keyword arguments a ranker may declare to receive more than the texts.
OPTIONAL_ARGUMENTS = ("keys", "engine_scores", "timeout")


def _accepted(method: Optional[Callable[..., Any]]) -> Tuple[str, ...]:
    if method is None:
        return ()
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return ()
    return tuple(name for name in OPTIONAL_ARGUMENTS if name in params)


def _is_async(method: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(method) or inspect.iscoroutinefunction(
        getattr(method, "__call__", None))


def _checked(scores: Any, expected: int, partial: bool) -> List[float]:
    """The scores as floats, checked; a :class:`Scores` keeps its details.
    With ``partial`` a ranker may score a prefix of the window only."""
    result = Scores(float(s) for s in scores)
    if isinstance(scores, Scores):
        result.timing, result.encoded, result.fusion = scores.timing, scores.encoded, scores.fusion
    if len(result) != expected and not (partial and len(result) < expected):
        raise ValueError(f"{len(result)} scores for {expected} documents")
    if not all(math.isfinite(s) for s in result):
        raise ValueError("a score is not finite")
    return result


class RankerAdapter:
    """Wraps one ranker; see the module docstring."""

    def __init__(self, ranker: Any, *, threads: int = 1, max_pending: int = 64) -> None:
        if not callable(getattr(ranker, "rank", None)):
            raise TypeError(f"{ranker!r} has no rank(query, docs) method")
        self.ranker = ranker
        self._rank_async = _is_async(ranker.rank)
        self._rank_extras = _accepted(ranker.rank)
        batch = getattr(ranker, "batch_rank", None)
        self._batch: Optional[Callable[..., Any]] = batch if callable(batch) else None
        self._batch_async = self._batch is not None and _is_async(self._batch)
        self._batch_extras = _accepted(self._batch)
        self._threads = threads
        self.partial_results = bool(getattr(ranker, "partial_results", False))
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def wants_keys(self) -> bool:
        """Whether the ranker takes per-document keys (worth computing)."""
        return "keys" in self._rank_extras or "keys" in self._batch_extras

    @property
    def wants_engine_scores(self) -> bool:
        """Whether the ranker takes the engine's scores."""
        return "engine_scores" in self._rank_extras or "engine_scores" in self._batch_extras

    def _rank_kwargs(self, job: RankJob, timeout: float) -> Dict[str, Any]:
        return {name: timeout if name == "timeout" else getattr(job, name)
                for name in self._rank_extras}

    def _batch_kwargs(self, jobs: Sequence[RankJob], timeout: float) -> Dict[str, Any]:
        return {name: timeout if name == "timeout" else [getattr(job, name) for job in jobs]
                for name in self._batch_extras}

    @property
    def pending(self) -> int:
        return self._pending

    def close(self) -> None:
        """Let the worker threads go; calls still running finish on their own."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _acquire(self) -> None:
        with self._lock:
            if self._pending >= self._max_pending:
                raise RankFailed("overloaded", f"{self._pending} rank calls pending")
            self._pending += 1

    def _release(self, _future: object = None) -> None:
        with self._lock:
            self._pending -= 1

    async def rank(self, jobs: Sequence[RankJob], deadline: float) -> Tuple[List[List[float]], RankTiming]:
        """Scores for each job, or :class:`RankFailed` within ``deadline`` seconds."""
        if not jobs:
            return [], RankTiming()
        self._acquire()
        submitted = time.perf_counter()
        started: List[float] = []
        use_batch = self._batch is not None and len(jobs) > 1
        is_async = self._batch_async if use_batch else self._rank_async
        try:
            if is_async:
                started.append(submitted)
                try:
                    raw = await asyncio.wait_for(self._call_async(jobs, use_batch, deadline), deadline)
                finally:
                    self._release()
            else:
                try:
                    future = self._submit(jobs, use_batch, started, deadline)
                except BaseException:
                    self._release()
                    raise
                # The slot is held until the thread is done, not until we stop
                # waiting: an overrunning model still occupies its worker.
                future.add_done_callback(self._release)
                raw = await asyncio.wait_for(asyncio.wrap_future(future), deadline)
            if len(raw) != len(jobs):
                raise ValueError(f"{len(raw)} score lists for {len(jobs)} searches")
            scores = [_checked(s, len(job.docs), self.partial_results) for s, job in zip(raw, jobs)]
        except asyncio.TimeoutError:
            raise RankFailed("deadline", f"no scores within {deadline:.3f}s") from None
        except RankFailed:
            raise  # the ranker's own refusal (overloaded, deadline) keeps its reason
        except Exception as exc:
            log.warning("ranker %s failed: %r", type(self.ranker).__name__, exc)
            raise RankFailed("error", repr(exc)) from exc
        finished = time.perf_counter()
        start = started[0] if started else submitted
        steps = [s.timing for s in scores if isinstance(s, Scores) and s.timing]
        if steps:
            # The ranker's own account: waiting for the model counts as queue.
            wait = max(t.get("wait", 0.0) for t in steps)
            return scores, RankTiming(queue=start - submitted + wait, rank=finished - submitted,
                                      encode=max(t.get("encode", 0.0) for t in steps),
                                      score=max(t.get("score", 0.0) for t in steps))
        return scores, RankTiming(queue=start - submitted, rank=finished - submitted)

    def _submit(self, jobs: Sequence[RankJob], use_batch: bool, started: List[float],
                timeout: float) -> "concurrent.futures.Future[List[Any]]":
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self._threads, thread_name_prefix="selproxy-ranker")
        return self._executor.submit(self._call_sync, jobs, use_batch, started, timeout)

    async def _call_async(self, jobs: Sequence[RankJob], use_batch: bool, timeout: float) -> List[Any]:
        if use_batch:
            assert self._batch is not None
            pairs = [(job.query, job.docs) for job in jobs]
            return list(await self._batch(pairs, **self._batch_kwargs(jobs, timeout)))
        return [await self.ranker.rank(job.query, job.docs, **self._rank_kwargs(job, timeout))
                for job in jobs]

    def _call_sync(self, jobs: Sequence[RankJob], use_batch: bool, started: List[float],
                   timeout: float) -> List[Any]:
        started.append(time.perf_counter())
        if use_batch:
            assert self._batch is not None
            pairs = [(job.query, job.docs) for job in jobs]
            return list(self._batch(pairs, **self._batch_kwargs(jobs, timeout)))
        return [self.ranker.rank(job.query, job.docs, **self._rank_kwargs(job, timeout)) for job in jobs]
