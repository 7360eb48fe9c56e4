"""``GET /_selproxy/metrics``: the process group's figures as a Prometheus
text exposition, rendered by ``prometheus_client``.

Names follow the Prometheus naming guide: the ``selproxy_`` prefix, base
units (``_seconds``, ``_bytes``), counters ending in ``_total``, and labels
from small fixed sets (a route kind, a status class, an error kind, a rerank
outcome and its reason), never a query, a path or an index name.  Durations
are histograms with OpenTelemetry's advised buckets for HTTP durations
(:data:`DURATION_BOUNDS`).

Every figure is summed over the workers of the group (:mod:`.shared_stats`):
counters over every worker that ever held a slot, so they never go down when
one dies or is replaced; gauges over the workers alive now.
"""
from __future__ import annotations

import bisect
import platform
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from . import _core
from ._version import __version__
from .shared_stats import SERVING, SlotView, merge_counters, merge_histograms

__all__ = ("DURATION_BOUNDS", "DurationHistogram", "METRICS", "CONTENT_TYPE", "render",
           "group_totals", "worker_figures")

#: OpenTelemetry's advised bucket boundaries for HTTP durations, in seconds
#: (semantic conventions, ``http.server.request.duration``); the core
#: compiles the same ones (``_metrics.h``).
DURATION_BOUNDS: Tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
                                      1.0, 2.5, 5.0, 7.5, 10.0)
assert tuple(_core.DURATION_BOUNDS) == DURATION_BOUNDS

