"""Start the embedded engine on a free loopback port for a test.

- ``async with running_engine() as engine:`` in async tests (``engine.url``);
- ``with engine_in_thread() as url:`` in sync tests: the engine runs on its own
  uvloop loop in a background thread and is stopped, and its thread joined,
  when the block ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, AsyncIterator, Iterator, Optional

import uvloop

from selproxy.engine import Engine

__all__ = ("running_engine", "engine_in_thread")


@contextlib.asynccontextmanager
async def running_engine(data: str = ":memory:") -> AsyncIterator[Engine]:
    async with Engine(data=data) as engine:
        yield engine


@contextlib.contextmanager
def engine_in_thread(data: str = ":memory:", timeout: float = 30.0, **options: Any) -> Iterator[str]:
    """Run an engine in a background thread; yields its base URL.  ``options``
    go to :class:`Engine` (``max_open_contexts=1``...)."""
    loop = uvloop.new_event_loop()
    ready = threading.Event()
    engine = Engine(data=data, **options)
    stop: Optional[asyncio.Event] = None
    failure: list = []

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            async with engine:
                ready.set()
                await stop.wait()
        except BaseException as exc:  # reported to the test thread below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="engine-under-test",
                              daemon=True)
    thread.start()
    try:
        if not ready.wait(timeout):
            raise TimeoutError("the engine did not start in time")
        if failure:
            raise failure[0]
        yield engine.url
    finally:
        if stop is not None and thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError("the engine did not stop in time")
        loop.close()
