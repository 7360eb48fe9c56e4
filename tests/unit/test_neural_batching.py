"""MicroBatcher: shared batches, bounded admission, deadlines, failures.

A scripted ranker stands in for the model: it records each batch, sleeps or
blocks on an event when told to, and scores a document by its length.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, List, Optional, Sequence, Tuple

import pytest

from support.aio import run

from selproxy.rankers.adapter import RankFailed
from selproxy.rankers.batching import DeadlineExceeded, MicroBatcher, Overloaded


class ScriptedRanker:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: List[List[Tuple[str, int]]] = []
        self.keys_seen: List[Any] = []
        self.gate: Optional[threading.Event] = None
        self.fail: Optional[Exception] = None
        #: Calls inside batch_rank now (held at the gate, or sleeping).
        self.running = 0

    def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]], *,
                   keys: Optional[Sequence[Any]] = None) -> List[List[float]]:
        self.batches.append([(q, len(d)) for q, d in requests])
        self.keys_seen.append(keys)
        self.running += 1
        try:
            if self.gate is not None:
                assert self.gate.wait(10)
        finally:
            self.running -= 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [[float(len(doc)) for doc in docs] for _q, docs in requests]


def docs(n: int) -> List[str]:
    return ["x" * (i + 1) for i in range(n)]


def test_concurrent_searches_share_batches() -> None:
    model = ScriptedRanker(delay=0.02)
    batcher = MicroBatcher(model, max_pairs=64, max_wait_ms=5)

    async def main() -> List[List[float]]:
        try:
            return await asyncio.gather(*(batcher.rank(f"q{i}", docs(4)) for i in range(16)))
        finally:
            await batcher.aclose()

    results = run(main(), 10)
    assert results == [[1.0, 2.0, 3.0, 4.0]] * 16
    assert len(model.batches) < 16
    assert all(sum(n for _q, n in batch) <= 64 for batch in model.batches)
    assert batcher.stats()["searches"] == 16


def test_a_batch_closes_at_max_pairs() -> None:
    model = ScriptedRanker()
    # A full batch does not wait out max_wait_ms: one wait of a minute would
    # outlast the 10 s the run is given.
    batcher = MicroBatcher(model, max_pairs=10, max_wait_ms=60_000)

    async def main() -> None:
        try:
            await asyncio.gather(*(batcher.rank("q", docs(5)) for _ in range(6)))
        finally:
            await batcher.aclose()

    run(main(), 10)
    assert [sum(n for _q, n in b) for b in model.batches] == [10, 10, 10]


def test_keys_reach_the_model_per_search() -> None:
    model = ScriptedRanker()
    batcher = MicroBatcher(model, max_wait_ms=5)

    async def main() -> None:
        try:
            await asyncio.gather(batcher.rank("a", ["d1"], keys=[("i", "1", "h")]),
                                 batcher.rank("b", ["d2", "d3"]))
        finally:
            await batcher.aclose()

    run(main(), 10)
    assert model.keys_seen == [[[("i", "1", "h")], None]]


def test_full_queue_refuses_at_once() -> None:
    model = ScriptedRanker()
    model.gate = threading.Event()
    batcher = MicroBatcher(model, max_pairs=4, max_wait_ms=0, max_queue_pairs=8)

    async def main() -> None:
        running = asyncio.ensure_future(batcher.rank("running", docs(4)))
        for _ in range(1000):  # until the first batch is in the model
            if model.running:
                break
            await asyncio.sleep(0.005)
        assert model.running == 1
        queued = [asyncio.ensure_future(batcher.rank("queued", docs(4))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await batcher.rank("one too many", docs(4))
        assert isinstance(refused.value, RankFailed) and refused.value.reason == "overloaded"
        model.gate.set()
        assert len(await running) == 4
        assert [len(r) for r in await asyncio.gather(*queued)] == [4, 4]
        await batcher.aclose()

    run(main(), 10)
    assert batcher.counters["overloaded"] == 1


def test_work_ahead_beyond_the_deadline_is_refused() -> None:
    model = ScriptedRanker(delay=0.05)
    batcher = MicroBatcher(model, max_pairs=4, max_wait_ms=0)

    async def main() -> None:
        await batcher.rank("measure", docs(4))  # about 12 ms per pair
        assert batcher.cost_per_pair > 0.005
        ahead = [asyncio.ensure_future(batcher.rank("ahead", docs(4))) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(DeadlineExceeded) as refused:
            await batcher.rank("late", docs(4), timeout=0.02)
        assert refused.value.reason == "deadline"
        await asyncio.gather(*ahead)
        # Idle again: the same deadline is admitted and met.
        model.delay = 0.0
        assert len(await batcher.rank("now", docs(4), timeout=0.5)) == 4
        await batcher.aclose()

    run(main(), 10)


def test_a_missed_deadline_raises_and_the_work_is_skipped() -> None:
    model = ScriptedRanker()
    model.gate = threading.Event()
    batcher = MicroBatcher(model, max_pairs=4, max_wait_ms=0, timeout=0.05)

    async def main() -> None:
        blocked = asyncio.ensure_future(batcher.rank("blocked", docs(4), timeout=5))
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceeded):
            await batcher.rank("waits too long", docs(4))
        model.gate.set()
        await blocked
        assert len(await batcher.rank("after", docs(2))) == 2
        await batcher.aclose()

    run(main(), 10)
    assert [q for batch in model.batches for q, _n in batch] == ["blocked", "after"]


def test_model_errors_reach_every_caller_and_the_worker_survives() -> None:
    model = ScriptedRanker()
    model.fail = RuntimeError("model exploded")
    batcher = MicroBatcher(model, max_wait_ms=5)

    async def main() -> None:
        outcomes = await asyncio.gather(batcher.rank("a", docs(2)), batcher.rank("b", docs(2)),
                                        return_exceptions=True)
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        model.fail = None
        assert await batcher.rank("c", docs(2)) == [1.0, 2.0]
        await batcher.aclose()

    run(main(), 10)


def test_async_batch_rank_is_awaited_on_the_loop() -> None:
    class AsyncModel:
        def __init__(self) -> None:
            self.calls = 0

        async def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]]) -> List[List[float]]:
            self.calls += 1
            await asyncio.sleep(0.01)
            return [[0.5] * len(d) for _q, d in requests]

    model = AsyncModel()
    batcher = MicroBatcher(model, max_wait_ms=5)

    async def main() -> List[List[float]]:
        try:
            return await batcher.batch_rank([("a", docs(2)), ("b", docs(1))])
        finally:
            await batcher.aclose()

    assert run(main(), 10) == [[0.5, 0.5], [0.5]]
    assert model.calls == 1


def test_empty_windows_and_bad_arguments() -> None:
    batcher = MicroBatcher(ScriptedRanker())

    async def main() -> None:
        assert await batcher.rank("q", []) == []
        with pytest.raises(ValueError):
            await batcher.rank("q", ["a", "b"], keys=["only one"])
        await batcher.aclose()

    run(main(), 10)
    with pytest.raises(TypeError):
        MicroBatcher(object())
    with pytest.raises(ValueError):
        MicroBatcher(ScriptedRanker(), max_pairs=0)


def test_a_new_loop_gets_a_fresh_worker() -> None:
    model = ScriptedRanker()
    batcher = MicroBatcher(model, max_wait_ms=1)
    assert run(batcher.rank("first loop", docs(1)), 10) == [1.0]
    assert run(batcher.rank("second loop", docs(2)), 10) == [1.0, 2.0]

    async def close() -> None:
        await batcher.aclose()

    run(close(), 10)


def test_batches_count_model_inputs_when_the_ranker_says() -> None:
    class CachingModel(ScriptedRanker):
        def model_inputs(self, query: str, docs: Sequence[str], keys: Any = None) -> int:
            return 0 if query.startswith("cached") else len(docs) + 1

    model = CachingModel()
    batcher = MicroBatcher(model, max_pairs=12, max_wait_ms=20)

    async def main() -> None:
        try:
            await asyncio.gather(*(batcher.rank(f"cached {i}", docs(50)) for i in range(10)),
                                 *(batcher.rank(f"new {i}", docs(5)) for i in range(2)))
        finally:
            await batcher.aclose()

    run(main(), 10)
    # Ten cached windows count one each (500 pairs, but 10 inputs); the new
    # ones six each, so the first of them no longer fits under 12.
    assert [len(b) for b in model.batches] == [10, 2]


def test_a_lone_search_does_not_wait_and_the_loop_stays_free() -> None:
    model = ScriptedRanker()
    model.gate = threading.Event()
    # A lone search goes to the model at once: a wait of max_wait_ms (a
    # minute) would outlast the 10 s the run is given.
    batcher = MicroBatcher(model, max_wait_ms=60_000)

    async def main() -> Tuple[int, bool, List[float]]:
        ranking = asyncio.ensure_future(batcher.rank("alone", docs(3)))
        for _ in range(1000):
            if model.running:
                break
            await asyncio.sleep(0.005)
        # The model is held in its thread until the loop has ticked: a model
        # run on the loop would never see the gate open.
        ticks = 0
        for _ in range(10):
            await asyncio.sleep(0)
            ticks += 1
        held = model.running == 1 and not ranking.done()
        model.gate.set()
        scores = await ranking
        await batcher.aclose()
        return ticks, held, scores

    ticks, held, scores = run(main(), 10)
    assert ticks == 10 and held
    assert scores == [1.0, 2.0, 3.0] and len(model.batches) == 1


# -- a failing model never fails a search, nor the worker ----------------------

@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt, asyncio.CancelledError, BaseException],
                         ids=lambda k: k.__name__)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_anything_the_model_raises_fails_its_searches_only(kind: Any, is_async: bool) -> None:
    from selproxy.rankers.adapter import RankerAdapter, RankerRaised, RankJob

    state = {"raise": True}

    def scores(requests: Sequence[Tuple[str, Sequence[str]]]) -> List[List[float]]:
        if state["raise"]:
            raise kind("model died")
        return [[1.0] * len(d) for _q, d in requests]

    class Model:
        if is_async:
            async def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]]) -> List[List[float]]:
                await asyncio.sleep(0)
                return scores(requests)
        else:
            def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]]) -> List[List[float]]:
                return scores(requests)

    batcher = MicroBatcher(Model(), max_wait_ms=5)
    adapter = RankerAdapter(batcher)

    async def main() -> Tuple[List[Any], str, List[float]]:
        try:
            outcomes = await asyncio.gather(batcher.rank("a", docs(2), timeout=5),
                                            batcher.rank("b", docs(2), timeout=5),
                                            return_exceptions=True)
            with pytest.raises(RankFailed) as through_adapter:
                await adapter.rank([RankJob("c", docs(2))], 5.0)
            state["raise"] = False
            return outcomes, through_adapter.value.reason, await batcher.rank("d", docs(3), timeout=5)
        finally:
            await batcher.aclose()
            adapter.close()

    outcomes, reason, after = run(main(), 10)
    assert all(isinstance(o, RankerRaised) and isinstance(o.raised, kind) for o in outcomes)
    assert reason == "error"
    assert after == [1.0, 1.0, 1.0]


def test_unreadable_scores_fail_the_batch_not_the_worker() -> None:
    class Model:
        def __init__(self) -> None:
            self.answer: Any = [None]

        def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]]) -> Any:
            return self.answer if self.answer is not None else [[2.0] * len(d) for _q, d in requests]

    model = Model()
    batcher = MicroBatcher(model, max_wait_ms=0)

    async def main() -> List[float]:
        try:
            with pytest.raises(TypeError):
                await batcher.rank("a", docs(2), timeout=5)
            model.answer = None
            return await batcher.rank("b", docs(2), timeout=5)
        finally:
            await batcher.aclose()

    assert run(main(), 10) == [2.0, 2.0]


async def leave_one_call(batcher: MicroBatcher) -> None:
    """One search past its deadline, its model call left running; then, with
    ``max_abandoned=1``, the next search refused at once."""
    with pytest.raises(DeadlineExceeded):
        await batcher.rank("a", docs(2), timeout=0.1)
    for _ in range(100):  # the worker notices its caller has gone
        if batcher._abandoned:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await batcher.rank("b", docs(2), timeout=5)


def test_an_async_model_that_swallows_cancellation_is_left_and_bounded() -> None:
    stop = threading.Event()

    class Stubborn:
        def __init__(self) -> None:
            self.calls = 0
            self.finished = False

        async def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]]) -> List[List[float]]:
            self.calls += 1
            while not stop.is_set():
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    pass  # the defect under test
            self.finished = True
            return [[0.0] * len(d) for _q, d in requests]

    model = Stubborn()
    batcher = MicroBatcher(model, max_wait_ms=0, max_abandoned=1)

    async def main() -> Tuple[bool, bool]:
        # The model runs until ``stop``, which only the end of the test sets:
        # a caller or aclose that waited for it would not come back.
        await leave_one_call(batcher)
        left_running = not model.finished
        await batcher.aclose()
        closed_running = not model.finished
        stop.set()
        await asyncio.sleep(0.05)  # let the left call end before the loop closes
        return left_running, closed_running

    assert run(main(), 10) == (True, True)
    assert model.calls == 1


def test_a_stuck_sync_model_does_not_hold_aclose_or_the_process() -> None:
    model = ScriptedRanker()
    model.gate = threading.Event()
    batcher = MicroBatcher(model, max_wait_ms=0, max_abandoned=1)

    async def main() -> int:
        await leave_one_call(batcher)
        await batcher.aclose()
        return model.running

    try:
        # aclose came back while the model was still held at its gate.
        assert run(main(), 10) == 1
        batch_threads = [t for t in threading.enumerate() if t.name.startswith("selproxy-batch")]
        assert batch_threads and all(t.daemon for t in batch_threads)
    finally:
        model.gate.set()