#: The classic text format (0.0.4), which every Prometheus reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Every metric: name -> (type, help).  The README's table is this one.
METRICS: Dict[str, Tuple[str, str]] = {
    "selproxy_build_info": ("gauge", "Always 1; the version and Python in labels."),
    "selproxy_workers": ("gauge", "Worker processes serving now."),
    "selproxy_workers_expected": ("gauge", "Worker processes the master runs."),
    "selproxy_ready": ("gauge", "1 when /_selproxy/readyz would answer 200 (upstream not checked)."),
    "selproxy_draining": ("gauge", "1 while a worker of the group is draining."),
    "selproxy_requests_total": ("counter", "Requests received, by route kind."),
    "selproxy_responses_total": ("counter", "Responses sent, by route kind and status class."),
    "selproxy_client_received_bytes_total": ("counter", "Bytes read from clients."),
    "selproxy_client_sent_bytes_total": ("counter", "Bytes written to clients."),
    "selproxy_client_connections_open": ("gauge", "Client connections open now."),
    "selproxy_client_connections_accepted_total": ("counter", "Client connections accepted."),
    "selproxy_upstream_connections_open": ("gauge", "Upstream connections open now (busy and idle)."),
    "selproxy_upstream_connections_idle": ("gauge", "Idle upstream connections kept for reuse."),
    "selproxy_upstream_connections_opened_total": ("counter", "Upstream connections opened."),
    "selproxy_upstream_waiting_requests": ("gauge", "Requests waiting now for a free upstream connection."),
    "selproxy_upstream_waits_total": ("counter", "Requests that had to wait for a free upstream connection."),
    "selproxy_upstream_errors_total": ("counter", "Failures reaching or reading the upstream, by kind."),
    "selproxy_errors_total": ("counter", "Requests the proxy refused or could not serve, by kind."),
    "selproxy_buffered_body_bytes": ("gauge", "Bytes of claimed bodies and handler responses held."),
    "selproxy_upstream_duration_seconds": (
        "histogram", "From sending a request upstream to the end of its response."),
    "selproxy_upstream_queue_duration_seconds": (
        "histogram", "Time a request waited for a free upstream connection."),
    "selproxy_rerank_outcomes_total": (
        "counter", "Searches by rerank outcome (applied, partial, skipped, fallback) and reason."),
    "selproxy_rank_duration_seconds": ("histogram", "Time to rank a search's window, queue included."),
    "selproxy_rank_queue_duration_seconds": (
        "histogram", "Time a search's window waited for the ranker (a worker thread or a batch)."),
    "selproxy_rank_pending": ("gauge", "Rank calls running or waiting now."),
    "selproxy_ranker_info": ("gauge", "Always 1; the ranker's name in a label."),
    "selproxy_model_warm": ("gauge", "1 when the model of every serving worker has warmed up."),
    "selproxy_batcher_batches_total": ("counter", "Model calls the micro-batcher made."),
    "selproxy_batcher_searches_total": ("counter", "Searches the micro-batcher ranked."),
    "selproxy_batcher_pairs_total": ("counter", "(query, document) pairs the micro-batcher ranked."),
    "selproxy_batcher_rejected_total": (
        "counter", "Searches the micro-batcher turned away, by reason (overloaded, deadline)."),
    "selproxy_batcher_queued_pairs": ("gauge", "Pairs waiting in the micro-batcher's queue."),
    "selproxy_batcher_cost_per_pair_seconds": (
        "gauge", "The micro-batcher's estimate of a pair's cost (the highest of the workers)."),
    "selproxy_embedding_cache_hits_total": ("counter", "Embedding lookups found, by cache (memory, query, store)."),
    "selproxy_embedding_cache_misses_total": ("counter", "Embedding lookups not found, by cache."),
    "selproxy_embedding_cache_evictions_total": ("counter", "Embeddings evicted, by cache."),
    "selproxy_embedding_cache_entries": ("gauge", "Embeddings held, by cache."),
    # Relevance operations (issue 13): the window cache, shadow mode,
    # interleaving and capture, from their status sections.
    "selproxy_window_cache_hits_total": ("counter", "Later pages served from a kept window."),
    "selproxy_window_cache_misses_total": ("counter", "Later pages no kept window could serve."),
    "selproxy_window_cache_stores_total": ("counter", "Reranked windows kept."),
    "selproxy_window_cache_evictions_total": (
        "counter", "Kept windows dropped, by reason (entries, bytes, ttl, write)."),
    "selproxy_window_cache_write_notices_total": ("counter", "Writes through the proxy the cache heard of."),
    "selproxy_window_cache_entries": ("gauge", "Windows kept now."),
    "selproxy_window_cache_bytes": ("gauge", "Bytes of the windows kept now."),
    "selproxy_shadow_searches_total": ("counter", "Searches answered in shadow mode."),
    "selproxy_shadow_recorded_total": ("counter", "Shadow reranks recorded."),
    "selproxy_shadow_page_changed_total": (
        "counter", "Shadow reranks whose page would have differed from the engine's."),
    "selproxy_shadow_dropped_total": ("counter", "Shadow reranks dropped (queue full)."),
    "selproxy_shadow_failed_total": ("counter", "Shadow reranks that failed."),
    "selproxy_interleaving_result_sets_total": ("counter", "Interleaved pages served."),
    "selproxy_interleaving_clicks_total": ("counter", "Clicks credited to an interleaved page."),
    "selproxy_interleaving_wins_total": ("counter", "Result sets an arm won on clicks, by arm."),
    "selproxy_interleaving_losses_total": ("counter", "Result sets an arm lost on clicks, by arm."),
    "selproxy_interleaving_ties_total": ("counter", "Result sets with clicks tied between the arms."),
    "selproxy_interleaving_open_result_sets": ("gauge", "Result sets still taking clicks."),
    "selproxy_capture_written_total": ("counter", "Capture lines written."),
    "selproxy_capture_dropped_total": ("counter", "Capture lines dropped (queue full)."),
    "selproxy_capture_errors_total": ("counter", "Capture lines lost to a write error."),
}

#: Gauges combined across workers otherwise than by a sum.
GAUGE_COMBINE: Dict[str, Callable[[Sequence[float]], float]] = {
    "selproxy_batcher_cost_per_pair_seconds": max,
}

#: Cell keys that are gauges of a live process (summed over live workers only).
CELL_GAUGES = frozenset(("client_connections", "upstream_connections", "upstream_idle",
                         "upstream_waiters", "buffered_bodies"))

#: Distinct reasons one rerank outcome keeps before the rest count as "other".
MAX_REASONS = 32


