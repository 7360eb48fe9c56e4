"""The metrics without sockets: names by the Prometheus naming guide, the
OpenTelemetry buckets, the exposition of a group, and the shared block's
slots (a worker's counts outlive it)."""
import os
import platform

import pytest
from prometheus_client.parser import text_string_to_metric_families

from selproxy import __version__, _core, _worker
from selproxy.metrics import (DURATION_BOUNDS, METRICS, DurationHistogram, group_totals,
                              outcome_labels, render)
from selproxy.shared_stats import SERVING, STARTING, STOPPED, SharedStats, SlotView

#: OpenTelemetry semantic conventions, http.server.request.duration:
#: "ExplicitBucketBoundaries of [ 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
#: 0.5, 0.75, 1, 2.5, 5, 7.5, 10 ]".
OTEL_HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


def test_buckets_are_opentelemetrys_in_python_and_in_the_core():
    assert DURATION_BOUNDS == OTEL_HTTP_DURATION_BUCKETS
    assert _core.DURATION_BOUNDS == OTEL_HTTP_DURATION_BUCKETS


@pytest.mark.parametrize("name", sorted(METRICS))
def test_names_follow_the_prometheus_naming_guide(name):
    kind, text = METRICS[name]
    assert name.startswith("selproxy_") and name == name.lower()
    assert text and text.endswith(".")
    if kind == "counter":
        assert name.endswith("_total")
    else:
        assert not name.endswith("_total")
    if kind == "histogram":
        assert name.endswith("_seconds")
    # Base units only.
    for unit in ("_ms", "_milliseconds", "_kb", "_mb", "_minutes"):
        assert unit not in name
    if "bytes" in name:
        assert name.endswith(("_bytes", "_bytes_total"))


def test_a_duration_equal_to_a_bound_is_in_that_bucket_and_a_long_one_in_inf():
    hist = DurationHistogram()
    for seconds in (0.0, 0.005, 0.0051, 10.0, 10.5):
        hist.observe(seconds)
    assert hist.counts[0] == 2          # le 0.005
    assert hist.counts[1] == 1          # le 0.01
    assert hist.counts[13] == 1         # le 10
    assert hist.counts[14] == 1         # +Inf
    assert hist.sum == pytest.approx(20.5101)


def test_outcome_labels_map_partial_and_bound_the_reasons():
    seen = {}
    assert outcome_labels("applied", "", seen) == ("applied", "")
    assert outcome_labels("applied", "partial=4/50", seen) == ("partial", "")
    assert outcome_labels("skipped", "no_hits", seen) == ("skipped", "no_hits")
    for n in range(40):
        outcome_labels("fallback", f"reason{n}", seen)
    assert outcome_labels("fallback", "reason0", seen) == ("fallback", "reason0")
    assert outcome_labels("fallback", "reason39", seen) == ("fallback", "other")


def _view(index, alive, cells, doc=None, warm=True):
    return SlotView(index, 1000 + index, SERVING if alive else STOPPED, warm, False, 0.0, alive,
                    cells, doc or {})


def _cells(**changes):
    counters = _worker.Counters()
    cells = counters.snapshot()
    cells.update(changes)
    return cells


