"""Call any ranker the same way: async, bounded in time and in pending work.

:class:`RankerAdapter` looks at a ranker once, when it is built, for the
optional parts of the contract that :mod:`selproxy.rankers.base` writes down
as Protocols:

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

Every call has a deadline covering queueing and ranking, and the deadline is
a hard bound for the caller whatever the ranker does.  A call that misses
it, raises (anything: ``SystemExit``, ``KeyboardInterrupt`` and
``asyncio.CancelledError`` included), or returns anything but one real
number per document (a string, a bool, ``None``, NaN, a list of the wrong
length) raises :class:`RankFailed` with a short reason, so the caller can
fall back to the engine's order.  Nothing a ranker raises reaches the event
loop: asyncio re-raises ``SystemExit`` and ``KeyboardInterrupt`` out of a
task into ``run_forever``, which would end the proxy.

A call past its deadline is left, not awaited: an async ranker is cancelled,
and one that ignores the cancellation runs on by itself; a sync one keeps
its worker thread until it returns.  Either keeps its pending slot until it
ends.  While too many calls are pending (``max_pending``), or too many calls
left behind are still running (``max_abandoned``), new ones fail at once with
reason ``overloaded`` rather than queue behind them.  The worker threads are
daemons (:class:`~selproxy._threads.DaemonThreadPool`), so a stuck ranker
never keeps a stopped proxy alive.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import itertools
import logging
import math
import numbers
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from .._redact import excerpt
from .._threads import DaemonThreadPool
from .base import RANK_KEYWORDS, AsyncCloses, BatchRanker, Ranker, Scores, WarmsUp

__all__ = ("RankJob", "RankFailed", "RankTiming", "RankerAdapter", "RankerRaised", "call_guarded",
           "await_guarded", "result_of", "checked_scores", "failure_from", "batch_method", "warmup_method",
           "aclose_method")

log = logging.getLogger("selproxy.rankers")


@dataclasses.dataclass(frozen=True)
class RankJob:
    """One search to rank: the query, the window's texts, their keys and the
    engine's scores."""

    query: str
    docs: Sequence[str]
    keys: Optional[Sequence[Any]] = None
    engine_scores: Optional[Sequence[float]] = None


#: Seconds past the deadline that the proxy still waits for a ranker with
#: ``partial_results``: such a ranker stops its own work 5 ms and a twentieth
#: of the budget before the deadline, so this only catches a finished answer
#: that a loaded machine scheduled late.  (A plain ranker gets no grace.)
PARTIAL_GRACE = 0.025


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


def _accepted(method: Optional[Callable[..., Any]]) -> Tuple[str, ...]:
    """The keywords of :class:`~selproxy.rankers.base.RankKeywords` that ``method`` declares."""
    if method is None:
        return ()
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return ()
    return tuple(name for name in RANK_KEYWORDS if name in params)


