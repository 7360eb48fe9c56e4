# The route table: which requests the core claims for a Python handler.

cdef class RouteMatch:
    cdef readonly object route      # the selproxy.handler.Route
    cdef readonly dict params       # captured {name: segment}
    cdef readonly bint notify       # a notify route's: passed through, its handler told


cdef class RouteTable:
    cdef list _entries              # [(methods frozenset, segments tuple, route)]
    cdef list _by_count             # the same by segment count, for counts under 64
    cdef frozenset _methods         # every method any route accepts
    cdef frozenset _lengths         # every segment count any route has
    cdef unsigned long long _length_mask    # the same, as bits (counts under 64)
    cdef readonly tuple routes

    cdef RouteMatch lookup(self, bytes method, bytes target)
    cdef RouteMatch _lookup_in_place(self, bytes method, bytes target, Py_ssize_t n)
    cdef RouteMatch _lookup_split(self, bytes method, bytes target)
