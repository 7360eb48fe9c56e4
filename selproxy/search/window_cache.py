"""The window cache: later pages of a reranked search for free.

A search's reranked window (the engine's response to the widened request and
the ranker's scores for it) is kept, so the next page of the same search is
cut from it with no engine call and no model call.  That is the consistency
rule of :mod:`selproxy.search.rewrite` made literal: every page of one query
is cut from the same list.  Only what changes the answer is in the key
(:func:`window_key`); ``from`` and ``size`` are not.

What is served from the cache, and what refreshes it:

* a page with ``from > 0`` inside the window (and within the hits the entry
  holds) is served from it: ``X-Selproxy-Rerank: applied; cached``;
* a first page (``from`` 0) goes to the engine and ranker and stores the
  window afresh, unless ``cache_first_page`` is set: a new search sees the
  index as it is now, and its later pages continue exactly that list;
* only a complete ranking is stored: a fallback, a skip or a partial ranking
  (``partial=K/N``, a ranker short of time) is not frozen for later pages.

Invalidation.  Entries expire after ``cache_ttl`` seconds.  A write that
passes through the proxy (:data:`WRITE_ROUTES`) is noted in a
:class:`WriteLog` shared by the workers, when its head is read and again when
its exchange ends; an entry is served only if no write to its indices was
noted since ``cache_settle`` seconds before the entry's search began (the
engine shows a write only after a refresh: 1 s by default in Elasticsearch).
With ``cache_invalidation="all"`` (the default) any write drops every entry:
an alias and the indices behind it have different names, and the proxy cannot
tell them apart without asking the engine.  With ``"index"`` a write to an
index drops the entries that name it, and entries over a wildcard, ``_all``,
no index or a remote index; use it only where searches name the indices that
are written (no aliases).  A ``_bulk`` body is streamed, not read, so its
action lines' ``_index`` are unknown: a ``_bulk`` drops every entry.  Writes
that bypass the proxy are covered only by the TTL.

A cached window is never served to another principal: the key holds every
request header except those listed in :data:`NEUTRAL_HEADERS` (transport,
tracing and client-library headers), so ``Authorization``, cookies, API keys,
run-as and tenant headers each separate the entries.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import mmap
import time
import zlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl

from ..handler import Headers, NotifyRoute, Response

__all__ = ("WindowCache", "WriteLog", "CachedWindow", "window_key", "write_routes", "WRITE_ROUTES",
           "NEUTRAL_HEADERS")

#: Request headers that do not change a search's answer, left out of the key.
#: Every other header is in it: credentials of any scheme, run-as, tenants,
#: an ``Accept`` that asks for another response format.
NEUTRAL_HEADERS = frozenset((
    "host", "connection", "keep-alive", "content-length", "transfer-encoding", "te",
    "content-encoding", "accept-encoding", "content-type", "expect", "date", "user-agent",
    "x-opaque-id", "traceparent", "tracestate", "x-request-id", "x-amzn-trace-id",
    "x-elastic-client-meta", "x-elastic-product-origin",
))

#: Writes the proxy hears of: (methods, path, every index).  ``every``
#: routes drop every entry whatever ``{index}`` says (a ``_bulk``'s action
#: lines may name other indices; alias changes move searches between indices).
WRITE_ROUTES: Tuple[Tuple[Tuple[str, ...], str, bool], ...] = (
    (("POST", "PUT"), "/_bulk", True),
    (("POST", "PUT"), "/{index}/_bulk", True),
    (("POST", "PUT"), "/{index}/_doc", False),
    (("POST", "PUT", "DELETE"), "/{index}/_doc/{id}", False),
    (("POST", "PUT"), "/{index}/_create/{id}", False),
    (("POST",), "/{index}/_update/{id}", False),
    (("POST",), "/{index}/_delete_by_query", False),
    (("POST",), "/{index}/_update_by_query", False),
    (("POST", "GET"), "/_refresh", True),
    (("POST", "GET"), "/{index}/_refresh", False),
    (("POST",), "/_reindex", True),
    (("POST",), "/_aliases", True),
    (("POST", "PUT", "DELETE"), "/{index}/_alias/{name}", True),
    (("POST", "PUT", "DELETE"), "/{index}/_aliases/{name}", True),
    (("POST",), "/{index}/_open", False),
    (("POST",), "/{index}/_close", False),
    (("PUT", "DELETE"), "/{index}", False),
)

#: Slots of the write log; index names hash into them (a collision only
#: drops more than needed).  Slot 0: any write; slot 1: a write to every index.
WRITE_SLOTS = 4096
_ANY, _EVERY = 0, 1


class WriteLog:
    """When each index (by hash) was last written through the proxy, in
    ``time.monotonic()`` seconds: a system-wide clock on Linux, so the
    workers, which share this map across their fork, compare it directly.

    Made before the workers fork (``Proxy.__init__``), it is one anonymous
    shared mapping of :data:`WRITE_SLOTS` doubles (32 KiB).  Two workers
    writing one slot at once may leave the older of two close times: the
    notice at the end of the write sets it again.
    """

    def __init__(self, slots: int = WRITE_SLOTS) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, 8 * slots, flags=mmap.MAP_SHARED)
        self._times = memoryview(self._map).cast("d")

    @staticmethod
    def _slot_of(name: str, slots: int) -> int:
        return 2 + zlib.crc32(name.encode("utf-8", "surrogatepass")) % (slots - 2)

    def slots_for(self, indices: Sequence[str], by_index: bool) -> Tuple[int, ...]:
        """The slots a search over ``indices`` depends on."""
        if not by_index or not indices or any(_broad(name) for name in indices):
            return (_ANY, _EVERY)
        return (_EVERY,) + tuple(sorted({self._slot_of(name, self.slots) for name in indices}))

    def note(self, indices: Optional[Sequence[str]], now: Optional[float] = None) -> None:
        """A write to ``indices`` (None: to every index)."""
        now = time.monotonic() if now is None else now
        self._times[_ANY] = now
        if indices is None or not indices or any(_broad(name) for name in indices):
            self._times[_EVERY] = now
            return
        for name in indices:
            self._times[self._slot_of(name, self.slots)] = now

    def last_write(self, slots: Iterable[int]) -> float:
        return max((self._times[s] for s in slots), default=0.0)

    def close(self) -> None:
        self._times.release()
        self._map.close()


def _broad(name: str) -> bool:
    """An index expression that may cover indices it does not name."""
    return (name.startswith("_") or name.startswith("-") or ":" in name
            or any(c in name for c in "*?[") or not name)


@dataclasses.dataclass
class CachedWindow:
    """One search's reranked window, as the engine and the ranker gave it."""

    status: int
    headers: Headers
    #: The engine's decoded (uncompressed) response body to the widened request.
    body: bytes
    scores: Tuple[float, ...]
    #: Hits asked of the engine, and hits it returned.
    fetch: int
    hits: int
    #: The applied outcome's details (``fusion=off``), without ``cached``.
    details: str
    #: ``time.monotonic()`` when its search began (before the engine call).
    started: float
    expires: float
    slots: Tuple[int, ...]
    size: int

    def covers(self, offset: int, size: int) -> bool:
        """Whether the page ``[offset, offset + size)`` is all in the entry:
        within the hits asked for, or the engine had no more."""
        return offset + size <= self.fetch or self.hits < self.fetch


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=repr).encode("utf-8", "surrogatepass")


