"""Run coroutines in tests on a fresh uvloop loop, bounded in time."""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine, List, TypeVar

import uvloop

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` to completion on a new uvloop loop, failing after ``timeout``
    seconds, and fail as well if anything reached the loop's exception handler."""
    loop = uvloop.new_event_loop()
    errors: List[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        result = loop.run_until_complete(asyncio.wait_for(coro, timeout))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    if errors:
        raise AssertionError(f"unhandled errors on the loop: {errors!r}")
    return result