class DurationHistogram:
    """Counts per bucket of :data:`DURATION_BOUNDS` (the last is +Inf), and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BOUNDS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # A value equal to a bound belongs to its bucket (le: less or equal).
        self.counts[bisect.bisect_left(DURATION_BOUNDS, seconds)] += 1
        self.sum += seconds


def outcome_labels(kind: str, reason: str, seen: Dict[str, Set[str]]) -> Tuple[str, str]:
    """(outcome, reason) labels of a rerank outcome: an applied search with
    a partial window is ``partial``; reasons past :data:`MAX_REASONS` per
    outcome are ``other`` (they are tokens from the code, but bounded anyway)."""
    if kind == "applied":
        return ("partial" if "partial=" in reason else "applied"), ""
    known = seen.setdefault(kind, set())
    if reason not in known:
        if len(known) >= MAX_REASONS:
            return kind, "other"
        known.add(reason)
    return kind, reason


# -- a worker's Python figures ------------------------------------------------

def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def worker_figures(service: Any) -> Dict[str, Any]:
    """This worker's Python-side figures, as its slot's doc holds them:
    ``counters`` and ``gauges`` as ``[name, labels, value]`` rows,
    ``histograms`` as ``[name, labels, per-bucket counts, sum]``, and its
    search section for the status page."""
    counters: List[List[Any]] = []
    gauges: List[List[Any]] = []
    histograms: List[List[Any]] = []
    doc: Dict[str, Any] = {"counters": counters, "gauges": gauges, "histograms": histograms}
    if service is None:
        return doc
    stats = service.stats
    for (outcome, reason), count in stats.outcomes.items():
        counters.append(["selproxy_rerank_outcomes_total", {"outcome": outcome, "reason": reason}, count])
    for name, hist in (("selproxy_rank_duration_seconds", stats.rank_duration),
                       ("selproxy_rank_queue_duration_seconds", stats.rank_queue_duration)):
        histograms.append([name, {}, list(hist.counts), hist.sum])
    section = service.status()
    doc["search"] = section
    doc["ranker"] = section.get("ranker")
    gauges.append(["selproxy_rank_pending", {}, section.get("pending_ranks", 0)])
    batching = section.get("batching")
    if isinstance(batching, dict):
        for key in ("batches", "searches", "pairs"):
            if _number(batching.get(key)) is not None:
                counters.append([f"selproxy_batcher_{key}_total", {}, batching[key]])
        for reason in ("overloaded", "deadline"):
            if _number(batching.get(reason)) is not None:
                counters.append(["selproxy_batcher_rejected_total", {"reason": reason}, batching[reason]])
        if _number(batching.get("queued_pairs")) is not None:
            gauges.append(["selproxy_batcher_queued_pairs", {}, batching["queued_pairs"]])
        if _number(batching.get("cost_per_pair_ms")) is not None:
            gauges.append(["selproxy_batcher_cost_per_pair_seconds", {},
                           batching["cost_per_pair_ms"] / 1000.0])
    model = section.get("model")
    if isinstance(model, dict):
        caches = [("memory", {"hits": model.get("cache_hits"), "misses": model.get("cache_misses"),
                              "evictions": model.get("cache_evictions"),
                              "entries": model.get("cache_entries")}),
                  ("query", {"hits": model.get("query_cache_hits")})]
        store = model.get("store")
        if isinstance(store, dict):
            caches.append(("store", store))
        for cache, figures in caches:
            labels = {"cache": cache}
            for key in ("hits", "misses", "evictions"):
                if _number(figures.get(key)) is not None:
                    counters.append([f"selproxy_embedding_cache_{key}_total", labels, figures[key]])
            if _number(figures.get("entries")) is not None:
                gauges.append(["selproxy_embedding_cache_entries", labels, figures["entries"]])
    _relevance_figures(section, counters, gauges)
    return doc


def _relevance_figures(section: Dict[str, Any], counters: List[List[Any]],
                       gauges: List[List[Any]]) -> None:
    """The window cache's, shadow mode's, interleaving's and capture's
    counts from their status sections (each present only when on)."""
    def count(name: str, value: Any, labels: Optional[Dict[str, str]] = None) -> None:
        if _number(value) is not None:
            counters.append([name, labels or {}, value])

    cache = section.get("window_cache")
    if isinstance(cache, dict):
        for key in ("hits", "misses", "stores", "write_notices"):
            count(f"selproxy_window_cache_{key}_total", cache.get(key))
        evictions = cache.get("evictions")
        if isinstance(evictions, dict):
            # Every reason from the start, so a rate() has a series to begin with.
            for reason in ("entries", "bytes", "ttl", "write"):
                count("selproxy_window_cache_evictions_total", evictions.get(reason, 0), {"reason": reason})
        for key in ("entries", "bytes"):
            if _number(cache.get(key)) is not None:
                gauges.append([f"selproxy_window_cache_{key}", {}, cache[key]])
    shadow = section.get("shadow")
    if isinstance(shadow, dict) and shadow.get("enabled"):
        for key in ("searches", "recorded", "page_changed", "dropped", "failed"):
            count(f"selproxy_shadow_{key}_total", shadow.get(key))
    interleaving = section.get("interleaving")
    if isinstance(interleaving, dict):
        count("selproxy_interleaving_result_sets_total", interleaving.get("result_sets"))
        count("selproxy_interleaving_clicks_total", interleaving.get("clicks"))
        arms = interleaving.get("arms")
        if isinstance(arms, dict) and arms:
            for arm in arms.values():
                if isinstance(arm, dict):
                    labels = {"arm": str(arm.get("name"))}   # two arms: bounded
                    count("selproxy_interleaving_wins_total", arm.get("wins"), labels)
                    count("selproxy_interleaving_losses_total", arm.get("losses"), labels)
            first = next(iter(arms.values()))
            if isinstance(first, dict):
                count("selproxy_interleaving_ties_total", first.get("ties"))
        if _number(interleaving.get("open_result_sets")) is not None:
            gauges.append(["selproxy_interleaving_open_result_sets", {}, interleaving["open_result_sets"]])
    capture = section.get("capture")
    if isinstance(capture, dict):
        for key in ("written", "dropped", "errors"):
            count(f"selproxy_capture_{key}_total", capture.get(key))


# -- the group ----------------------------------------------------------------

def _add(total: Any, value: Any) -> Any:
    if isinstance(value, dict):
        total = dict(total) if isinstance(total, dict) else {}
        for key, item in value.items():
            total[key] = _add(total.get(key), item)
        return total
    if isinstance(value, list):
        if isinstance(total, list) and len(total) == len(value):
            return [_add(a, b) for a, b in zip(total, value)]
        return list(value)
    if _number(value) is not None:
        return (total or 0) + value
    return value if total is None else total


def group_totals(views: Iterable[SlotView]) -> Dict[str, Any]:
    """The core's counters summed over the group (gauges over live workers)."""
    total: Dict[str, Any] = {}
    for view in views:
        cells = view.cells if view.alive else {k: v for k, v in view.cells.items()
                                               if k not in CELL_GAUGES}
        total = _add(total, cells)
    for key in CELL_GAUGES:
        total.setdefault(key, 0)
    return total


