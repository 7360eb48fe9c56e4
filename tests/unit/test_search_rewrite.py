"""Planning and rewriting searches, from decoded JSON (no sockets)."""
import json

import pytest

from selproxy.search.config import SOLR
from selproxy.search.overrides import Overrides
from selproxy.search.rewrite import (SourceFilter, client_source_filter, plan_msearch,
                                     plan_params_search, plan_search, query_params,
                                     rewrite_query_string)

MATCH = {"query": {"match": {"title": "rockets"}}}


def plan(body=None, params=None, indices=("books",), **kw):
    kw.setdefault("topn", 50)
    return plan_search(body, params or {}, indices, **kw)


def test_window_from_zero_with_topn():
    p = plan({**MATCH, "size": 5, "from": 10})
    assert p.skip is None and p.query == "rockets"
    assert (p.offset, p.size, p.window, p.fetch) == (10, 5, 50, 50)
    assert p.body["from"] == 0 and p.body["size"] == 50
    assert p.body["query"] == MATCH["query"] and p.params == {}


def test_page_straddling_the_window_fetches_enough():
    p = plan({**MATCH, "size": 10, "from": 45})
    assert (p.window, p.fetch) == (50, 55)


def test_defaults_and_url_params():
    p = plan(None, {"q": "title:rockets", "size": "3"})
    assert (p.offset, p.size) == (0, 3)
    assert p.body is None and p.params == {"from": "0", "size": "50"}
    p = plan(MATCH, {"size": "3", "from": "1"})
    assert (p.offset, p.size) == (1, 3)
    assert p.params == {"from": None, "size": None} and p.body["size"] == 50


@pytest.mark.parametrize("body, params, kw, reason", [
    (MATCH, {}, {"overrides": Overrides(rerank=False)}, "override"),
    (MATCH, {"scroll": "1m"}, {}, "scroll"),
    ({**MATCH, "pit": {"id": "x"}}, {}, {}, "pit"),
    ({**MATCH, "search_after": [1]}, {}, {}, "search_after"),
    ({**MATCH, "sort": [{"date": "desc"}]}, {}, {}, "sort"),
    ({**MATCH, "sort": "date"}, {}, {}, "sort"),
    ({**MATCH, "sort": [{"_score": "asc"}]}, {}, {}, "sort"),
    (MATCH, {"sort": "date:desc"}, {}, "sort"),
    ({**MATCH, "size": 0, "aggs": {}}, {}, {}, "size0"),
    ({**MATCH, "from": 50}, {}, {}, "past_window"),
    ({"query": {"match_all": {}}}, {}, {}, "no_query_text"),
    (None, {}, {}, "no_query_text"),
    ({**MATCH, "size": "many"}, {}, {}, "bad_request"),
    (MATCH, {}, {"exclude": ("book*",)}, "index"),
    (MATCH, {}, {"include": ("logs-*",)}, "index"),
])
def test_skip_reasons(body, params, kw, reason):
    assert plan(body, params, **kw).skip == reason


@pytest.mark.parametrize("sort", ["_score", ["_score"], [{"_score": "desc"}],
                                  [{"_score": {"order": "desc"}}, "date"]])
def test_score_sorts_are_reranked(sort):
    assert plan({**MATCH, "sort": sort}).skip is None


def test_topn_override_and_hidden_indices():
    assert plan(MATCH, overrides=Overrides(topn=7)).window == 7
    assert plan(MATCH, indices=(".kibana",), exclude=(".*",)).skip == "index"
    assert plan(MATCH, indices=(), exclude=(".*",)).skip is None
    assert plan(MATCH, indices=("books", "-books-old"), include=("books",)).skip is None


