"""Dynamic micro-batching and bounded admission in front of one model.

:class:`MicroBatcher` wraps any ranker that has ``batch_rank`` and gives it an
``async def rank``.  Concurrent searches queue their ``(query, docs)``; one
worker task takes them off the queue in batches and makes one ``batch_rank``
call per batch, in a thread of its own, so the event loop never computes.

Batches are measured in model inputs: a search counts one per (query,
document) pair, or, when the ranker has ``model_inputs(query, docs, keys)``,
what that returns (for the bi-encoder: the query and the uncached documents,
so a search whose window is cached costs 1, not 50).

A batch closes when it holds ``max_pairs`` model inputs, or
``max_wait_ms`` after its first search arrived, whichever comes first.  While
one batch computes, the next fills, so under load batches grow by themselves
and the wait costs nothing; a search that finds the model idle, with no
other search seen lately, does not wait at all.  Only one batch runs at a time: on a few cores two
concurrent model calls just split the same FLOPs.

Admission is bounded twice, and a refused search raises at once, never
queues:

* :class:`Overloaded` when the queue already holds ``max_queue_pairs`` pairs;
* :class:`DeadlineExceeded` when the work queued ahead of a search, at the
  measured cost per pair, would not finish within its ``timeout``, or when
  its answer is not back in time.

Both are :class:`~selproxy.rankers.adapter.RankFailed` with ``reason``
``overloaded`` or ``deadline``, which the search layer turns into
``X-Selproxy-Rerank: fallback; reason=...`` and the engine's order.

A model call that raises fails its batch's searches with what it raised
(anything outside :class:`Exception` wrapped in
:class:`~selproxy.rankers.adapter.RankerRaised`, so it never reaches the
loop); the worker goes on.  A call that outlives every one of its callers'
deadlines is left running (cancelled, if async) and the next batch goes;
while ``max_abandoned`` such calls still run, new searches are refused with
:class:`Overloaded`.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import time
from typing import Any, Callable, Deque, Dict, Hashable, List, Optional, Sequence, Set, Tuple

from .._threads import DaemonThreadPool
from .adapter import PARTIAL_GRACE, RankFailed, await_guarded, batch_method, call_guarded, result_of, warmup_method
from .base import BatchRanker

__all__ = ("MicroBatcher", "Overloaded", "DeadlineExceeded")


class Overloaded(RankFailed):
    """The model's queue is full."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("overloaded", detail)


