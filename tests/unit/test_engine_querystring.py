"""The query_string / simple_query_string subset parses to the query DSL as documented."""
from __future__ import annotations

import pytest

from selproxy.engine.errors import QueryShardError, UnsupportedFeature
from selproxy.engine.querystring import FieldsTerm, parse_query_string

F = ["title", "body"]


def qs(text: str, operator: str = "or"):
    return parse_query_string(text, F, operator, simple=False)


def sqs(text: str, operator: str = "or"):
    return parse_query_string(text, F, operator, simple=True)


def term(text: str, fields=F, **kw) -> FieldsTerm:
    return FieldsTerm(list(fields), text, kw.pop("operator", "or"), **kw)


def test_single_term_and_phrase() -> None:
    assert qs("fox") == term("fox")
    assert qs('"quick fox"') == term("quick fox", phrase=True)
    assert qs("title:fox") == term("fox", ["title"])
    assert qs('title:"quick fox"') == term("quick fox", ["title"], phrase=True)


def test_default_operator() -> None:
    assert qs("a b") == {"bool": {"should": [term("a"), term("b")]}}
    assert qs("a b", "and") == {"bool": {"must": [term("a", operator="and"), term("b", operator="and")]}}


def test_lucene_classic_operator_semantics() -> None:
    # As in Lucene's classic parser: with default OR, a AND b OR c is +a +b c;
    # with default AND, the OR turns b back into an optional clause: +a b c.
    assert qs("a AND b OR c") == {"bool": {"must": [term("a"), term("b")], "should": [term("c")]}}
    b_or_c = [term("b", operator="and"), term("c", operator="and")]
    assert qs("a AND b OR c", "and") == {"bool": {"must": [term("a", operator="and")], "should": b_or_c}}
    assert qs("a && b") == {"bool": {"must": [term("a"), term("b")]}}
    assert qs("a || b") == {"bool": {"should": [term("a"), term("b")]}}
    assert qs("+a -b c") == {"bool": {"must": [term("a")], "must_not": [term("b")], "should": [term("c")]}}
    assert qs("NOT a") == {"bool": {"must_not": [term("a")]}}
    assert qs("!a") == {"bool": {"must_not": [term("a")]}}


def test_groups_fields_and_boosts() -> None:
    assert qs("title:(a b)") == {"bool": {"should": [term("a", ["title"]), term("b", ["title"])]}}
    assert qs("(a OR b) AND c") == {"bool": {"must": [{"bool": {"should": [term("a"), term("b")]}}, term("c")]}}
    assert qs("a^2") == term("a", boost=2.0)
    assert qs("(a b)^3")["bool"]["boost"] == 3.0


def test_prefix_ranges_and_specials() -> None:
    assert qs("sear*") == term("sear", prefix=True)
    assert qs("year:[2000 TO 2010]") == {"range": {"year": {"gte": "2000", "lte": "2010"}}}
    assert qs("year:{2000 TO *]") == {"range": {"year": {"gt": "2000"}}}
    assert qs("year:>=5") == {"range": {"year": {"gte": "5"}}}
    assert qs("year:<5") == {"range": {"year": {"lt": "5"}}}
    assert qs("*") == {"match_all": {}}
    assert qs("*:*") == {"match_all": {}}
    assert qs("_exists_:title") == {"exists": {"field": "title"}}
    assert qs(r"title:a\:b") == term("a:b", ["title"])


@pytest.mark.parametrize("text", ["fox~", "fox~2", '"a b"~3', "f?x", "fo*x", "/fo+/"])
def test_unsupported_syntax_is_refused(text: str) -> None:
    with pytest.raises(UnsupportedFeature):
        qs(text)


@pytest.mark.parametrize("text", ['"unterminated', "(a b", "a)", "year:[1 2]"])
def test_syntax_errors(text: str) -> None:
    with pytest.raises(QueryShardError):
        qs(text)


def test_simple_query_string() -> None:
    assert sqs("a | b") == {"bool": {"should": [term("a"), term("b")]}}
    assert sqs("a + b") == {"bool": {"must": [term("a"), term("b")]}}
    assert sqs("a -b") == {"bool": {"should": [term("a")], "must_not": [term("b")]}}
    assert sqs('"a b" c*') == {"bool": {"should": [term("a b", phrase=True), term("c", prefix=True)]}}
    # AND/OR/NOT and field: are plain text in simple_query_string
    assert sqs("a AND b") == {"bool": {"should": [term("a"), term("AND"), term("b")]}}
    assert sqs("title:x") == term("title:x")
    # never a syntax error
    for text in ['"open', "((a", "a)) b", "~~", "fox~2"]:
        sqs(text)
    assert sqs("") == {"match_none": {}}