def _is_async(method: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(method) or inspect.iscoroutinefunction(
        getattr(method, "__call__", None))


def batch_method(ranker: object) -> Optional[Callable[..., Any]]:
    """The ranker's ``batch_rank`` (:class:`~selproxy.rankers.base.BatchRanker`), or None."""
    return ranker.batch_rank if isinstance(ranker, BatchRanker) and callable(ranker.batch_rank) else None


def warmup_method(ranker: object) -> Optional[Callable[[], None]]:
    """The ranker's ``warmup`` (:class:`~selproxy.rankers.base.WarmsUp`), or None."""
    return ranker.warmup if isinstance(ranker, WarmsUp) and callable(ranker.warmup) else None


def aclose_method(ranker: object) -> Optional[Callable[[], Awaitable[None]]]:
    """The ranker's ``aclose`` (:class:`~selproxy.rankers.base.AsyncCloses`), or None."""
    return ranker.aclose if isinstance(ranker, AsyncCloses) and callable(ranker.aclose) else None


class RankerRaised(Exception):
    """What a ranker raised outside :class:`Exception` (``SystemExit``,
    ``KeyboardInterrupt``, ``asyncio.CancelledError``, a bare
    ``BaseException``), carried as an ordinary exception: asyncio re-raises
    ``SystemExit`` and ``KeyboardInterrupt`` out of a task into the event
    loop, and a ``CancelledError`` would read as the search being cancelled."""

    def __init__(self, raised: BaseException) -> None:
        super().__init__(f"the ranker raised {type(raised).__name__}")
        self.raised = raised


def call_guarded(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, with anything outside :class:`Exception`
    turned into :class:`RankerRaised` (for a ranker's sync call, in its thread)."""
    try:
        return function(*args, **kwargs)
    except Exception:
        raise
    except BaseException as exc:
        raise RankerRaised(exc) from exc


async def await_guarded(awaitable: Awaitable[Any]) -> Any:
    """``await awaitable``, guarded as :func:`call_guarded` (for a ranker's
    coroutine, inside the task that runs it)."""
    try:
        return await awaitable
    except (Exception, GeneratorExit):
        raise  # GeneratorExit: the coroutine itself is being closed
    except BaseException as exc:
        raise RankerRaised(exc) from exc


def result_of(future: "asyncio.Future[Any]") -> Any:
    """The result of a finished ``future``, or what it raised, as an
    :class:`Exception` whatever it was."""
    if future.cancelled():
        raise RankerRaised(asyncio.CancelledError())
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, Exception):
        raise error
    raise RankerRaised(error)


def checked_scores(scores: Any, expected: int, partial: bool = False) -> List[float]:
    """``scores`` as ``expected`` finite floats, or :class:`TypeError` /
    :class:`ValueError`.  Only real numbers count: ints, floats, NumPy's
    numbers; not bools, strings, ``None`` or NaN.  With ``partial`` (a ranker
    with ``partial_results``) fewer may come: the scores of a prefix of the
    window.  A :class:`Scores` keeps its timing and details."""
    if scores is None or isinstance(scores, (str, bytes, bytearray, dict)):
        raise TypeError(f"scores are a {type(scores).__name__}, not a sequence of numbers")
    result: List[float] = []
    # One more than expected is enough to tell the length is wrong; a ranker
    # handing back an endless iterator must not keep the caller.
    for score in itertools.islice(scores, expected + 1):
        if isinstance(score, bool) or not isinstance(score, numbers.Real):
            raise TypeError(f"a score is a {type(score).__name__}, not a real number")
        value = float(score)
        if not math.isfinite(value):
            raise ValueError("a score is not finite")
        result.append(value)
    if len(result) > expected or (len(result) < expected and not partial):
        raise ValueError(f"{len(result)}{'+' if len(result) > expected else ''} scores "
                         f"for {expected} documents")
    if isinstance(scores, Scores):
        kept = Scores(result)
        kept.timing, kept.encoded, kept.fusion = scores.timing, scores.encoded, scores.fusion
        return kept
    return result


def failure_from(exc: BaseException) -> "RankFailed":
    """The :class:`RankFailed` for what a ranker's call ended with."""
    if isinstance(exc, RankFailed):
        return exc  # the ranker's own refusal (overloaded, deadline) keeps its reason
    raised = exc.raised if isinstance(exc, RankerRaised) else exc
    return RankFailed("error", type(raised).__name__)


class RankerAdapter:
    """Wraps one ranker; see the module docstring."""

    def __init__(self, ranker: Ranker, *, threads: int = 1, max_pending: int = 64,
                 max_abandoned: int = 8) -> None:
        if not isinstance(ranker, Ranker) or not callable(ranker.rank):
            raise TypeError(f"{ranker!r} has no rank(query, docs) method")
        self.ranker = ranker
        self._rank_async = _is_async(ranker.rank)
        self._rank_extras = _accepted(ranker.rank)
        self._batch: Optional[Callable[..., Any]] = batch_method(ranker)
        self._batch_async = self._batch is not None and _is_async(self._batch)
        self._batch_extras = _accepted(self._batch)
        self._threads = threads
        self.partial_results = bool(getattr(ranker, "partial_results", False))
        # A ranker that keeps its own deadline gets a moment past it for an
        # answer already on its way (see PARTIAL_GRACE).
        self._grace = PARTIAL_GRACE if self.partial_results else 0.0
        self._executor: Optional[DaemonThreadPool] = None
        self._max_pending = max_pending
        self._max_abandoned = max_abandoned
        self._pending = 0
        self._abandoned = 0
        self._lock = threading.Lock()
        # Async calls left past their deadline: a reference keeps each task
        # alive until it ends by itself.
        self._left: Set["asyncio.Task[Any]"] = set()

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
        """Rank calls started and not yet ended, those left behind included."""
        return self._pending

    @property
    def abandoned(self) -> int:
        """Rank calls left past their deadline that are still running."""
        return self._abandoned

    def close(self) -> None:
        """Let the worker threads go; calls still running finish on their own."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _acquire(self) -> None:
        with self._lock:
            if self._pending >= self._max_pending:
                raise RankFailed("overloaded", f"{self._pending} rank calls pending")
            if self._abandoned >= self._max_abandoned:
                raise RankFailed("overloaded", f"{self._abandoned} rank calls past their "
                                               "deadline still running")
            self._pending += 1

    def _release(self, _future: object = None) -> None:
        with self._lock:
            self._pending -= 1

    def _abandon(self, future: "Union[asyncio.Future[Any], concurrent.futures.Future[Any]]") -> None:
        """Count ``future`` as left behind until it ends."""
        with self._lock:
            self._abandoned += 1

        def ended(_future: object) -> None:
            with self._lock:
                self._abandoned -= 1

        future.add_done_callback(ended)

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
                raw = await self._run_async(jobs, use_batch, deadline)
            else:
                raw = await self._run_sync(jobs, use_batch, started, deadline)
            if len(raw) != len(jobs):
                raise ValueError(f"{len(raw)} score lists for {len(jobs)} searches")
            scores = [checked_scores(s, len(job.docs), self.partial_results)
                      for s, job in zip(raw, jobs)]
        except RankFailed:
            raise
        except Exception as exc:
            failure = failure_from(exc)
            log.warning("ranker %s failed: %s", type(self.ranker).__name__,
                        excerpt(f"{type(exc).__name__}: {exc}"))
            raise failure from exc
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

    async def _run_async(self, jobs: Sequence[RankJob], use_batch: bool, deadline: float) -> List[Any]:
        task = asyncio.get_running_loop().create_task(
            await_guarded(self._call_async(jobs, use_batch, deadline)), name="selproxy-rank")
        # The slot is held until the task ends, not until we stop waiting.
        task.add_done_callback(self._ended)
        self._left.add(task)
        try:
            done, _ = await asyncio.wait((task,), timeout=deadline + self._grace)
        except asyncio.CancelledError:
            task.cancel()  # the search itself is cancelled: stop its ranking too, without waiting
            self._abandon(task)
            raise
        if not done:
            # asyncio.wait_for would wait here for the cancelled task to end,
            # and a ranker that swallows the cancellation would keep the
            # search for as long as it likes.
            task.cancel()
            self._abandon(task)
            raise RankFailed("deadline", f"no scores within {deadline:.3f}s")
        return result_of(task)  # type: ignore[no-any-return]

    def _ended(self, task: "asyncio.Task[Any]") -> None:
        self._left.discard(task)
        self._release()
        if not task.cancelled():
            task.exception()  # read, so an abandoned failure is not reported as never retrieved

    async def _run_sync(self, jobs: Sequence[RankJob], use_batch: bool, started: List[float],
                        deadline: float) -> List[Any]:
        try:
            future = self._submit(jobs, use_batch, started, deadline)
        except BaseException:
            self._release()
            raise
        # The slot is held until the thread is done, not until we stop
        # waiting: an overrunning model still occupies its worker.
        future.add_done_callback(self._release)
        waiter = asyncio.wrap_future(future)
        try:
            done, _ = await asyncio.wait((waiter,), timeout=deadline + self._grace)
        except asyncio.CancelledError:
            # Cancel the call itself now if it has not started (the waiter
            # would pass the cancellation on only at the loop's next turn).
            future.cancel()
            waiter.cancel()
            if not future.done():
                self._abandon(future)
            raise
        if not done:
            future.cancel()
            waiter.cancel()
            if not future.done():  # running: its thread cannot be stopped
                self._abandon(future)
            raise RankFailed("deadline", f"no scores within {deadline:.3f}s")
        return result_of(waiter)  # type: ignore[no-any-return]

    def _submit(self, jobs: Sequence[RankJob], use_batch: bool, started: List[float],
                timeout: float) -> "concurrent.futures.Future[List[Any]]":
        if self._executor is None:
            self._executor = DaemonThreadPool(self._threads, thread_name_prefix="selproxy-ranker")
        return self._executor.submit(call_guarded, self._call_sync, jobs, use_batch, started, timeout)

    async def _call_async(self, jobs: Sequence[RankJob], use_batch: bool, timeout: float) -> List[Any]:
        if use_batch:
            assert self._batch is not None
            pairs = [(job.query, job.docs) for job in jobs]
            return list(await self._batch(pairs, **self._batch_kwargs(jobs, timeout)))
        rank: Callable[..., Any] = self.ranker.rank  # async: the adapter looked when it was built
        return [await rank(job.query, job.docs, **self._rank_kwargs(job, timeout)) for job in jobs]

    def _call_sync(self, jobs: Sequence[RankJob], use_batch: bool, started: List[float],
                   timeout: float) -> List[Any]:
        started.append(time.perf_counter())
        if use_batch:
            assert self._batch is not None
            pairs = [(job.query, job.docs) for job in jobs]
            return list(self._batch(pairs, **self._batch_kwargs(jobs, timeout)))
        return [self.ranker.rank(job.query, job.docs, **self._rank_kwargs(job, timeout)) for job in jobs]
