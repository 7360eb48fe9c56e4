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
            release.wait(60)
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

    # 1st: running, times out; 2nd: queued, times out and is cancelled; 3rd:
    # the first still holds its worker and slot, the 2nd's slot is free again.
    # The ranker is held until ``release``: three deadlines while it still
    # runs show the callers were not kept by it.
    reasons = run(scenario(), 30)
    assert reasons == ["deadline", "deadline", "deadline"]
    assert adapter.pending == 1 and not release.is_set()
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


# -- a failing ranker never fails a search ------------------------------------

RAISED = [SystemExit, KeyboardInterrupt, asyncio.CancelledError, BaseException, GeneratorExit,
          RuntimeError]


def raising_ranker(kind, is_async, batch):
    """A ranker whose rank (or batch_rank) raises ``kind``; once ``ok`` is set
    it answers, so a test can check the adapter still works afterwards."""
    state = {"ok": False}

    def answer(docs):
        if not state["ok"]:
            raise kind("boom")
        return [1.0] * len(docs)

    if is_async:
        class Ranker:
            async def rank(self, query, docs):
                await asyncio.sleep(0)
                return answer(docs)

            if batch:
                async def batch_rank(self, requests):
                    await asyncio.sleep(0)
                    return [answer(docs) for _, docs in requests]
    else:
        class Ranker:
            def rank(self, query, docs):
                return answer(docs)

            if batch:
                def batch_rank(self, requests):
                    return [answer(docs) for _, docs in requests]
    return Ranker(), state


@pytest.mark.parametrize("kind", RAISED, ids=lambda k: k.__name__)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("jobs", [1, 3], ids=["search", "msearch"])
def test_anything_a_ranker_raises_is_a_fallback_and_the_loop_lives_on(kind, is_async, jobs):
    ranker, state = raising_ranker(kind, is_async, batch=jobs > 1)
    adapter = RankerAdapter(ranker)

    async def scenario():
        with pytest.raises(RankFailed) as info:
            await adapter.rank([JOB] * jobs, 2.0)
        state["ok"] = True
        scores, _ = await adapter.rank([JOB] * jobs, 2.0)  # the same worker still serves
        return info.value, scores

    try:
        failure, scores = run(scenario(), timeout=10)
    finally:
        adapter.close()
    assert failure.reason == "error" and str(failure) == f"error: {kind.__name__}"
    assert scores == [[1.0, 1.0, 1.0]] * jobs
    assert adapter.pending == 0


def test_a_cancelled_search_is_still_cancelled():
    """A ranker raising CancelledError is its failure; the search's own task
    being cancelled is not, and stays a cancellation."""
    class Slow:
        async def rank(self, query, docs):
            await asyncio.sleep(10)

    adapter = RankerAdapter(Slow())

    async def scenario():
        search = asyncio.ensure_future(adapter.rank([JOB], 5.0))
        await asyncio.sleep(0.05)
        search.cancel()
        with pytest.raises(asyncio.CancelledError):
            await search
        for _ in range(100):
            if adapter.pending == 0:
                break
            await asyncio.sleep(0.01)

    run(scenario(), timeout=10)
    assert adapter.pending == 0 and adapter.abandoned == 0


def test_an_async_ranker_that_swallows_cancellation_is_left_at_the_deadline():
    stop = threading.Event()

    class Stubborn:
        async def rank(self, query, docs):
            while not stop.is_set():
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    pass  # the defect under test
            return [0.0] * len(docs)

    adapter = RankerAdapter(Stubborn(), max_abandoned=1)

    async def scenario():
        with pytest.raises(RankFailed) as late:
            await adapter.rank([JOB], 0.1)
        # ``stop`` is not set: the ranker still runs, and the caller is back.
        still_running = not stop.is_set()
        assert adapter.abandoned == 1 and adapter.pending == 1
        # The bound on calls left behind: the next search falls back at once.
        with pytest.raises(RankFailed) as refused:
            await adapter.rank([JOB], 5.0)
        stop.set()
        for _ in range(200):
            if adapter.pending == 0:
                break
            await asyncio.sleep(0.01)
        return late.value.reason, still_running, refused.value.reason

    reason, still_running, refused = run(scenario(), timeout=10)
    assert reason == "deadline" and still_running
    assert refused == "overloaded"
    assert adapter.pending == 0 and adapter.abandoned == 0