def test_source_filter_is_widened_and_remembered():
    p = plan({**MATCH, "_source": False})
    assert p.body["_source"] is True and p.source_filter == SourceFilter(disabled=True)
    p = plan({**MATCH, "_source": ["title"]})
    assert p.source_filter == SourceFilter(includes=("title",))
    p = plan({**MATCH, "_source": {"includes": ["a.*"], "excludes": ["a.secret"]}})
    assert p.source_filter == SourceFilter(includes=("a.*",), excludes=("a.secret",))
    p = plan(MATCH, {"_source_includes": "title,year"})
    assert p.params["_source_includes"] is None
    assert p.source_filter == SourceFilter(includes=("title", "year"))
    assert client_source_filter({"_source": True}, {}) is None
    assert client_source_filter({}, {"_source": "false"}) == SourceFilter(disabled=True)


def test_source_filter_apply():
    hit = {"_source": {"title": "t", "year": 1, "a": {"b": 1, "secret": 2}, "list": [{"x": 1, "y": 2}]}}
    f = SourceFilter(includes=("title", "a.*", "list.x"), excludes=("a.secret",))
    f.apply(hit)
    assert hit["_source"] == {"title": "t", "a": {"b": 1}, "list": [{"x": 1}]}
    hit = {"_source": {"title": "t"}}
    SourceFilter(disabled=True).apply(hit)
    assert "_source" not in hit


def test_explain_and_debug():
    assert plan({**MATCH, "explain": True}).explain
    assert plan(MATCH, {"explain": "true"}).explain
    assert plan(MATCH, overrides=Overrides(debug=True)).explain
    assert not plan(MATCH).explain


def test_rewrite_query_string_keeps_other_bytes():
    qs = "q=a%20b&size=3&pretty&filter_path=hits.hits._id"
    assert rewrite_query_string(qs, {"size": "50", "from": "0"}) == \
        "q=a%20b&size=50&pretty&filter_path=hits.hits._id&from=0"
    assert rewrite_query_string(qs, {"size": None}) == "q=a%20b&pretty&filter_path=hits.hits._id"
    assert rewrite_query_string("", {}) == ""
    assert query_params("a=1&a=2&b") == {"a": "1", "b": ""}


def ndjson(*items):
    return b"".join(json.dumps(i).encode() + b"\n" for i in items)


def test_msearch_rewrites_only_reranked_lines():
    sorted_body = b'{"query":{"match":{"t":"x"}},  "sort":["date"]}'
    data = ndjson({"index": "a"}, {**MATCH, "size": 2}) + b'{"index":"b"}\n' + sorted_body + b"\n"
    plans, out = plan_msearch(data, (), topn=20)
    assert [p.skip for p in plans] == [None, "sort"]
    assert plans[0].indices == ("a",)
    lines = out.split(b"\n")
    assert json.loads(lines[1])["size"] == 20
    assert lines[2:4] == [b'{"index":"b"}', sorted_body] and out.endswith(b"\n")


def test_msearch_empty_header_and_bad_bodies():
    plans, _ = plan_msearch(b"\n" + json.dumps(MATCH).encode() + b"\n", ("dflt",), topn=5)
    assert plans[0].indices == ("dflt",) and plans[0].skip is None
    assert plan_msearch(b"{}\n", (), topn=5) is None
    assert plan_msearch(b"{}\nnot json\n", (), topn=5) is None


def test_solr_plan():
    p = plan_params_search(SOLR, {"q": "title:rockets", "rows": "5", "start": "10"}, ("core",), topn=50)
    assert p.skip is None and p.query == "rockets" and (p.offset, p.size) == (10, 5)
    assert p.params == {"start": "0", "rows": "50"}
    assert plan_params_search(SOLR, {"q": "*:*"}, (), topn=50).skip == "no_query_text"
    assert plan_params_search(SOLR, {"q": "a", "sort": "date asc"}, (), topn=50).skip == "sort"
    assert plan_params_search(SOLR, {"q": "a", "sort": "score desc"}, (), topn=50).skip is None
    assert plan_params_search(SOLR, {"q": "a", "cursorMark": "*"}, (), topn=50).skip == "search_after"
    assert plan_params_search(SOLR, {"q": "a", "wt": "xml"}, (), topn=50).skip == "format"
    assert plan_params_search(SOLR, {"q": "a", "rows": "0"}, (), topn=50).skip == "size0"
