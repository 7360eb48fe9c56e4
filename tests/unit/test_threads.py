"""selproxy._threads.DaemonThreadPool: the pool ranker calls run in."""
import concurrent.futures
import threading

import pytest

from selproxy._threads import DaemonThreadPool


def test_results_errors_and_base_exceptions_reach_the_future():
    pool = DaemonThreadPool(2, thread_name_prefix="t-pool")
    try:
        assert pool.submit(lambda a, b=0: a + b, 1, b=2).result(5) == 3
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(5)
        # SystemExit in a worker thread would end it silently, leaving the
        # future pending for ever; the future carries it instead.
        failed = pool.submit(lambda: (_ for _ in ()).throw(SystemExit(3)))
        assert isinstance(failed.exception(5), SystemExit)
        assert pool.submit(threading.current_thread).result(5).name.startswith("t-pool")
    finally:
        pool.shutdown(wait=True)


def test_threads_are_daemons_never_joined_at_exit_and_bounded_in_number():
    release = threading.Event()
    pool = DaemonThreadPool(2, thread_name_prefix="t-stuck")
    futures = [pool.submit(release.wait, 10) for _ in range(4)]
    for _ in range(500):  # both threads have taken their call
        if all(f.running() for f in futures[:2]):
            break
        threading.Event().wait(0.01)
    threads = [t for t in threading.enumerate() if t.name.startswith("t-stuck")]
    assert len(threads) == 2 and all(t.daemon for t in threads)
    pool.shutdown(wait=False, cancel_futures=True)
    assert [f.cancelled() for f in futures[2:]] == [True, True]
    with pytest.raises(RuntimeError):
        pool.submit(print)
    release.set()
    assert all(f.result(5) for f in futures[:2])
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()


def test_it_is_an_executor():
    assert isinstance(DaemonThreadPool(), concurrent.futures.Executor)
    with pytest.raises(ValueError):
        DaemonThreadPool(0)


def test_queued_work_still_runs_after_a_shutdown_that_does_not_cancel_it():
    pool = DaemonThreadPool(1)
    gate = threading.Event()
    first = pool.submit(gate.wait, 10)
    queued = [pool.submit(lambda n=n: n) for n in range(3)]
    pool.shutdown(wait=False)
    gate.set()
    assert first.result(5) is True and [f.result(5) for f in queued] == [0, 1, 2]
