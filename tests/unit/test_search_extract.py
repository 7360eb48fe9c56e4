"""Query text and document text, from decoded JSON (no sockets)."""
import pytest

from support.search_doubles import QUERY_FORMS
from selproxy.search.extract import (FieldSpec, document_text, lucene_text, parse_field_spec,
                                     query_text, value_at)


@pytest.mark.parametrize("q, text", [
    ("title:foo AND bar", "foo bar"),
    ('"hello world"~2 -excluded +must', "hello world must"),
    ("a NOT (b c) d", "a d"),
    ("body:(x y) OR z^2", "x y z"),
    ("date:[2020 TO 2021] fuzzy~1 wil*d", "fuzzy wild"),
    ("*:*", ""),
    ("foo || !bar && baz", "foo baz"),
    ("e-mail x", "e-mail x"),
    (r"a\:b", "a:b"),
    ("name:/joh?n/ smith", "smith"),
    ('title:"exact phrase"^3 other', "exact phrase other"),
    ("", ""),
])
def test_lucene_syntax_is_reduced_to_words(q, text):
    assert lucene_text(q) == text


@pytest.mark.parametrize("query, text", QUERY_FORMS)
def test_every_query_form(query, text):
    assert query_text({"query": query}) == text


def test_q_param_wins_and_explicit_path():
    body = {"query": {"match": {"t": "body"}}}
    assert query_text(body, "title:url") == "url"
    assert query_text({"params": {"text": " custom "}}, query_path="params.text") == "custom"
    assert query_text({"params": {}}, query_path="params.text") == ""
    assert query_text(None) == ""
    assert query_text({"aggs": {}}) == ""


def test_deep_nesting_is_bounded():
    query = {"match": {"t": "x"}}
    for _ in range(200):
        query = {"bool": {"must": query}}
    assert query_text({"query": query}) == ""


def test_value_at():
    doc = {"a": {"b": [{"c": 1}, {"c": 2}]}}
    assert value_at(doc, "a.b.1.c") == 2
    assert value_at(doc, "a.x") is None


def test_document_text_defaults_to_source_strings_in_order():
    hit = {"_source": {"title": "Title", "n": 3, "tags": ["x", "y"], "meta": {"body": "Body"}}}
    assert document_text(hit) == "Title\nx\ny\nBody"
    assert document_text(hit, max_chars=2) == "Ti\nx\ny\nBo"
    assert document_text({"_id": "1"}) == ""


def test_document_text_from_configured_fields():
    hit = {"_source": {"title": "Title", "body": "A long body", "meta": {"k": "v"}},
           "fields": {"summary": ["Sum", "mary"]},
           "highlight": {"body": ["a <em>long</em> body"]}}
    specs = [parse_field_spec("body:6"), parse_field_spec("meta.k"), parse_field_spec("fields.summary"),
             parse_field_spec("highlight.body"), parse_field_spec("missing")]
    assert specs[0] == FieldSpec("body", "_source", 6)
    assert document_text(hit, specs) == "A long\nv\nSum mary\na long body"


def test_bad_field_spec():
    with pytest.raises(ValueError):
        parse_field_spec("highlight.")
