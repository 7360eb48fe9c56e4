"""Cutting the engine's window to the client's page, from decoded JSON (no sockets)."""
import gzip

import pytest

from selproxy.handler import Response
from selproxy.search import _json
from selproxy.search.config import SOLR
from selproxy.search.respond import (accepts_gzip, apply_es, apply_params, client_response,
                                     decode_body, format_server_timing, page_hits, passthrough_response)
from selproxy.search.rewrite import SearchPlan, SourceFilter


def es_doc(n):
    return {
        "took": 7, "timed_out": False, "_shards": {"total": 2, "successful": 2, "skipped": 0, "failed": 0},
        "hits": {"total": {"value": 1234, "relation": "gte"}, "max_score": float(n),
                 "hits": [{"_index": "i", "_id": str(k), "_score": float(n - k), "_routing": "r",
                           "_source": {"title": f"doc {k}", "n": k}, "sort": [k]} for k in range(n)]},
        "aggregations": {"by_year": {"buckets": [{"key": 1999, "doc_count": 4}]}},
        "suggest": {"s": [{"text": "x", "options": []}]},
    }


def ids(doc):
    return [h["_id"] for h in doc["hits"]["hits"]]


def test_reranked_page_and_untouched_fields():
    doc = es_doc(6)
    before = _json.loads(_json.dumps(doc))
    plan = SearchPlan(offset=1, size=2, window=6, fetch=6)
    apply_es(doc, plan, [0.1, 0.9, 0.5, 0.7, 0.2, 0.3])
    # reranked order: 1, 3, 2, 5, 4, 0
    assert ids(doc) == ["3", "2"]
    assert [h["_score"] for h in doc["hits"]["hits"]] == [0.7, 0.5]
    assert doc["hits"]["max_score"] == 0.9
    for key in ("took", "timed_out", "_shards", "aggregations", "suggest"):
        assert doc[key] == before[key]
    assert doc["hits"]["total"] == before["hits"]["total"]
    hit = doc["hits"]["hits"][0]
    orig = before["hits"]["hits"][3]
    assert {k: v for k, v in hit.items() if k != "_score"} == {k: v for k, v in orig.items() if k != "_score"}


def test_ties_keep_engine_order_and_scores_are_floats():
    hits = [{"_id": str(k), "_score": 1} for k in range(4)]
    page = page_hits(hits, SearchPlan(size=4, window=4), [1, 2, 2, 1])
    assert [h["_id"] for h in page] == ["1", "2", "0", "3"]
    assert all(isinstance(h["_score"], float) for h in page)


def test_pages_past_window_continue_in_engine_order_without_gaps():
    scores = [float(k) for k in range(5)]  # reverses the window of 5
    seen = []
    for offset in range(0, 8, 3):
        doc = es_doc(8)
        apply_es(doc, SearchPlan(offset=offset, size=3, window=5, fetch=max(5, offset + 3)), scores)
        seen += ids(doc)
    assert seen == ["4", "3", "2", "1", "0", "5", "6", "7"]


def test_fallback_is_engine_order():
    doc = es_doc(5)
    apply_es(doc, SearchPlan(offset=0, size=2, window=5, fetch=5), None)
    assert ids(doc) == ["0", "1"] and doc["hits"]["max_score"] == 5.0


def test_explain_and_source_filter():
    doc = es_doc(3)
    plan = SearchPlan(size=1, window=3, explain=True, source_filter=SourceFilter(includes=("title",)))
    apply_es(doc, plan, [0.0, 0.0, 5.0])
    hit = doc["hits"]["hits"][0]
    assert hit["_selproxy"] == {"engine_rank": 2, "engine_score": 1.0}
    assert hit["_source"] == {"title": "doc 2"} and hit["_score"] == 5.0


def test_solr_page():
    doc = {"responseHeader": {"status": 0, "params": {"q": "x", "rows": "50", "start": "0"}},
           "response": {"numFound": 9, "start": 0, "maxScore": 3.0,
                        "docs": [{"id": str(k), "title": "t", "score": 3.0 - k} for k in range(3)]}}
    plan = SearchPlan(offset=1, size=1, window=3, fetch=3)
    apply_params(doc, SOLR, plan, [1.0, 2.0, 3.0], {"q": "x", "start": "1", "rows": "1"})
    assert doc["response"]["docs"] == [{"id": "1", "title": "t", "score": 2.0}]
    assert doc["response"]["start"] == 1 and doc["response"]["maxScore"] == 3.0
    assert doc["responseHeader"]["params"] == {"q": "x", "rows": "1", "start": "1"}


def test_solr_score_only_where_the_engine_wrote_one():
    docs = [{"id": "a"}, {"id": "b"}]
    page = page_hits(docs, SearchPlan(size=2, window=2), [0.0, 1.0], "score", score_always=False)
    assert page == [{"id": "b"}, {"id": "a"}]


@pytest.mark.parametrize("value, ok", [
    ("gzip", True), ("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.5", True), ("gzip;q=0", False),
    ("*", True), ("identity", False), (None, False), ("deflate", False),
])
def test_accepts_gzip(value, ok):
    headers = [("Accept-Encoding", value)] if value else []
    assert accepts_gzip(headers) is ok


def test_gzip_both_ways():
    body = b'{"a":1}'
    assert decode_body(Response(200, [("Content-Encoding", "gzip")], gzip.compress(body))) == body
    assert decode_body(Response(200, [], body)) == body
    with pytest.raises(ValueError):
        decode_body(Response(200, [("Content-Encoding", "br")], body))
    with pytest.raises(ValueError):
        decode_body(Response(200, [("Content-Encoding", "gzip")], b"not gzip"))
    upstream = Response(200, [("content-type", "application/json"), ("content-encoding", "gzip"),
                              ("content-length", "99")], b"")
    out = client_response(upstream, body, gzip_ok=True, gzip_level=1, rerank="applied", timing="t")
    assert gzip.decompress(out.body) == body
    assert out.header("content-encoding") == "gzip"
    # The engine's framing stays as it came: the core alone writes the
    # response's Content-Length (test_core_handler_heads checks the wire).
    assert out.header("content-length") == "99"
    out = client_response(upstream, body, gzip_ok=False, gzip_level=1, rerank="applied", timing="t",
                          ignored=("upstream",))
    assert out.body == body and out.header("content-encoding") is None
    assert out.header("x-selproxy-rerank") == "applied" and out.header("x-selproxy-ignored") == "upstream"


def test_passthrough_keeps_body_and_encoding():
    upstream = Response(404, [("content-encoding", "gzip"), ("content-length", "3")], b"abc")
    out = passthrough_response(upstream, "skipped; reason=upstream_status", format_server_timing(0.0012))
    assert out.status == 404 and out.body == b"abc" and out.header("content-encoding") == "gzip"
    assert out.header("server-timing") == (
        "upstream;dur=1.20, queue;dur=0.00, encode;dur=0.00, score;dur=0.00, rank;dur=0.00")
