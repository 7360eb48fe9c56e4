# The worker's proxy: builds the worker state, the upstream pool and the
# route table, and runs the one deadline sweep.
from selproxy._worker cimport Worker, Counters
from selproxy._upstream cimport UpstreamPool


cdef class ProxyCore:
    cdef readonly object loop
    cdef readonly Counters counters
    cdef readonly object config
    cdef readonly UpstreamPool pool
    cdef Worker worker
    cdef object sweeper

    cdef void _sweep(self)
