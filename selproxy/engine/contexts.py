"""Scroll and point-in-time contexts: what a walk over an index remembers
between requests, how long it lives, and how many may be open.  Sans-io: the
clock is injected, and nothing here touches SQLite.

What a context sees (``NOTE(engine):`` this engine does not hold a SQLite
snapshot open between requests: in ``:memory:`` mode it would block every
writer, and with a file it would stop WAL checkpoints for as long as a walk
lasts).  Instead a context records, for each index it covers, the index's
table number and its *high-water mark*: the largest internal document number
(``rid``) present when it opened.  Every page of the walk is then cut to
documents numbered at or below that mark, so:

- a walk sorted by ``_shard_doc`` (or ``_doc``, with the tiebreaker a point in
  time adds) sees every document that was present when it opened, and is still
  present when its page is read, exactly once;
- a document updated during the walk keeps its number, and is seen once, with
  the contents it has when its page is read;
- a document deleted before its page is read is not seen;
- documents added after the context opened are not seen, except one that
  reuses the number of a deleted document above every other (SQLite hands out
  ``max(rid) + 1``);
- an index deleted (or deleted and created again) after the context opened
  makes the context's searches fail with ``search_context_missing_exception``;
- ``hits.total`` is counted once per query (a scroll's on its first page, a
  point in time's on the first search with that query) and then repeated, as
  Elasticsearch's frozen view reports it; so later pages cost no count.

A search that names no keep-alive renews the one the context has.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import ElasticsearchParseError, IllegalArgument, SearchContextMissing, TooManySearchContexts

__all__ = ("Target", "SearchContext", "SearchContexts", "parse_time_value")

_TIME_UNITS = {"nanos": 1e-9, "micros": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TIME_VALUE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(nanos|micros|ms|s|m|h|d)\s*$")

DEFAULT_MAX_OPEN = 500          # Elasticsearch's search.max_open_scroll_context
DEFAULT_MAX_KEEP_ALIVE = 86400.0  # Elasticsearch's search.max_keep_alive (24h)


def parse_time_value(value: Any, setting: str) -> float:
    """Seconds in an Elasticsearch time value (``30s``, ``1m``, ``500ms``)."""
    match = _TIME_VALUE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ElasticsearchParseError(f"failed to parse setting [{setting}] with value [{value}] as a time value: "
                                      "unit is missing or unrecognized")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


@dataclasses.dataclass(frozen=True)
class Target:
    """One index a context covers: its name, its table number (a new index of
    the same name gets a new one) and its high-water mark."""
    name: str
    num: int
    high_water: int


@dataclasses.dataclass
class SearchContext:
    kind: str                      # "scroll" or "pit"
    number: int
    id: str
    targets: List[Target]
    keep_alive: float
    expires: float
    # A scroll's own state: its search, where its last page ended, and the
    # total and max score of its first page (Elasticsearch reports those on
    # every page of a scroll).
    request: Any = None
    after: Optional[List[Any]] = None
    total: Optional[Tuple[int, str, Optional[float]]] = None
    done: bool = False             # a page came back empty: the scroll is exhausted
    # A point in time's hit counts, by query: counted on the first page that asks, then
    # reported as they were (Elasticsearch's totals over a point in time do not move).
    totals: Dict[str, Tuple[int, str, Optional[float]]] = dataclasses.field(default_factory=dict)
    lock: Any = None               # the app's asyncio.Lock: one page of a scroll at a time


class SearchContexts:
    """The open contexts of one engine, each kind capped at ``max_open``.

    An expired context is dropped when it is next looked up, or when a new one
    is opened; so it costs nothing but its entry (a few hundred bytes)."""

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN, max_keep_alive: float = DEFAULT_MAX_KEEP_ALIVE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_open = max_open
        self.max_keep_alive = max_keep_alive
        self.clock = clock
        self._open: Dict[str, SearchContext] = {}
        self._next = 0

    def count(self, kind: str) -> int:
        self.sweep()
        return sum(1 for ctx in self._open.values() if ctx.kind == kind)

    def check_keep_alive(self, seconds: float, text: str) -> None:
        if seconds > self.max_keep_alive:
            raise IllegalArgument(
                f"Keep alive for request ({text}) is too large. It must be less than "
                f"({_human_seconds(self.max_keep_alive)}). This limit can be set by changing the "
                "[search.max_keep_alive] cluster level setting.")

    def open(self, kind: str, targets: List[Target], keep_alive: float, **state: Any) -> SearchContext:
        self.sweep()
        if self.count(kind) >= self.max_open:
            what = "scroll" if kind == "scroll" else "point in time"
            raise TooManySearchContexts(
                f"Trying to create too many {what} contexts. Must be less than or equal to: [{self.max_open}]. "
                f"This limit can be set by changing the [search.max_open_scroll_context] setting.")
        self._next += 1
        token = f"{kind}:{self._next}:{os.urandom(12).hex()}"
        ctx_id = base64.urlsafe_b64encode(token.encode()).decode()
        ctx = SearchContext(kind, self._next, ctx_id, targets, keep_alive, self.clock() + keep_alive, **state)
        self._open[ctx_id] = ctx
        return ctx

    def get(self, ctx_id: Any, kind: str) -> SearchContext:
        """The live context of that id, or ``search_context_missing_exception``."""
        number = self._number(ctx_id, kind)
        ctx = self._open.get(ctx_id)
        if ctx is None or ctx.kind != kind:
            raise SearchContextMissing(str(number))
        if ctx.expires <= self.clock():
            del self._open[ctx_id]
            raise SearchContextMissing(str(number))
        return ctx

    def extend(self, ctx: SearchContext, keep_alive: Optional[float]) -> None:
        if keep_alive is not None:
            ctx.keep_alive = keep_alive
        ctx.expires = self.clock() + ctx.keep_alive

    def close(self, ctx_id: Any, kind: str) -> int:
        """How many contexts were freed (0 or 1)."""
        self._number(ctx_id, kind)
        ctx = self._open.get(ctx_id)
        if ctx is None or ctx.kind != kind:
            return 0
        del self._open[ctx_id]
        return 0 if ctx.expires <= self.clock() else 1

    def close_all(self, kind: str) -> int:
        self.sweep()
        doomed = [key for key, ctx in self._open.items() if ctx.kind == kind]
        for key in doomed:
            del self._open[key]
        return len(doomed)

    def sweep(self) -> None:
        now = self.clock()
        for key in [key for key, ctx in self._open.items() if ctx.expires <= now]:
            del self._open[key]

    @staticmethod
    def _number(ctx_id: Any, kind: str) -> int:
        try:
            token = base64.urlsafe_b64decode(ctx_id.encode()).decode() if isinstance(ctx_id, str) else ""
        except (binascii.Error, UnicodeDecodeError, ValueError):
            token = ""
        parts = token.split(":")
        if len(parts) != 3 or parts[0] != kind or not parts[1].isdigit():
            raise IllegalArgument("Cannot parse scroll id" if kind == "scroll" else "invalid id")
        return int(parts[1])


def _human_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds}s"
