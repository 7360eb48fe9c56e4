"""Scroll and point-in-time contexts without HTTP: keep-alive, expiry, the cap, ids."""
from __future__ import annotations

import pytest

from selproxy.engine.contexts import SearchContexts, Target, parse_time_value
from selproxy.engine.errors import (ElasticsearchParseError, IllegalArgument, SearchContextMissing,
                                    TooManySearchContexts)

TARGETS = [Target("books", 1, 42)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("text, seconds", [("1m", 60.0), ("30s", 30.0), ("500ms", 0.5), ("2h", 7200.0),
                                           ("1d", 86400.0), ("1.5m", 90.0), ("10micros", 1e-5)])
def test_time_values(text: str, seconds: float) -> None:
    assert parse_time_value(text, "scroll") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1", "1x", "", "m", 5, None, "-1m"])
def test_bad_time_values_are_parse_exceptions(text) -> None:
    with pytest.raises(ElasticsearchParseError) as caught:
        parse_time_value(text, "keep_alive")
    assert caught.value.status == 400 and caught.value.es_type == "parse_exception"
    assert caught.value.reason.startswith(f"failed to parse setting [keep_alive] with value [{text}]")


def test_context_lives_for_its_keep_alive_and_each_use_extends_it() -> None:
    clock = Clock()
    contexts = SearchContexts(clock=clock)
    ctx = contexts.open("pit", TARGETS, 60.0)
    assert contexts.get(ctx.id, "pit") is ctx
    clock.now += 59.0
    contexts.extend(ctx, None)          # a search without keep_alive renews the one it has
    clock.now += 59.0
    assert contexts.get(ctx.id, "pit") is ctx
    contexts.extend(ctx, 5.0)           # a search with keep_alive replaces it
    clock.now += 5.0
    with pytest.raises(SearchContextMissing) as caught:
        contexts.get(ctx.id, "pit")
    assert caught.value.status == 404
    assert caught.value.reason == f"No search context found for id [{ctx.number}]"
    assert contexts.count("pit") == 0


def test_missing_context_renders_as_elasticsearch_does() -> None:
    body = SearchContextMissing("7").body()
    cause = {"type": "search_context_missing_exception", "reason": "No search context found for id [7]"}
    assert body == {"error": {"root_cause": [cause], "type": "search_phase_execution_exception",
                              "reason": "all shards failed", "phase": "query", "grouped": True,
                              "failed_shards": [{"shard": -1, "index": None, "reason": cause}]},
                    "status": 404}


def test_ids_are_per_kind_and_malformed_ids_are_400() -> None:
    contexts = SearchContexts(clock=Clock())
    scroll = contexts.open("scroll", TARGETS, 60.0)
    pit = contexts.open("pit", TARGETS, 60.0)
    assert scroll.id != pit.id
    with pytest.raises(IllegalArgument, match="invalid id"):
        contexts.get(scroll.id, "pit")
    with pytest.raises(IllegalArgument, match="Cannot parse scroll id"):
        contexts.get("not-an-id", "scroll")
    # A well-formed id that was never handed out (or closed) is missing, not malformed.
    assert contexts.close(scroll.id, "scroll") == 1
    assert contexts.close(scroll.id, "scroll") == 0
    with pytest.raises(SearchContextMissing):
        contexts.get(scroll.id, "scroll")
    assert contexts.get(pit.id, "pit") is pit


def test_cap_per_kind_counts_only_live_contexts() -> None:
    clock = Clock()
    contexts = SearchContexts(max_open=2, clock=clock)
    first = contexts.open("scroll", TARGETS, 10.0)
    contexts.open("scroll", TARGETS, 60.0)
    with pytest.raises(TooManySearchContexts) as caught:
        contexts.open("scroll", TARGETS, 60.0)
    assert caught.value.status == 429 and caught.value.es_type == "too_many_scroll_contexts_exception"
    assert "Must be less than or equal to: [2]" in caught.value.reason
    contexts.open("pit", TARGETS, 60.0)  # points in time have their own cap
    clock.now += 10.0                    # the first scroll expires, which frees its place
    contexts.open("scroll", TARGETS, 60.0)
    with pytest.raises(SearchContextMissing):
        contexts.get(first.id, "scroll")
    assert contexts.close_all("scroll") == 2
    assert contexts.count("pit") == 1


def test_keep_alive_above_the_maximum_is_refused() -> None:
    contexts = SearchContexts(max_keep_alive=3600.0, clock=Clock())
    contexts.check_keep_alive(3600.0, "1h")
    with pytest.raises(IllegalArgument) as caught:
        contexts.check_keep_alive(3601.0, "3601s")
    assert caught.value.reason.startswith("Keep alive for request (3601s) is too large. It must be less than (1h).")
