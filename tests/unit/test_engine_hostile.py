"""The embedded engine under hostile input: Elasticsearch's _source pattern
semantics in linear time and bounded in number, and nothing from a request
echoed into a response head."""
from __future__ import annotations

import time

import pytest

from selproxy.engine.errors import IllegalArgument
from selproxy.engine.search import MAX_SOURCE_PATTERNS, filter_source


def test_source_patterns_have_elasticsearch_semantics():
    source = {"a?c": 1, "abc": 2, "[x]": 3, "x": 4, "meta": {"title": "t", "body": "b"}}
    assert filter_source(source, ["a?c"], []) == {"a?c": 1}
    assert filter_source(source, ["[x]"], []) == {"[x]": 3}
    assert filter_source(source, ["a*"], []) == {"a?c": 1, "abc": 2}
    assert filter_source(source, ["meta.t*"], []) == {"meta": {"title": "t"}}
    assert filter_source(source, [], ["meta*", "a*"]) == {"[x]": 3, "x": 4}


def test_many_patterns_are_refused_and_hostile_ones_cost_linear_time():
    with pytest.raises(IllegalArgument):
        filter_source({"a": 1}, [f"p{n}" for n in range(MAX_SOURCE_PATTERNS + 1)], [])
    source = {"a" * 5000 + str(n): n for n in range(50)}
    patterns = ["*a" * 100 + "*b"] * (MAX_SOURCE_PATTERNS // 2)
    started = time.perf_counter()
    assert filter_source(source, patterns, patterns) == {}
    assert time.perf_counter() - started < 2.0