class _GroupCollector(Collector):
    def __init__(self, views: List[SlotView], expected: int, ready: bool) -> None:
        self.views = views
        self.expected = expected
        self.ready = ready

    def collect(self) -> Iterator[Any]:
        views, live = self.views, [v for v in self.views if v.alive]
        cells = group_totals(views)

        def family(name: str, labels: Sequence[str] = ()) -> Any:
            kind, text = METRICS[name]
            cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                   "histogram": HistogramMetricFamily}[kind]
            # CounterMetricFamily adds the _total suffix itself.
            return cls(name[:-len("_total")] if kind == "counter" else name, text, labels=list(labels))

        info = family("selproxy_build_info", ("version", "python"))
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        for name, value in (("selproxy_workers", sum(v.state == SERVING for v in live)),
                            ("selproxy_workers_expected", self.expected),
                            ("selproxy_ready", int(self.ready)),
                            ("selproxy_draining", int(any(v.draining for v in live)))):
            gauge = family(name)
            gauge.add_metric([], value)
            yield gauge

        requests = family("selproxy_requests_total", ("route",))
        for route, value in cells["requests"].items():
            requests.add_metric([route], value)
        yield requests
        responses = family("selproxy_responses_total", ("route", "code"))
        for route, classes in cells["responses"].items():
            for code, value in classes.items():
                responses.add_metric([route, code], value)
        yield responses
        for name, key in (("selproxy_client_received_bytes_total", "client_bytes_in"),
                          ("selproxy_client_sent_bytes_total", "client_bytes_out"),
                          ("selproxy_client_connections_open", "client_connections"),
                          ("selproxy_client_connections_accepted_total", "client_connections_total"),
                          ("selproxy_upstream_connections_open", "upstream_connections"),
                          ("selproxy_upstream_connections_idle", "upstream_idle"),
                          ("selproxy_upstream_connections_opened_total", "upstream_connects"),
                          ("selproxy_upstream_waiting_requests", "upstream_waiters"),
                          ("selproxy_upstream_waits_total", "upstream_waits"),
                          ("selproxy_buffered_body_bytes", "buffered_bodies")):
            metric = family(name)
            metric.add_metric([], cells[key])
            yield metric
        upstream_errors = family("selproxy_upstream_errors_total", ("kind",))
        errors = family("selproxy_errors_total", ("kind",))
        for kind in _core.ERROR_KINDS:
            target = upstream_errors if kind.lower().startswith("upstream") else errors
            target.add_metric([kind], cells["errors"].get(kind, 0))
        yield upstream_errors
        yield errors
        for name, key in (("selproxy_upstream_duration_seconds", "upstream_duration"),
                          ("selproxy_upstream_queue_duration_seconds", "upstream_queue_duration")):
            yield _histogram(family(name), [], cells[key]["counts"], cells[key]["sum"])

        yield from self._python_side(views, live, family)

    def _python_side(self, views: List[SlotView], live: List[SlotView],
                     family: Callable[..., Any]) -> Iterator[Any]:
        counters = merge_counters(*(v.doc.get("counters", []) for v in views))
        histograms = merge_histograms(*(v.doc.get("histograms", []) for v in views))
        families: Dict[str, Any] = {}

        def labelled(name: str, labels: Dict[str, str]) -> Any:
            if name not in families:
                families[name] = family(name, sorted(labels))
            return families[name]

        # Families always present, so a scrape before the first search has them.
        for name in ("selproxy_rerank_outcomes_total",):
            labelled(name, {"outcome": "", "reason": ""})
        for name, labels, value in counters:
            if name in METRICS:
                labelled(name, labels).add_metric([labels[k] for k in sorted(labels)], value)
        for name in ("selproxy_rank_duration_seconds", "selproxy_rank_queue_duration_seconds"):
            labelled(name, {})
        for name, labels, counts, total in histograms:
            if name in METRICS:
                _histogram(labelled(name, labels), [labels[k] for k in sorted(labels)], counts, total)
        gauge_values: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], List[float]] = {}
        for view in live:
            for name, labels, value in view.doc.get("gauges", []):
                gauge_values.setdefault((name, tuple(sorted(labels.items()))), []).append(value)
        # Warm-up is read from the slots' flags, as readiness reads it, not
        # from the figures a worker last published.
        serving = [v for v in live if v.state == SERVING]
        gauge_values[("selproxy_model_warm", ())] = [int(bool(serving) and all(v.warm for v in serving))]
        for (name, pairs), values in gauge_values.items():
            if name in METRICS:
                combine = GAUGE_COMBINE.get(name, sum)
                labelled(name, dict(pairs)).add_metric([v for _, v in pairs], combine(values))
        rankers = sorted({v.doc["ranker"] for v in live if isinstance(v.doc.get("ranker"), str)})
        if rankers:
            info = labelled("selproxy_ranker_info", {"ranker": ""})
            for ranker in rankers:
                info.add_metric([ranker], 1)
        yield from families.values()


def _histogram(metric: Any, labels: List[str], counts: Sequence[int], total: float) -> Any:
    cumulative, buckets = 0, []
    for bound, count in zip(list(DURATION_BOUNDS) + [float("inf")], counts):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    metric.add_metric(labels, buckets, total)
    return metric


def render(views: List[SlotView], expected: int, ready: bool) -> bytes:
    """The exposition of the group's figures (text format 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GroupCollector(views, expected, ready))
    return generate_latest(registry)