def test_the_exposition_sums_counters_over_all_workers_and_gauges_over_live_ones():
    hist = _cells()["upstream_duration"]
    hist["counts"][0], hist["counts"][14], hist["sum"] = 3, 1, 12.0
    live = _cells(requests_passed=5, client_connections=2, upstream_duration=hist,
                  requests=dict(_cells()["requests"], passthrough=5))
    dead = _cells(requests_passed=7, client_connections=9,
                  requests=dict(_cells()["requests"], passthrough=7))
    doc = {"counters": [["selproxy_rerank_outcomes_total", {"outcome": "applied", "reason": ""}, 4]],
           "gauges": [["selproxy_batcher_queued_pairs", {}, 3]],
           "histograms": [["selproxy_rank_duration_seconds", {}, [1] + [0] * 14, 0.001]],
           "ranker": "minilm"}
    dead_doc = {"counters": [["selproxy_rerank_outcomes_total", {"outcome": "applied", "reason": ""}, 6]],
                "gauges": [["selproxy_batcher_queued_pairs", {}, 50]]}
    views = [_view(0, True, live, doc), _view(1, False, dead, dead_doc)]
    totals = group_totals(views)
    assert totals["requests_passed"] == 12 and totals["client_connections"] == 2

    text = render(views, expected=2, ready=False).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("selproxy_requests_total", (("route", "passthrough"),))] == 12
    assert samples[("selproxy_client_connections_open", ())] == 2
    assert samples[("selproxy_rerank_outcomes_total", (("outcome", "applied"), ("reason", "")))] == 10
    assert samples[("selproxy_batcher_queued_pairs", ())] == 3
    assert samples[("selproxy_workers", ())] == 1
    assert samples[("selproxy_workers_expected", ())] == 2
    assert samples[("selproxy_ready", ())] == 0
    assert samples[("selproxy_ranker_info", (("ranker", "minilm"),))] == 1
    assert samples[("selproxy_model_warm", ())] == 1       # the live worker's flag
    build = (("python", platform.python_version()), ("version", __version__))
    assert samples[("selproxy_build_info", build)] == 1
    # Cumulative buckets at OpenTelemetry's bounds, then +Inf; count and sum.
    buckets = [(dict(labels)["le"], v) for (name, labels), v in samples.items()
               if name == "selproxy_upstream_duration_seconds_bucket"]
    assert [float(le) for le, _ in buckets] == list(OTEL_HTTP_DURATION_BUCKETS) + [float("inf")]
    assert [v for _, v in buckets] == [3] * 14 + [4]
    assert samples[("selproxy_upstream_duration_seconds_count", ())] == 4
    assert samples[("selproxy_upstream_duration_seconds_sum", ())] == 12.0
    assert samples[("selproxy_rank_duration_seconds_count", ())] == 1
    for family in families.values():
        name = family.name if family.name in METRICS else family.name + "_total"
        assert METRICS[name][0] == family.type


def test_a_slot_taken_over_keeps_its_counts_and_starts_its_gauges_at_zero():
    block = SharedStats.create(4, expected_workers=2)
    slot = block.slot(1)
    slot.take(os.getpid())
    first = _worker.Counters()
    first.attach(slot.cells)
    # What the core does per request and connection, seen through its figures.
    assert first.requests_passed == 0
    block.memory[slot.offset + 4096:slot.offset + 4104] = (41).to_bytes(8, "little")  # requests_passed
    block.memory[slot.offset + 4096 + 24:slot.offset + 4096 + 32] = (3).to_bytes(8, "little")  # open conns
    assert (first.requests_passed, first.client_connections) == (41, 3)
    slot.publish({"counters": [["selproxy_rerank_outcomes_total", {"outcome": "applied", "reason": ""}, 5]],
                  "histograms": [["selproxy_rank_duration_seconds", {}, [2] + [0] * 14, 0.002]]})
    slot.set_state(STOPPED)

    # A respawned worker takes the same index.
    again = block.slot(1)
    again.take(os.getpid())
    second = _worker.Counters()
    second.attach(again.cells)
    assert (second.requests_passed, second.client_connections) == (41, 0)
    again.publish({"counters": [["selproxy_rerank_outcomes_total", {"outcome": "applied", "reason": ""}, 1]],
                   "histograms": [["selproxy_rank_duration_seconds", {}, [1] + [0] * 14, 0.001]]})
    view = again.read()
    assert view.doc["counters"] == [["selproxy_rerank_outcomes_total",
                                     {"outcome": "applied", "reason": ""}, 6]]
    assert view.doc["histograms"][0][2][0] == 3
    assert view.alive and view.state == STARTING     # until it serves
    assert [v.index for v in block.read()] == [1]


def test_a_worker_index_outside_the_block_is_refused():
    block = SharedStats.create(2, expected_workers=2)
    with pytest.raises(ValueError, match="outside"):
        block.slot(2)
    assert block.expected_workers == 2
    block.expected_workers = 3
    assert block.expected_workers == 3


class _CachedModel:
    """Stands in for the minilm ranker: batch_rank, and stats() of its shape."""
    name = "minilm"

    def rank(self, query, docs):
        return [float(len(d)) for d in docs]

    def batch_rank(self, queries, docs_lists):
        return [[float(len(d)) for d in docs] for docs in docs_lists]

    def stats(self):
        return {"model": self.name, "cache_entries": 120, "cache_hits": 30, "cache_misses": 120,
                "cache_evictions": 4, "query_cache_hits": 7, "encoded_foreground": 120,
                "store": {"backend": "sqlite", "entries": 500, "hits": 90, "misses": 30,
                          "writes": 30, "evictions": 0}}


