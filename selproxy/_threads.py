"""Worker threads that never hold the process up: for code the proxy does
not control (a ranker's ``rank``, a model's warm-up).

:class:`concurrent.futures.ThreadPoolExecutor` makes non-daemon threads and
joins every one of them when the interpreter exits (``threading``'s
at-exit hook in ``concurrent/futures/thread.py``), so one ranker call stuck
in a loop or a socket keeps a stopped proxy alive for ever.
:class:`DaemonThreadPool` has the same ``submit``/``shutdown`` surface, but
its threads are daemons that nobody joins: once the proxy has drained, the
process exits whatever a ranker thread is doing.
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ("DaemonThreadPool",)

_WorkItem = Tuple["concurrent.futures.Future[Any]", Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]


class DaemonThreadPool(concurrent.futures.Executor):
    """Up to ``max_workers`` daemon threads, started as work arrives."""

    def __init__(self, max_workers: int = 1, thread_name_prefix: str = "selproxy-worker") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._queue: "queue.SimpleQueue[Optional[_WorkItem]]" = queue.SimpleQueue()
        self._threads: List[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
               ) -> "concurrent.futures.Future[Any]":
        future: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            self._queue.put((future, fn, args, kwargs))
            # A thread more only while the work waiting outnumbers the threads
            # waiting for work.
            if self._queue.qsize() > self._idle and len(self._threads) < self._max_workers:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self._prefix}_{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
            if item is None:
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # the future carries it; the thread lives on
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; cancel the queued work if asked, else let it run;
        then let the threads end.  ``wait`` joins them (never do that with a
        call that may not return)."""
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in threads:
            self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()