def window_key(*, route: Any, ranker: str, window: int, path: str, query_string: str,
               body: Optional[Dict[str, Any]], headers: Headers, extra: Sequence[Any] = (),
               paging: Sequence[str] = ("from", "size")) -> bytes:
    """A SHA-256 of everything that changes a search's window: the route (its
    kind, path pattern, text fields, query path, topn), the ranker, the window
    size, the request path (its indices), the URL parameters and the body
    without ``paging`` (``from``/``size``), and the non-neutral headers."""
    digest = hashlib.sha256()
    params = sorted((k, v) for k, v in parse_qsl(query_string, keep_blank_values=True)
                    if k not in paging)
    if body is not None:
        body = {k: v for k, v in body.items() if k not in paging}
    # Header values keep their order within a name: a list is an order.
    kept = sorted(((k.lower(), i, v) for i, (k, v) in enumerate(headers)
                   if k.lower() not in NEUTRAL_HEADERS))
    for part in (repr(route), ranker, window, path, params, body,
                 [(k, v) for k, _, v in kept], list(extra)):
        digest.update(_canonical(part))
        digest.update(b"\x00")
    return digest.digest()


class WindowCache:
    """Entries by key, least recently used first, bounded in count and bytes."""

    def __init__(self, *, max_entries: int = 1024, max_bytes: int = 64 << 20, ttl: float = 120.0,
                 settle: float = 1.0, by_index: bool = False, first_page: bool = False,
                 write_log: Optional[WriteLog] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or max_bytes < 1 or ttl <= 0 or settle < 0:
            raise ValueError("the window cache needs entries >= 1, bytes >= 1, ttl > 0, settle >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.settle = settle
        self.by_index = by_index
        self.first_page = first_page
        self.write_log = write_log if write_log is not None else WriteLog()
        self._clock = clock
        self._entries: "collections.OrderedDict[bytes, CachedWindow]" = collections.OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.write_notices = 0
        self.evictions: Dict[str, int] = collections.Counter()
        self.not_stored: Dict[str, int] = collections.Counter()

    def __len__(self) -> int:
        return len(self._entries)

    # -- lookup and store ----------------------------------------------

    def serves(self, offset: int) -> bool:
        """Whether a page at ``offset`` may be answered from the cache."""
        return offset > 0 or self.first_page

    def get(self, key: bytes, offset: int, size: int) -> Optional[CachedWindow]:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        now = self._clock()
        reason = self._stale(entry, now)
        if reason:
            self._drop(key, reason)
            self.misses += 1
            return None
        if not entry.covers(offset, size):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def _stale(self, entry: CachedWindow, now: float) -> str:
        if now >= entry.expires:
            return "ttl"
        if self.write_log.last_write(entry.slots) + self.settle > entry.started:
            return "write"
        return ""

    def put(self, key: bytes, response: Response, body: bytes, scores: Sequence[float], *,
            fetch: int, hits: int, details: str, started: float, indices: Sequence[str]) -> bool:
        """Keep a complete ranking of a window; False when it is not kept."""
        slots = self.write_log.slots_for(indices, self.by_index)
        if self.write_log.last_write(slots) + self.settle > started:
            self.not_stored["recent_write"] += 1
            return False
        headers = [(k, v) for k, v in response.headers
                   if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")]
        size = (len(body) + 8 * len(scores) + len(key)
                + sum(len(k) + len(v) for k, v in headers) + 256)
        if size > self.max_bytes:
            self.not_stored["too_large"] += 1
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        entry = CachedWindow(response.status, headers, body, tuple(float(s) for s in scores),
                             fetch, hits, details, started, self._clock() + self.ttl, slots, size)
        self._entries[key] = entry
        self.bytes += size
        self.stores += 1
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest, "entries" if len(self._entries) > self.max_entries else "bytes")
        return True

    def _drop(self, key: bytes, reason: str) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        self.evictions[reason] += 1

    # -- the search path's calls ------------------------------------------

    def key_for(self, route: Any, ranker: str, prep: Any, plan: Any,
                body: Optional[Dict[str, Any]]) -> bytes:
        """The key of a planned search (``prep``: the service's prepared request)."""
        return window_key(route=route, ranker=ranker, window=plan.window, path=prep.path,
                          query_string=prep.query_string, body=body, headers=prep.headers,
                          extra=(plan.explain, prep.indices))

    def page(self, key: bytes, plan: Any) -> Optional[Tuple[Response, Dict[str, Any], Tuple[str, str]]]:
        """The client's page cut from the kept window, with the engine's
        response (its status and headers) and the outcome; None on a miss."""
        from . import _json
        from .respond import apply_es
        from .source_filter import SourceFilterTooCostly

        entry = self.get(key, plan.offset, plan.size)
        if entry is None:
            return None
        try:
            doc = _json.loads(entry.body)
            apply_es(doc, plan, entry.scores)
        except (ValueError, SourceFilterTooCostly):  # the search path decides again
            self.hits -= 1
            self.misses += 1
            return None
        details = f"{entry.details}; cached" if entry.details else "cached"
        return Response(entry.status, entry.headers), doc, ("applied", details)

    def keep(self, key: bytes, response: Response, decoded: bytes, scores: Optional[Sequence[float]],
             outcome: Tuple[str, str], plan: Any, *, hits: int, started: float,
             indices: Sequence[str]) -> bool:
        """Keep a search's window (``decoded``: the engine's body, ``hits``
        long) when its ranking is complete."""
        kind, details = outcome
        if kind != "applied" or scores is None:
            self.not_stored[kind] += 1
            return False
        if "partial=" in details:
            self.not_stored["partial"] += 1
            return False
        return self.put(key, response, decoded, scores, fetch=plan.fetch, hits=hits, details=details,
                        started=started, indices=indices)

    # -- invalidation --------------------------------------------------

    def on_write(self, indices: Optional[Sequence[str]]) -> None:
        """A write to ``indices`` (None: any index) passed through this worker:
        note it for every worker, and drop this worker's entries it stales."""
        self.write_notices += 1
        self.write_log.note(indices)
        if not self.by_index or indices is None or not indices or any(_broad(n) for n in indices):
            # Every entry depends on such a write: all go now, so a stream of
            # writes costs nothing once the cache is empty.
            for key in list(self._entries):
                self._drop(key, "write")
        # PERF(selproxy): a write to named indices leaves the entries it
        # stales to the check on their next lookup (counted then), not a
        # scan of every entry per write; the bounds still hold.

    def notify_routes(self) -> List[NotifyRoute]:
        """The notify routes that tell this cache of writes."""
        return write_routes(self.on_write)

    # -- status --------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
            "ttl_seconds": self.ttl,
            "settle_seconds": self.settle,
            "invalidation": "index" if self.by_index else "all",
            "hits": self.hits,
            "misses": self.misses,
            "stores": self.stores,
            "evictions": dict(self.evictions),
            "not_stored": dict(self.not_stored),
            "write_notices": self.write_notices,
        }


def write_routes(on_write: Callable[[Optional[Sequence[str]]], None]) -> List[NotifyRoute]:
    """:data:`WRITE_ROUTES` as notify routes calling ``on_write(indices)``,
    with None for a write that may touch any index."""
    from .routes import split_indices

    def handler_for(every: bool) -> Callable[[str, str, Dict[str, str], bool], None]:
        def heard(method: str, target: str, params: Dict[str, str], done: bool) -> None:
            on_write(None if every or "index" not in params else split_indices(params["index"]))
        return heard

    return [NotifyRoute(methods, path, handler_for(every), "write")
            for methods, path, every in WRITE_ROUTES]