class DeadlineExceeded(RankFailed):
    """The search's deadline would be, or was, missed."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("deadline", detail)


def _accepts(method: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


class _Pending:
    __slots__ = ("query", "docs", "keys", "engine_scores", "future", "pairs", "deadline")

    def __init__(self, query: str, docs: Sequence[str], keys: Optional[Sequence[Hashable]],
                 engine_scores: Optional[Sequence[float]], future: "asyncio.Future[List[float]]",
                 pairs: int, deadline: Optional[float]) -> None:
        self.deadline = deadline
        self.query = query
        self.docs = docs
        self.keys = keys
        self.engine_scores = engine_scores
        self.future = future
        self.pairs = pairs


class MicroBatcher:
    """Shares model calls between concurrent searches; see the module docstring.

    ``timeout`` is the default deadline of a search, in seconds, for callers
    that do not pass one.  ``cost_alpha`` weighs the newest batch in the
    running estimate of seconds per pair.
    """

    def __init__(self, ranker: BatchRanker, *, max_pairs: int = 512, max_wait_ms: float = 2.0,
                 max_queue_pairs: int = 2048, timeout: Optional[float] = None,
                 cost_alpha: float = 0.3, max_abandoned: int = 2) -> None:
        batch = batch_method(ranker)
        if batch is None:
            raise TypeError(f"{type(ranker).__name__} has no batch_rank() to batch with")
        if max_pairs < 1 or max_queue_pairs < 1 or max_wait_ms < 0:
            raise ValueError("max_pairs and max_queue_pairs must be >= 1, max_wait_ms >= 0")
        self.ranker = ranker
        self.max_pairs = max_pairs
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_pairs = max_queue_pairs
        self.timeout = timeout
        self._batch = batch
        self._batch_async = inspect.iscoroutinefunction(batch)
        self._batch_keys = _accepts(batch, "keys")
        self._batch_engine = _accepts(batch, "engine_scores")
        self._batch_deadlines = _accepts(batch, "deadlines")
        #: The ranker scores what it can by each search's deadline (a prefix
        #: of the window), so queued work never makes a search miss it.
        self.partial_results = bool(getattr(ranker, "partial_results", False)) and self._batch_deadlines
        inputs = getattr(ranker, "model_inputs", None)
        self._model_inputs: Optional[Callable[..., int]] = inputs if callable(inputs) else None
        self._cost_alpha = cost_alpha
        self.cost_per_pair = 0.0
        self._executor: Optional[DaemonThreadPool] = None
        # Model calls left running after all their callers gave up.
        self.max_abandoned = max_abandoned
        self._abandoned: Set[Any] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._queue: Deque[_Pending] = collections.deque()
        self._queued_pairs = 0
        self._running_pairs = 0
        self._concurrent = False
        self._wakeup: Optional[asyncio.Event] = None
        self._worker: Optional["asyncio.Task[None]"] = None
        self.counters: Dict[str, int] = {"batches": 0, "searches": 0, "pairs": 0,
                                         "overloaded": 0, "deadline": 0}

    # -- public -----------------------------------------------------------

    def warmup(self) -> None:
        warm = warmup_method(self.ranker)
        if warm is not None:
            warm()

    async def rank(self, query: str, docs: Sequence[str], *,
                   keys: Optional[Sequence[Hashable]] = None,
                   engine_scores: Optional[Sequence[float]] = None,
                   timeout: Optional[float] = None) -> List[float]:
        """Scores for ``docs``, computed in a shared batch, or a
        :class:`RankFailed` subclass within ``timeout`` seconds."""
        if not docs:
            return []
        if keys is not None and len(keys) != len(docs):
            raise ValueError(f"{len(keys)} keys for {len(docs)} documents")
        if engine_scores is not None and len(engine_scores) != len(docs):
            raise ValueError(f"{len(engine_scores)} engine scores for {len(docs)} documents")
        timeout = self.timeout if timeout is None else timeout
        loop = self._bind_loop()
        if len(self._abandoned) >= self.max_abandoned:
            self.counters["overloaded"] += 1
            raise Overloaded(f"{len(self._abandoned)} model calls past their callers' deadlines "
                             "still running")
        # At least one: even a fully cached search costs the worker a little.
        inputs = max(1, self._model_inputs(query, docs, keys)) if self._model_inputs else len(docs)
        self._admit(inputs, timeout)
        deadline = None if timeout is None else time.perf_counter() + timeout
        pending = _Pending(query, docs, keys, engine_scores, loop.create_future(), inputs, deadline)
        self._queue.append(pending)
        self._queued_pairs += pending.pairs
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            grace = PARTIAL_GRACE if self.partial_results and timeout is not None else 0.0
            return await asyncio.wait_for(pending.future, None if timeout is None else timeout + grace)
        except asyncio.TimeoutError:
            self.counters["deadline"] += 1
            raise DeadlineExceeded(f"no scores within {timeout:.3f}s") from None
        finally:
            if not pending.future.done():
                pending.future.cancel()

    async def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]], *,
                         keys: Optional[Sequence[Optional[Sequence[Hashable]]]] = None,
                         engine_scores: Optional[Sequence[Optional[Sequence[float]]]] = None,
                         timeout: Optional[float] = None) -> List[List[float]]:
        """Several searches at once (``_msearch``); they join the shared queue."""
        return list(await asyncio.gather(*(
            self.rank(query, docs, keys=keys[n] if keys is not None else None,
                      engine_scores=engine_scores[n] if engine_scores is not None else None,
                      timeout=timeout)
            for n, (query, docs) in enumerate(requests))))

    async def aclose(self) -> None:
        """Stop the worker; queued searches fail with ``overloaded``."""
        worker, self._worker = self._worker, None
        # A worker left on an earlier loop went with that loop.
        if worker is not None and self._loop is asyncio.get_running_loop():
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
            self._fail_queued()
        self._queue.clear()
        self._queued_pairs = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        close = getattr(self.ranker, "close", None)
        if callable(close):
            close()  # its background thread and store

    def stats(self) -> Dict[str, Any]:
        stats: Dict[str, Any] = dict(self.counters)
        stats["queued_pairs"] = self._queued_pairs
        stats["cost_per_pair_ms"] = round(self.cost_per_pair * 1000, 4)
        if self.counters["batches"]:
            stats["mean_batch_pairs"] = round(self.counters["pairs"] / self.counters["batches"], 1)
        return stats

    # -- admission --------------------------------------------------------

    def _admit(self, pairs: int, timeout: Optional[float]) -> None:
        ahead = self._queued_pairs + self._running_pairs
        # An idle batcher always admits, even a window larger than the queue
        # bound: otherwise such a search could never run.
        if self._queued_pairs and self._queued_pairs + pairs > self.max_queue_pairs:
            self.counters["overloaded"] += 1
            raise Overloaded(f"{self._queued_pairs} pairs queued")
        # Only the work queued ahead is counted, not the search's own, whose
        # cost depends on what is cached.  So an idle batcher admits every
        # search and the cost estimate can never stall on a stale value.
        if timeout is not None and ahead and not self.partial_results:
            expected = ahead * self.cost_per_pair + self.max_wait
            if expected > timeout:
                self.counters["deadline"] += 1
                raise DeadlineExceeded(
                    f"{ahead} pairs ahead, about {expected:.3f}s > {timeout:.3f}s")

    # -- worker -----------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # A new loop (a test, a restarted worker): the old queue belongs
            # to the old loop and cannot be awaited from this one.
            self._queue.clear()
            self._queued_pairs = self._running_pairs = 0
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._work(), name="selproxy-microbatcher")
        return loop

    def _fail_queued(self) -> None:
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(Overloaded("batcher closed"))
        self._queued_pairs = 0

    def _take_batch(self) -> List[_Pending]:
        batch: List[_Pending] = []
        pairs = 0
        while self._queue:
            pending = self._queue[0]
            if pending.future.done():  # its caller gave up: skip the work
                self._queue.popleft()
                self._queued_pairs -= pending.pairs
                continue
            if batch and pairs + pending.pairs > self.max_pairs:
                break
            self._queue.popleft()
            self._queued_pairs -= pending.pairs
            batch.append(pending)
            pairs += pending.pairs
        return batch

    async def _fill(self) -> None:
        assert self._loop is not None and self._wakeup is not None
        close_at = self._loop.time() + self.max_wait
        while self._queued_pairs < self.max_pairs:
            remaining = close_at - self._loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for company only when searches have been arriving
            # together; a lone search on an idle model goes at once.
            if self.max_wait > 0 and self._concurrent:
                await self._fill()
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    async def _run(self, batch: List[_Pending]) -> None:
        pairs = sum(p.pairs for p in batch)
        kwargs: Dict[str, Any] = {}
        if self._batch_keys and any(p.keys is not None for p in batch):
            kwargs["keys"] = [p.keys for p in batch]
        if self._batch_engine and any(p.engine_scores is not None for p in batch):
            kwargs["engine_scores"] = [p.engine_scores for p in batch]
        if self._batch_deadlines:
            kwargs["deadlines"] = [p.deadline for p in batch]
        requests = [(p.query, p.docs) for p in batch]
        self._running_pairs = pairs
        started = time.perf_counter()
        try:
            # The model's call is guarded (nothing it raises reaches the loop,
            # see the adapter) and waited for, never awaited: one that swallows
            # a cancellation must not hold the worker, nor aclose().
            call, running = self._start_call(requests, kwargs)
            try:
                finished = await self._wait_call(call, batch)
            except asyncio.CancelledError:
                call.cancel()
                running.cancel()
                self._leave(running)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(Overloaded("batcher closed"))
                raise
            if not finished:
                # Every caller has given up, and the call runs on: leave it
                # (bounded by max_abandoned) so the next batch can go.
                call.cancel()
                running.cancel()
                self._leave(running)
                return
            results = result_of(call)
            if len(results) != len(batch):
                raise ValueError(f"{len(results)} score lists for {len(batch)} searches")
            # A list (the ranker's Scores, with its timing) passes as it is.
            results = [s if isinstance(s, list) else list(s) for s in results]
        except Exception as exc:  # the callers fall back; the worker lives on
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        finally:
            self._running_pairs = 0
        elapsed = time.perf_counter() - started
        per_pair = elapsed / max(1, pairs)
        self.cost_per_pair = (per_pair if self.counters["batches"] == 0 else
                              self._cost_alpha * per_pair + (1 - self._cost_alpha) * self.cost_per_pair)
        self.counters["batches"] += 1
        self.counters["searches"] += len(batch)
        self.counters["pairs"] += pairs
        self._concurrent = len(batch) > 1 or bool(self._queue)
        for pending, scores in zip(batch, results):
            if not pending.future.done():
                pending.future.set_result(scores)

    def _start_call(self, requests: List[Tuple[str, Sequence[str]]], kwargs: Dict[str, Any]
                    ) -> Tuple["asyncio.Future[Any]", Any]:
        """The model's call for one batch: a future to wait on, and what
        runs (a task, or a thread's future) to cancel and count if left."""
        assert self._loop is not None
        if self._batch_async:
            task = self._loop.create_task(await_guarded(self._batch(requests, **kwargs)),
                                          name="selproxy-batch")
            return task, task
        if self._executor is None:
            self._executor = DaemonThreadPool(1, thread_name_prefix="selproxy-batch")
        future = self._executor.submit(call_guarded, functools.partial(self._batch, requests, **kwargs))
        return asyncio.wrap_future(future, loop=self._loop), future

    @staticmethod
    async def _wait_call(call: "asyncio.Future[Any]", batch: List[_Pending]) -> bool:
        """Wait until ``call`` ends (True) or every caller in ``batch`` has
        given up on it (False)."""
        while True:
            callers = [p.future for p in batch if not p.future.done()]
            if not callers:
                return call.done()
            await asyncio.wait([call, *callers], return_when=asyncio.FIRST_COMPLETED)
            if call.done():
                return True

    def _leave(self, running: Any) -> None:
        """Keep a reference to a call left running, until it ends."""
        if running.done():
            if isinstance(running, asyncio.Future) and not running.cancelled():
                running.exception()
            return
        self._abandoned.add(running)

        def ended(done: Any) -> None:
            self._abandoned.discard(done)
            if isinstance(done, asyncio.Future) and not done.cancelled():
                done.exception()  # read: nobody else will

        if isinstance(running, asyncio.Future):
            running.add_done_callback(ended)
        else:  # a thread's future: its callback runs in that thread
            loop = self._loop
            assert loop is not None

            def ended_in_thread(done: Any) -> None:
                try:
                    loop.call_soon_threadsafe(ended, done)
                except RuntimeError:  # the loop has closed: nothing left to count
                    pass

            running.add_done_callback(ended_in_thread)