def test_a_stuck_sync_ranker_counts_as_abandoned_until_it_returns():
    release = threading.Event()

    class Stuck:
        def rank(self, query, docs):
            release.wait(10)
            return [0.0] * len(docs)

    adapter = RankerAdapter(Stuck(), threads=2, max_abandoned=1)

    async def scenario():
        with pytest.raises(RankFailed) as late:
            await adapter.rank([JOB], 0.05)
        with pytest.raises(RankFailed) as refused:
            await adapter.rank([JOB], 0.05)
        return late.value.reason, refused.value.reason

    try:
        assert run(scenario(), timeout=10) == ("deadline", "overloaded")
        assert adapter.abandoned == 1
        # A daemon thread: a stopped proxy does not wait for it at exit.
        assert all(t.daemon for t in threading.enumerate() if t.name.startswith("selproxy-ranker"))
    finally:
        release.set()
    for _ in range(200):
        if adapter.abandoned == 0 and adapter.pending == 0:
            break
        time.sleep(0.01)
    assert adapter.abandoned == 0 and adapter.pending == 0
    adapter.close()


@pytest.mark.parametrize("result", [["1", "2", "3"], [True, False, True], [None, None, None],
                                    [1.0, float("inf"), 2.0], [1.0, 2.0, 3.0, 4.0], b"abc",
                                    {0: 1.0, 1: 2.0, 2: 3.0}, 1.0, [1.0, 2.0, "3"]],
                         ids=repr)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_scores_that_are_not_real_numbers_are_errors(result, is_async):
    if is_async:
        class Bad:
            async def rank(self, query, docs):
                return result
    else:
        class Bad:
            def rank(self, query, docs):
                return result

    adapter = RankerAdapter(Bad())
    try:
        with pytest.raises(RankFailed) as info:
            run(adapter.rank([JOB], 1.0))
    finally:
        adapter.close()
    assert info.value.reason == "error"


def test_an_endless_score_iterator_is_an_error_not_a_hang():
    import itertools

    class Endless:
        def rank(self, query, docs):
            return itertools.count()

    adapter = RankerAdapter(Endless())
    try:
        with pytest.raises(RankFailed) as info:
            run(adapter.rank([JOB], 1.0), timeout=5)
    finally:
        adapter.close()
    assert info.value.reason == "error" and "4+ scores" in str(info.value.__cause__)


def test_fractions_and_numpy_integers_are_real_numbers():
    from fractions import Fraction

    from selproxy.rankers.adapter import checked_scores

    assert checked_scores([Fraction(1, 2), 2, 3.5], 3) == [0.5, 2.0, 3.5]
    np = pytest.importorskip("numpy")
    assert checked_scores(np.array([1, 2, 3], dtype="int64"), 3) == [1.0, 2.0, 3.0]
    with pytest.raises(TypeError):
        checked_scores(np.array([True, False, True]), 3)


# -- the written contract (selproxy.rankers.base) ---------------------------------

def test_the_optional_keywords_are_read_from_the_written_protocol():
    from selproxy.rankers.base import RANK_KEYWORDS

    assert RANK_KEYWORDS == ("keys", "engine_scores", "timeout")

    class AllKeywords:
        def __init__(self):
            self.got = []

        def rank(self, query, docs, *, keys=None, engine_scores=None, timeout=None, other=None):
            self.got.append((keys, engine_scores, timeout, other))
            return [0.0] * len(docs)

    ranker = AllKeywords()
    adapter = RankerAdapter(ranker)
    assert adapter.wants_keys and adapter.wants_engine_scores
    run(adapter.rank([RankJob("q", ["a"], keys=["k"], engine_scores=[2.0])], 1.0))
    (keys, engine_scores, timeout, other), = ranker.got
    # Only the Protocol's keywords are passed; a keyword outside it keeps its default.
    assert keys == ["k"] and engine_scores == [2.0] and timeout == 1.0 and other is None
    adapter.close()


def test_optional_parts_are_found_against_the_protocols():
    from selproxy.rankers import AsyncCloses, BatchRanker, Ranker, WarmsUp
    from selproxy.rankers.adapter import aclose_method, batch_method, warmup_method

    class Full:
        def rank(self, query, docs):
            return [0.0] * len(docs)

        def batch_rank(self, requests):
            return [[1.0] * len(docs) for _, docs in requests]

        def warmup(self):
            pass

        async def aclose(self):
            pass

    class NotCallable:
        batch_rank = warmup = aclose = None

        def rank(self, query, docs):
            return [0.0] * len(docs)

    full, bare = Full(), NotCallable()
    assert isinstance(full, Ranker) and isinstance(full, BatchRanker)
    assert isinstance(full, WarmsUp) and isinstance(full, AsyncCloses)
    assert batch_method(full) == full.batch_rank and warmup_method(full) == full.warmup
    assert aclose_method(full) == full.aclose
    # An attribute of the right name that cannot be called is not the part.
    assert batch_method(bare) is None and warmup_method(bare) is None and aclose_method(bare) is None
    assert not isinstance(SyncRanker(), BatchRanker)
    adapter = RankerAdapter(bare)
    assert run(adapter.rank([JOB, JOB], 1.0))[0] == [[0.0] * 3] * 2  # rank, once per job
    adapter.close()
