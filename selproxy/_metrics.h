/* The core's counters, laid out as one C struct so that it can live in
 * memory shared by every worker of a process group (selproxy/shared_stats.py
 * maps one per worker slot before the workers fork).  Each worker writes only
 * its own struct, with plain stores: counting a passthrough request is an
 * add to memory, no atomic and no Python.  Readers (the status page and the
 * metrics exposition, in any worker) sum the structs of the group; a 64-bit
 * aligned load is atomic on the platforms selproxy runs on, so a reader sees
 * each figure either before or after an add, never torn.
 *
 * The layout is read field by field in _worker.pyx (_cells_dict), never by
 * offset from Python: change it here and there together.
 */
#ifndef SELPROXY_METRICS_H
#define SELPROXY_METRICS_H
#include <stdint.h>

/* Route kinds: what requests and responses are counted by. */
enum {
    SP_ROUTE_PASSTHROUGH = 0,
    SP_ROUTE_SEARCH = 1,
    SP_ROUTE_MSEARCH = 2,
    SP_ROUTE_PARAMS = 3,     /* the Solr-like parameter searches */
    SP_ROUTE_STATUS = 4,     /* status, metrics and the probes */
    SP_ROUTE_OTHER = 5,      /* a handler route the application added */
    SP_ROUTE_KINDS = 6
};

/* Status classes 1xx to 5xx, at index status / 100 - 1. */
#define SP_STATUS_CLASSES 5
/* Error kinds (the names are in _worker.pyx, ERROR_KINDS). */
#define SP_ERROR_KINDS 32

/* OpenTelemetry's advised bucket boundaries for HTTP durations, in seconds
 * (semantic conventions, http.server.request.duration): 14 bounds, and the
 * +Inf bucket last.  Counts are per bucket, not cumulative. */
#define SP_DURATION_BOUNDS 14
#define SP_DURATION_BUCKETS (SP_DURATION_BOUNDS + 1)
static const double sp_duration_bounds[SP_DURATION_BOUNDS] = {
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0};

typedef struct {
    uint64_t counts[SP_DURATION_BUCKETS];
    double sum;
} sp_histogram;

typedef struct {
    uint64_t requests_passed;
    uint64_t requests_claimed;
    uint64_t client_connections_total;
    int64_t client_connections;
    int64_t upstream_connections;
    int64_t upstream_idle;
    uint64_t upstream_connects;
    int64_t upstream_waiters;
    int64_t buffered_bodies;
    uint64_t upstream_waits;                 /* requests that queued for a connection */
    uint64_t client_bytes_in;
    uint64_t client_bytes_out;
    uint64_t requests[SP_ROUTE_KINDS];
    uint64_t responses[SP_ROUTE_KINDS][SP_STATUS_CLASSES];
    uint64_t errors[SP_ERROR_KINDS];
    sp_histogram upstream_duration;          /* request sent .. response complete */
    sp_histogram upstream_queue_duration;    /* queued .. given a connection */
} sp_cells;

static inline void sp_observe(sp_histogram *h, double seconds) {
    int i = 0;
    while (i < SP_DURATION_BOUNDS && seconds > sp_duration_bounds[i])
        i++;
    h->counts[i]++;
    h->sum += seconds;
}

static inline void sp_count_response(sp_cells *c, int kind, int status) {
    int cls = status / 100 - 1;
    if (cls < 0 || cls >= SP_STATUS_CLASSES)
        cls = SP_STATUS_CLASSES - 1;
    c->responses[kind][cls]++;
}

/* The gauges describe a live process: a slot taken over from a dead worker
 * starts them at zero, while its counters go on from where they were. */
static inline void sp_reset_gauges(sp_cells *c) {
    c->client_connections = 0;
    c->upstream_connections = 0;
    c->upstream_idle = 0;
    c->upstream_waiters = 0;
    c->buffered_bodies = 0;
}
#endif
