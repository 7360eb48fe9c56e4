"""RankerAdapter: sync and async rankers, batch_rank, keys, deadline, overload."""
import asyncio
import threading
import time

import pytest
from support.aio import run

from selproxy.rankers.adapter import RankerAdapter, RankFailed, RankJob

JOB = RankJob("q", ["a", "bb", "ccc"], keys=[1, 2, 3])


class SyncRanker:
    def __init__(self):
        self.threads = set()

    def rank(self, query, docs):
        self.threads.add(threading.current_thread().name)
        return [float(len(d)) for d in docs]


class AsyncKeysRanker:
    def __init__(self):
        self.keys = []

    async def rank(self, query, docs, keys=None):
        self.keys.append(keys)
        return [1.0] * len(docs)


def test_sync_ranker_runs_in_a_worker_thread():
    ranker = SyncRanker()
    adapter = RankerAdapter(ranker)
    scores, timing = run(adapter.rank([JOB], 1.0))
    assert scores == [[1.0, 2.0, 3.0]]
    assert ranker.threads and all(name.startswith("selproxy-ranker") for name in ranker.threads)
    assert timing.queue >= 0 and timing.rank >= 0
    assert adapter.pending == 0 and not adapter.wants_keys
    adapter.close()


def test_async_ranker_with_keys():
    ranker = AsyncKeysRanker()
    adapter = RankerAdapter(ranker)
    assert adapter.wants_keys
    scores, _ = run(adapter.rank([JOB, RankJob("r", ["x"], keys=["k"])], 1.0))
    assert scores == [[1.0, 1.0, 1.0], [1.0]]
    assert ranker.keys == [[1, 2, 3], ["k"]]


def test_batch_rank_used_for_many_jobs_only():
    class Batch:
        def __init__(self):
            self.calls = []

        def rank(self, query, docs):
            self.calls.append("rank")
            return [0.0] * len(docs)

        def batch_rank(self, requests):
            self.calls.append(("batch", len(requests)))
            return [[0.5] * len(docs) for _, docs in requests]

    ranker = Batch()
    adapter = RankerAdapter(ranker)
    assert run(adapter.rank([JOB, JOB], 1.0))[0] == [[0.5] * 3] * 2
    run(adapter.rank([JOB], 1.0))
    assert ranker.calls == [("batch", 2), "rank"]
    adapter.close()


@pytest.mark.parametrize("result", [[1.0], [1.0, float("nan"), 2.0], "abc", None])
def test_bad_scores_are_errors(result):
    class Bad:
        async def rank(self, query, docs):
            return result

    with pytest.raises(RankFailed) as info:
        run(RankerAdapter(Bad()).rank([JOB], 1.0))
    assert info.value.reason == "error"


def test_numpy_scores_are_accepted():
    np = pytest.importorskip("numpy")

    class Numpy:
        def rank(self, query, docs):
            return np.arange(len(docs), dtype="float32")

    adapter = RankerAdapter(Numpy())
    scores, _ = run(adapter.rank([JOB], 1.0))
    assert scores == [[0.0, 1.0, 2.0]] and all(type(s) is float for s in scores[0])
    adapter.close()


def test_deadline_and_overload_for_sync_rankers():
    release = threading.Event()

    class Stuck:
        def rank(self, query, docs):
            release.wait(5)
            return [0.0] * len(docs)

    adapter = RankerAdapter(Stuck(), threads=1, max_pending=2)

    async def scenario():
        reasons = []
        for _ in range(3):
            try:
                await adapter.rank([JOB], 0.05)
            except RankFailed as failure:
                reasons.append(failure.reason)
        return reasons

    started = time.perf_counter()
    # 1st: running, times out; 2nd: queued, times out and is cancelled; 3rd:
    # the first still holds its worker and slot, the 2nd's slot is free again.
    reasons = run(scenario())
    assert reasons == ["deadline", "deadline", "deadline"]
    assert adapter.pending == 1
    assert time.perf_counter() - started < 1.0
    release.set()
    for _ in range(100):
        if adapter.pending == 0:
            break
        time.sleep(0.01)
    assert adapter.pending == 0
    adapter.close()


def test_overloaded_when_pending_is_full():
    class Slow:
        async def rank(self, query, docs):
            await asyncio.sleep(0.2)
            return [0.0] * len(docs)

    adapter = RankerAdapter(Slow(), max_pending=1)

    async def scenario():
        first = asyncio.ensure_future(adapter.rank([JOB], 1.0))
        await asyncio.sleep(0)
        with pytest.raises(RankFailed) as info:
            await adapter.rank([JOB], 1.0)
        await first
        return info.value.reason

    assert run(scenario()) == "overloaded"
    assert adapter.pending == 0


def test_not_a_ranker():
    with pytest.raises(TypeError):
        RankerAdapter(object())
    assert run(RankerAdapter(SyncRanker()).rank([], 1.0))[0] == []


def test_a_ranker_that_asks_for_engine_scores_gets_them():
    from selproxy.rankers.adapter import RankerAdapter, RankJob
    from support.aio import run

    seen = {}

    class Fusing:
        def rank(self, query, docs, *, engine_scores=None):
            seen["scores"] = list(engine_scores)
            return [-s for s in engine_scores]

    adapter = RankerAdapter(Fusing())
    assert adapter.wants_engine_scores and not adapter.wants_keys
    try:
        scores, _timing = run(adapter.rank([RankJob("q", ["a", "b"], None, [2.0, 1.0])], deadline=5.0))
    finally:
        adapter.close()
    assert seen["scores"] == [2.0, 1.0]
    assert scores == [[-2.0, -1.0]]