def test_the_batcher_and_the_embedding_caches_become_metrics_named_after_the_model():
    from selproxy.metrics import worker_figures
    from selproxy.rankers.batching import MicroBatcher
    from selproxy.search import SearchService

    service = SearchService(MicroBatcher(_CachedModel()))
    service.stats.record(("applied", ""))
    service.stats.record(("applied", "partial=3/50"))
    service.stats.record(("fallback", "deadline"))
    figures = worker_figures(service)
    counters = {(n, tuple(sorted(l.items()))): v for n, l, v in figures["counters"]}
    gauges = {(n, tuple(sorted(l.items()))): v for n, l, v in figures["gauges"]}
    assert figures["ranker"] == "minilm" and figures["search"]["ranker"] == "minilm"
    assert counters[("selproxy_rerank_outcomes_total", (("outcome", "applied"), ("reason", "")))] == 1
    assert counters[("selproxy_rerank_outcomes_total", (("outcome", "partial"), ("reason", "")))] == 1
    assert counters[("selproxy_rerank_outcomes_total", (("outcome", "fallback"), ("reason", "deadline")))] == 1
    assert counters[("selproxy_batcher_batches_total", ())] == 0
    assert counters[("selproxy_batcher_rejected_total", (("reason", "overloaded"),))] == 0
    assert counters[("selproxy_embedding_cache_hits_total", (("cache", "memory"),))] == 30
    assert counters[("selproxy_embedding_cache_misses_total", (("cache", "memory"),))] == 120
    assert counters[("selproxy_embedding_cache_evictions_total", (("cache", "memory"),))] == 4
    assert counters[("selproxy_embedding_cache_hits_total", (("cache", "query"),))] == 7
    assert counters[("selproxy_embedding_cache_hits_total", (("cache", "store"),))] == 90
    assert gauges[("selproxy_embedding_cache_entries", (("cache", "memory"),))] == 120
    assert gauges[("selproxy_embedding_cache_entries", (("cache", "store"),))] == 500
    assert gauges[("selproxy_batcher_queued_pairs", ())] == 0
    assert gauges[("selproxy_batcher_cost_per_pair_seconds", ())] == 0.0
    assert {n for n, _ in counters} | {n for n, _ in gauges} <= set(METRICS)


def test_the_relevance_operations_become_metrics(tmp_path):
    from selproxy.metrics import worker_figures
    from selproxy.rankers.identity import IdentityRanker
    from selproxy.search import SearchConfig, SearchService
    from selproxy.search.capture import CaptureConfig
    from selproxy.search.interleave import InterleaveConfig

    config = SearchConfig(shadow=True, interleave=InterleaveConfig(arms=("ranker", "engine"), primary=None),
                          capture=CaptureConfig(path=str(tmp_path / "capture.jsonl"), rate=1.0))
    service = SearchService(IdentityRanker(), config)
    try:
        service.window_cache.hits, service.window_cache.misses = 5, 2
        service.shadow.searches, service.shadow.dropped = 9, 1
        book = service.relevance.book
        book.outcomes = [3, 1, 2]          # A won 3, B won 1, 2 ties
        figures = worker_figures(service)
    finally:
        service.close()
    counters = {(n, tuple(sorted(l.items()))): v for n, l, v in figures["counters"]}
    gauges = {(n, tuple(sorted(l.items()))): v for n, l, v in figures["gauges"]}
    assert counters[("selproxy_window_cache_hits_total", ())] == 5
    assert counters[("selproxy_window_cache_misses_total", ())] == 2
    assert counters[("selproxy_window_cache_evictions_total", (("reason", "ttl"),))] == 0
    assert gauges[("selproxy_window_cache_entries", ())] == 0
    assert counters[("selproxy_shadow_searches_total", ())] == 9
    assert counters[("selproxy_shadow_dropped_total", ())] == 1
    arms = figures["search"]["interleaving"]["arms"]
    a, b = arms["A"]["name"], arms["B"]["name"]
    assert counters[("selproxy_interleaving_wins_total", (("arm", a),))] == 3
    assert counters[("selproxy_interleaving_wins_total", (("arm", b),))] == 1
    assert counters[("selproxy_interleaving_losses_total", (("arm", a),))] == 1
    assert counters[("selproxy_interleaving_ties_total", ())] == 2
    assert gauges[("selproxy_interleaving_open_result_sets", ())] == 0
    assert counters[("selproxy_capture_written_total", ())] == 0
    assert {n for n, _ in counters} | {n for n, _ in gauges} <= set(METRICS)
