"""Tokenising, dates, BM25 idf and mappings: the engine's pure functions."""
from __future__ import annotations

import math

import pytest

from selproxy.engine.analysis import fts5_idf, fts_phrase, fts_prefix, lucene_idf, parse_date, tokens
from selproxy.engine.errors import DocumentParsingError, IllegalArgument, MapperParsingError
from selproxy.engine.mapping import analyse_document, flatten, merge_properties, validate_properties
from selproxy.engine.query import minimum_should_match


def test_tokens_lowercase_and_split_like_unicode61() -> None:
    assert tokens("The Quick-Brown fox's_tail, 2024!") == ["the", "quick", "brown", "fox", "s", "tail", "2024"]
    assert tokens("Élan Vital") == ["élan", "vital"]
    assert tokens("!!!") == []


def test_fts_literals_quote() -> None:
    assert fts_phrase(["a", "b"]) == '"a b"'
    assert fts_phrase(['x"y']) == '"x""y"'
    assert fts_prefix("sea") == '"sea" *'


def test_idf() -> None:
    assert lucene_idf(10, 1) == pytest.approx(math.log(1 + 9.5 / 1.5))
    # A term in every document still counts a little (Lucene's 1 + ... inside the log).
    assert lucene_idf(10, 10) == pytest.approx(math.log(1 + 0.5 / 10.5))
    assert fts5_idf(10, 1) == pytest.approx(math.log(9.5 / 1.5))
    assert fts5_idf(10, 8) == 1e-6


@pytest.mark.parametrize("value,expected", [
    ("2020-01-01", 1577836800000),
    ("2020-01-01T00:00:01Z", 1577836801000),
    ("2020-01-01T01:00:00+01:00", 1577836800000),
    ("2020-01-01 00:00:00.5", 1577836800500),
    ("2020", 1577836800000),
    (1577836800000, 1577836800000),
    ("1577836800000", 1577836800000),
    ("2020-01-15||/M", 1577836800000),
    ("2020-01-01||+1d", 1577923200000),
])
def test_parse_date(value, expected) -> None:
    assert parse_date(value) == expected


def test_parse_date_now_and_errors() -> None:
    assert abs(parse_date("now") - parse_date("now-1d") - 86400000) < 5000
    assert parse_date("now/d") % 86400000 == 0
    with pytest.raises(ValueError):
        parse_date("yesterday")


def test_minimum_should_match() -> None:
    assert minimum_should_match(2, 3) == 2
    assert minimum_should_match("75%", 4) == 3
    assert minimum_should_match("-1", 4) == 3
    assert minimum_should_match("-25%", 4) == 4 - 1 or minimum_should_match("-25%", 4) == 3
    assert minimum_should_match(9, 3) == 3


def test_mapping_validation_and_merge() -> None:
    validate_properties({"a": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
                         "o": {"properties": {"n": {"type": "long"}}}})
    with pytest.raises(MapperParsingError):
        validate_properties({"a": {"type": "txet"}})
    merged = merge_properties({"a": {"type": "text"}}, {"b": {"type": "long"}})
    assert merged == {"a": {"type": "text"}, "b": {"type": "long"}}
    with pytest.raises(IllegalArgument):
        merge_properties({"a": {"type": "text"}}, {"a": {"type": "long"}})
    fields, _ = flatten({"a": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
                         "o": {"properties": {"n": {"type": "long"}}}})
    assert {name: f.kind for name, f in fields.items()} == {"a": "text", "a.raw": "keyword", "o.n": "number"}
    assert fields["a.raw"].source == "a"


def test_analyse_document_rows_and_dynamic_fields() -> None:
    props = {"t": {"type": "text", "fields": {"raw": {"type": "keyword"}}}, "n": {"type": "integer"},
             "b": {"type": "boolean"}}
    fields, specs = flatten(props)
    rows, new_props = analyse_document({"t": ["Hello", "World"], "n": "7", "b": "true", "new": 1.5,
                                        "obj": {"k": "v"}}, props, fields, specs, "1")
    assert rows.texts == {"t": "Hello\nWorld", "obj.k": "v"}
    assert ("t.raw", "Hello") in rows.keywords and ("b", "true") in rows.keywords
    assert ("n", 7) in rows.numbers and ("new", 1.5) in rows.numbers
    assert new_props is not None and new_props["new"] == {"type": "float"}
    assert new_props["obj"]["properties"]["k"]["type"] == "text"
    with pytest.raises(DocumentParsingError):
        analyse_document({"n": "seven"}, props, fields, specs, "1")
    with pytest.raises(DocumentParsingError):
        analyse_document({"t": {"nested": "object"}}, props, fields, specs, "1")
