# The core's counters as one C struct (see _metrics.h for why and how).
from libc.stdint cimport uint64_t, int64_t

cdef extern from "_metrics.h" nogil:
    enum:
        SP_ROUTE_PASSTHROUGH
        SP_ROUTE_SEARCH
        SP_ROUTE_MSEARCH
        SP_ROUTE_PARAMS
        SP_ROUTE_STATUS
        SP_ROUTE_OTHER
        SP_ROUTE_KINDS
        SP_STATUS_CLASSES
        SP_ERROR_KINDS
        SP_DURATION_BOUNDS
        SP_DURATION_BUCKETS
    const double* sp_duration_bounds

    ctypedef struct sp_histogram:
        uint64_t counts[SP_DURATION_BUCKETS]
        double sum

    ctypedef struct sp_cells:
        uint64_t requests_passed
        uint64_t requests_claimed
        uint64_t client_connections_total
        int64_t client_connections
        int64_t upstream_connections
        int64_t upstream_idle
        uint64_t upstream_connects
        int64_t upstream_waiters
        int64_t buffered_bodies
        uint64_t upstream_waits
        uint64_t client_bytes_in
        uint64_t client_bytes_out
        uint64_t requests[SP_ROUTE_KINDS]
        uint64_t responses[SP_ROUTE_KINDS][SP_STATUS_CLASSES]
        uint64_t errors[SP_ERROR_KINDS]
        sp_histogram upstream_duration
        sp_histogram upstream_queue_duration

    void sp_observe(sp_histogram* h, double seconds)
    void sp_count_response(sp_cells* c, int kind, int status)
    void sp_reset_gauges(sp_cells* c)
