# cython: language_level=3
"""Route matching for claimed requests.

A route's path pattern is compiled once into a tuple of segments: a ``bytes``
literal, or a ``str`` capture name for ``{name}``.  Matching splits the request
path on ``/`` and compares segment by segment; there is no regex on the hot
path, and most passthrough requests are rejected by the method or the segment
count before any comparison.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp

from urllib.parse import unquote_to_bytes

__all__ = ("RouteTable", "RouteMatch")


cdef class RouteMatch:
    def __cinit__(self, route, dict params):
        self.route = route
        self.params = params
        # A notify route (selproxy.handler.NotifyRoute) is not claimed: the
        # core tells its handler and passes the request through.  Read once
        # per match, never for a request no route matches.
        self.notify = getattr(route, "notify", False) is True

    def __repr__(self):
        return f"RouteMatch({self.route!r}, {self.params!r})"


cdef tuple _compile_pattern(str pattern):
    if not pattern.startswith("/"):
        raise ValueError(f"route path must start with '/': {pattern!r}")
    cdef list segments = []
    for part in pattern.strip("/").split("/"):
        if not part:
            if pattern.strip("/"):
                raise ValueError(f"empty segment in route path {pattern!r}")
            continue
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if not name.isidentifier():
                raise ValueError(f"bad capture {part!r} in route path {pattern!r}")
            segments.append(name)
        else:
            segments.append(part.encode("latin-1"))
    return tuple(segments)


cdef inline list _split_path(bytes target):
    """The path's segments, or None if one is empty (``//x``): such a path
    is not a route's, and is passed to the engine as it is."""
    cdef Py_ssize_t end = target.find(b"?")
    cdef bytes path = target if end < 0 else target[:end]
    cdef list parts
    # The leading slash and one trailing slash carry no segment.
    path = path[1:]
    if path.endswith(b"/"):
        path = path[:-1]
    if not path:
        return []
    parts = path.split(b"/")
    if b"" in parts:
        return None
    return parts


cdef Py_ssize_t _segment_count(bytes target) noexcept:
    """How many segments ``_split_path`` would find, counted without
    allocating.  PERF: most passthrough paths stop here (measured only with
    the allocation changes of RESULTS.md's 2026-11-28 13:05 entry).  An empty
    segment inside counts as one: the split then rejects such a path."""
    cdef const char* p = PyBytes_AS_STRING(target)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(target)
    cdef Py_ssize_t i, end = size, count = 0
    cdef char* query = <char*>memchr(p, 63, size)   # '?'
    if query != NULL:
        end = query - p
    # The leading slash and one trailing slash carry no segment.
    if end > 1 and p[end - 1] == 47:   # '/'
        end -= 1
    if end <= 1:
        return 0
    count = 1
    for i in range(1, end):
        if p[i] == 47:
            count += 1
    return count


cdef class RouteTable:
    """Routes compiled once; ``lookup`` runs per request head."""

    def __init__(self, routes=()):
        self.routes = tuple(routes)
        self._entries = []
        methods = set()
        lengths = set()
        for route in self.routes:
            route_methods = frozenset(m.upper().encode("ascii") for m in route.methods)
            segments = _compile_pattern(route.path)
            self._entries.append((route_methods, segments, route))
            methods |= route_methods
            lengths.add(len(segments))
        self._methods = frozenset(methods)
        self._lengths = frozenset(lengths)
        self._length_mask = 0
        for n in lengths:
            if n < 64:
                self._length_mask |= 1ULL << n
        self._by_count = [[] for _ in range(64)]
        for entry in self._entries:
            if len(entry[1]) < 64:
                self._by_count[len(entry[1])].append(entry)

    def __len__(self):
        return len(self.routes)

    cdef RouteMatch lookup(self, bytes method, bytes target):
        cdef Py_ssize_t n
        if method not in self._methods:
            return None
        n = _segment_count(target)
        if n >= 64:
            return self._lookup_split(method, target) if n in self._lengths else None
        if not (self._length_mask >> n) & 1:
            return None
        return self._lookup_in_place(method, target, n)

    cdef RouteMatch _lookup_in_place(self, bytes method, bytes target, Py_ssize_t n):
        """``lookup`` for a path of ``n`` < 64 segments, compared where they
        lie in ``target``.  PERF: splitting allocated a list and a bytes per
        segment for every request with a route's segment count (not
        measured on its own; part of RESULTS.md's 2026-11-28 16:30 entry)."""
        cdef const char* p = PyBytes_AS_STRING(target)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(target)
        cdef Py_ssize_t starts[64]
        cdef Py_ssize_t ends[64]
        cdef Py_ssize_t i, end = size, pos, count = 0
        cdef const char* query = <const char*>memchr(p, 63, size)   # '?'
        cdef tuple segments
        cdef bytes literal
        cdef dict params
        if query != NULL:
            end = query - p
        if end > 1 and p[end - 1] == 47:   # '/'
            end -= 1
        if end > 1:
            pos = 1
            for i in range(1, end + 1):
                if i == end or p[i] == 47:
                    if i == pos:
                        return None   # an empty segment: no route's path
                    starts[count] = pos
                    ends[count] = i
                    count += 1
                    pos = i + 1
        for route_methods, segments, route in <list>self._by_count[count]:
            if method not in route_methods:
                continue
            for i in range(count):
                seg = segments[i]
                if type(seg) is bytes:
                    literal = <bytes>seg
                    if (PyBytes_GET_SIZE(literal) != ends[i] - starts[i]
                            or memcmp(PyBytes_AS_STRING(literal), p + starts[i], ends[i] - starts[i])):
                        break
            else:
                params = {}
                for i in range(count):
                    seg = segments[i]
                    if type(seg) is not bytes:
                        params[seg] = unquote_to_bytes(target[starts[i]:ends[i]]).decode("utf-8", "replace")
                return RouteMatch(route, params)
        return None

    cdef RouteMatch _lookup_split(self, bytes method, bytes target):
        cdef list parts
        cdef tuple segments
        cdef Py_ssize_t i, n
        cdef dict params
        parts = _split_path(target)
        if parts is None:
            return None
        n = len(parts)
        for route_methods, segments, route in self._entries:
            if len(segments) != n or method not in route_methods:
                continue
            params = None
            for i in range(n):
                seg = segments[i]
                part = parts[i]
                if type(seg) is bytes:
                    if seg != part:
                        break
                else:
                    if params is None:
                        params = {}
                    params[seg] = unquote_to_bytes(part).decode("utf-8", "replace")
            else:
                return RouteMatch(route, params if params is not None else {})
        return None

    def match(self, method, target):
        """Python entry point for tests: the :class:`RouteMatch` or None."""
        if isinstance(method, str):
            method = method.encode("ascii")
        if isinstance(target, str):
            target = target.encode("latin-1")
        return self.lookup(method, target)
