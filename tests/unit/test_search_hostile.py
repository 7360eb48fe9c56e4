"""Hostile input to the search layer: injection, bombs, odd JSON (no sockets).

Each test names the defect it pins; each failed on main before the fix.
"""
import gzip
import json
import time

import pytest
from support.aio import run

from selproxy._inflate import DecodedTooLarge, gunzip
from selproxy.errors import BodyTooLarge
from selproxy.handler import Request, Response
from selproxy.search import SearchConfig, SearchService, _json
from support.search_doubles import ReverseRanker
from selproxy.search.overrides import MAX_ECHOED_NAMES, extract_overrides
from selproxy.search.respond import decode_body, header_safe, hits_at, passthrough_response
from selproxy.search.rewrite import plan_search, request_body
from selproxy.search.source_filter import (MAX_SOURCE_PATTERNS, SourceFilter, SourceFilterTooCostly,
                                           client_source_filter)

Q = {"query": {"match": {"title": "rocket"}}}


def es_response(hits):
    return {"took": 1, "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": 1.0,
                                "hits": hits}}


def es_hits(n):
    return [{"_index": "books", "_id": str(k), "_score": float(n - k), "_source": {"title": f"rocket {k}"}}
            for k in range(n)]


class RawEngine:
    """An upstream that answers every request with fixed bytes."""

    def __init__(self, body, headers=()):
        self.body, self.headers, self.requests = body, list(headers), []

    async def request(self, method, target, headers, body=b"", *, timeout=None):
        self.requests.append((method, target, headers, body))
        return Response(200, [("Content-Type", "application/json")] + self.headers, self.body)


def handle(service, upstream, body, target="/books/_search", headers=(), kind="search"):
    route = next(r for r in service.routes() if r.path.endswith("_search" if kind == "search" else "_msearch")
                 and "{index}" in r.path)
    request = Request("POST", target, list(headers), body, {"index": "books"})
    return run(route.handler(request, upstream), 10)


# -- header injection -------------------------------------------------------

@pytest.mark.parametrize("name", ["x%0d%0aSet-Cookie:%20a%3d1", "%E2%98%83", "a%00b", "x" * 100, "a b"])
def test_ignored_override_names_are_never_echoed(name):
    overrides, target, _ = extract_overrides(f"/_search?selproxy.{name}=1&q=a", [], max_topn=10)
    assert overrides.ignored == ("+1",)
    assert target == "/_search?q=a"


def test_ignored_report_is_bounded():
    names = "&".join(f"selproxy.n{k}=1" for k in range(50))
    overrides, _, _ = extract_overrides(f"/_search?{names}&selproxy.n1=2", [("X-Selproxy-Zz\r", "1")], 10)
    assert overrides.ignored == tuple(f"n{k}" for k in range(MAX_ECHOED_NAMES)) + ("+43",)


def test_header_values_are_printable_ascii():
    assert header_safe("fallback; reason=x\r\nSet-Cookie: a=1\x00\u2603") == \
        "fallback; reason=x??Set-Cookie: a=1??"
    assert header_safe("a" * 5000) == "a" * 5000 and header_safe("a" * 5000, 10) == "a" * 10
    out = passthrough_response(Response(200, [], b"{}"), "skipped; reason=\nx", "t\r", ("\u2603",))
    for _, value in out.headers:
        assert value.isascii() and value.isprintable()


def test_service_answer_headers_are_latin1_safe_for_hostile_override_names():
    service = SearchService(ReverseRanker(), SearchConfig(topn=3))
    upstream = RawEngine(json.dumps(es_response(es_hits(3))).encode())
    response = handle(service, upstream, json.dumps(Q).encode(),
                      target="/books/_search?selproxy.x%0d%0aSet-Cookie:%20a%3d1=1&selproxy.%E2%98%83=1")
    assert response.header("x-selproxy-ignored") == "+2"
    for name, value in response.headers:
        assert "\r" not in value and "\n" not in value and "\0" not in value
        value.encode("latin-1")


# -- strict, bounded JSON -----------------------------------------------------

@pytest.mark.parametrize("data", [
    b'{"q": "\\ud800"}', b'"\xed\xa0\x80"', b"[NaN]", b'{"a": Infinity}', b"[1e400]", b"[-1e400]",
    b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 101 + b"1" + b"}" * 101,
])
def test_json_refusals_are_value_errors(data):
    with pytest.raises(ValueError):
        _json.loads(data)


def test_json_refusals_without_orjson(monkeypatch):
    monkeypatch.setattr(_json, "HAVE_ORJSON", False)
    for data in (b'"\\ud800"', b"[NaN]", b"[1e400]", b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(ValueError):
            _json.loads(data)
    assert _json.loads(b'"\\ud83d\\ude00"') == "\U0001F600"


def test_json_keeps_what_it_reads():
    assert _json.loads(b"[18446744073709551616, -9223372036854775809]") == [2 ** 64, -2 ** 63 - 1]
    assert _json.dumps(_json.loads(b"[18446744073709551616]")) == b"[18446744073709551616]"
    assert _json.loads(b'"\\ud83d\\ude00"') == "\U0001F600"
    assert _json.loads(b"[" * 100 + b"]" * 100) is not None


def test_json_structure_bound():
    with pytest.raises(_json.TooCostly):
        _json.loads(b"[" + b"[]," * _json.MAX_CONTAINERS + b"[]]")
    with pytest.raises(_json.TooCostly):
        _json.loads(b"[" + b"1," * (_json.MAX_VALUES + 1) + b"1]")


def test_json_dumps_refuses_values_without_a_json_form(monkeypatch):
    monkeypatch.setattr(_json, "HAVE_ORJSON", False)
    for value in (float("nan"), float("inf"), "\ud800"):
        with pytest.raises(ValueError):
            _json.dumps([value])


@pytest.mark.parametrize("upstream_body", [
    b'{"hits":{"hits":[{"_id":"1","_score":1.0,"_source":{"title":"rocket \\ud800"}}]}}',
    b'{"hits":{"hits":[{"_id":"1","_score":1e400,"_source":{"title":"rocket"}}]}}',
    b'{"hits":{"hits":[1, "two", null]}}',
    b'{"hits":{"hits":[{"_id":"1","_source":{"title":"rocket"}}, 7]}}',
    b'{"hits":{"hits":[{"_id":"1","_source":' + b'{"a":' * 5000 + b'"rocket"' + b"}" * 5000 + b"}]}}",
    b'{"hits":{"hits":[{"_id":"1","_source":{"title":"rocket"}}]},"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
])
def test_unreadable_responses_go_to_the_client_byte_for_byte(upstream_body):
    service = SearchService(ReverseRanker(), SearchConfig(topn=3))
    response = handle(service, RawEngine(upstream_body), json.dumps(Q).encode())
    assert response.status == 200 and response.body == upstream_body
    assert response.header("x-selproxy-rerank") == "skipped; reason=format"


@pytest.mark.parametrize("request_body_", [
    b'{"query":{"match":{"title":"\\ud800"}}}', b'{"query":{"match":{"title":"a"}},"min_score":NaN}',
    b'{"query":{"match":{"title":"a"}},"min_score":1e400}', b'{"query":' * 100_000 + b"1" + b"}" * 100_000,
])
def test_unreadable_requests_are_sent_on_unchanged(request_body_):
    service = SearchService(ReverseRanker(), SearchConfig(topn=3))
    upstream = RawEngine(json.dumps(es_response(es_hits(3))).encode())
    response = handle(service, upstream, request_body_)
    assert upstream.requests[-1][3] == request_body_
    assert response.header("x-selproxy-rerank") == "skipped; reason=bad_request"


def test_hits_at_wants_a_list_of_objects():
    assert hits_at({"hits": {"hits": [{"a": 1}]}}, ("hits", "hits")) == [{"a": 1}]
    assert hits_at({"hits": {"hits": [{"a": 1}, 2]}}, ("hits", "hits")) is None
    assert hits_at({"hits": {"hits": {}}}, ("hits", "hits")) is None


# -- decompression bombs --------------------------------------------------------

BOMB = gzip.compress(b"\0" * (64 << 20), 9)  # 64 MiB in about 64 KB


def test_gunzip_is_bounded_and_exact():
    data = bytes(range(256)) * 4096
    assert gunzip(gzip.compress(data), len(data)) == data
    assert gunzip(gzip.compress(b"ab") + gzip.compress(b"cd"), 4) == b"abcd"
    with pytest.raises(DecodedTooLarge):
        gunzip(gzip.compress(data), len(data) - 1)
    started = time.perf_counter()
    with pytest.raises(DecodedTooLarge):
        gunzip(BOMB, 1 << 20)
    assert time.perf_counter() - started < 2.0
    for bad in (gzip.compress(data)[:-4], b"not gzip", gzip.compress(b"x") + b"junk"):
        with pytest.raises(ValueError):
            gunzip(bad, 1 << 30)


def test_gzip_request_bomb_is_a_413():
    request = Request("POST", "/books/_search", [("Content-Encoding", "gzip")], BOMB)
    with pytest.raises(BodyTooLarge) as info:
        request_body(request, 16 << 20)
    assert info.value.status == 413 and b"content_too_long_exception" in info.value.body()
    service = SearchService(ReverseRanker(), SearchConfig(topn=3, max_decoded_body=1 << 20))
    upstream = RawEngine(b"{}")
    for kind in ("search", "msearch"):
        with pytest.raises(BodyTooLarge):
            handle(service, upstream, BOMB, headers=[("Content-Encoding", "gzip")], kind=kind)
    assert upstream.requests == []


def test_gzip_response_bomb_passes_through():
    service = SearchService(ReverseRanker(), SearchConfig(topn=3, max_decoded_body=1 << 20))
    upstream = RawEngine(BOMB, [("Content-Encoding", "gzip")])
    response = handle(service, upstream, json.dumps(Q).encode())
    assert response.body == BOMB and response.header("content-encoding") == "gzip"
    assert response.header("x-selproxy-rerank") == "skipped; reason=too_large"
    with pytest.raises(DecodedTooLarge):
        decode_body(Response(200, [], b"x" * 11), 10)


@pytest.mark.parametrize("kind", ["search", "msearch"])
@pytest.mark.parametrize("body", [b"not gzip", gzip.compress(json.dumps(Q).encode())[:-4]])
def test_a_request_body_that_is_not_gzip_is_sent_on_unchanged(kind, body):
    # _inflate.gunzip raises ValueError for it: the search is a bad_request
    # for the proxy, and the engine decides.
    service = SearchService(ReverseRanker(), SearchConfig(topn=3))
    upstream = RawEngine(json.dumps(es_response(es_hits(3))).encode())
    response = handle(service, upstream, body, headers=[("Content-Encoding", "gzip")], kind=kind)
    assert response.header("x-selproxy-rerank") == "skipped; reason=bad_request"
    assert [r[3] for r in upstream.requests] == [body]


def test_structured_request_is_sent_on_unchanged_as_too_large():
    service = SearchService(ReverseRanker(), SearchConfig(topn=3))
    upstream = RawEngine(json.dumps(es_response(es_hits(3))).encode())
    body = json.dumps({**Q, "aggs": [[] for _ in range(_json.MAX_CONTAINERS)]}).encode()
    started = time.perf_counter()
    response = handle(service, upstream, body)
    assert time.perf_counter() - started < 2.0
    assert upstream.requests[-1][3] == body
    assert response.header("x-selproxy-rerank") == "skipped; reason=too_large"


# -- _source filtering ----------------------------------------------------------

def test_source_patterns_only_star_is_a_wildcard():
    hit = {"_source": {"title": 1, "t?tle": 2, "a1": 3, "a[1]": 4, "ma.xqy": 5, "m": {"x": {"y": 6}},
                       "q": {"id": 7, "z": 8}, "pre": {"secret": 1, "ok": 2}, "prefix": 9, "b": 10}}
    SourceFilter(includes=("t?tle", "a[1]", "m*.x*y", "*.id", "pre*"), excludes=("pre.secret",)).apply(hit)
    assert hit["_source"] == {"t?tle": 2, "a[1]": 4, "ma.xqy": 5, "m": {"x": {"y": 6}}, "q": {"id": 7},
                              "pre": {"ok": 2}, "prefix": 9}


def test_too_many_source_patterns_pass_through():
    body = {**Q, "_source": [f"f{k}" for k in range(40_000)]}
    started = time.perf_counter()
    plan = plan_search(body, {}, ("books",), topn=10)
    assert plan.skip == "source_filter"
    f = client_source_filter({"_source": {"includes": ["a"] * MAX_SOURCE_PATTERNS}}, {})
    assert f is not None and f.within_limits
    assert not SourceFilter(includes=("x" * 257,)).within_limits
    assert time.perf_counter() - started < 1.0


def test_source_filter_work_is_budgeted():
    f = SourceFilter(includes=tuple(f"*a*b*c*{k}" for k in range(MAX_SOURCE_PATTERNS)))
    started = time.perf_counter()
    with pytest.raises(SourceFilterTooCostly):
        for _ in range(100):
            f.apply({"_source": {f"k{k}": "v" for k in range(20_000)}})
    assert time.perf_counter() - started < 5.0


def test_costly_source_filter_resends_the_search_unchanged():
    service = SearchService(ReverseRanker(), SearchConfig(topn=3))
    wide = [{"_index": "books", "_id": str(k), "_score": 1.0,
             "_source": {"title": "rocket", **{f"k{j}": "v" for j in range(30_000)}}} for k in range(3)]
    upstream = RawEngine(json.dumps(es_response(wide)).encode())
    body = json.dumps({**Q, "size": 3, "_source": [f"*x*y*{k}" for k in range(60)]}).encode()
    response = handle(service, upstream, body)
    assert response.header("x-selproxy-rerank") == "skipped; reason=source_filter"
    assert len(upstream.requests) == 2 and upstream.requests[-1][3] == body


# -- many small pieces --------------------------------------------------------------

def test_msearch_with_too_many_searches_is_sent_on_unchanged():
    service = SearchService(ReverseRanker(), SearchConfig(topn=3))
    upstream = RawEngine(b'{"responses":[]}')
    body = b"\n" * (4 << 20)
    started = time.perf_counter()
    response = handle(service, upstream, body, kind="msearch")
    assert time.perf_counter() - started < 2.0
    assert upstream.requests[-1][3] == body
    assert response.header("x-selproxy-rerank") == "skipped; reason=too_large"


def test_query_clauses_read_are_bounded():
    from selproxy.search.extract import MAX_QUERY_CLAUSES, query_text
    query = {"match": {"t": "x"}}
    for _ in range(60):
        query = {"bool": {"should": [query]}}
    query["bool"]["should"] = [{"match": {"t": f"w{k}"}} for k in range(200_000)]
    started = time.perf_counter()
    text = query_text({"query": query})
    assert time.perf_counter() - started < 2.0
    assert text.split() == [f"w{k}" for k in range(MAX_QUERY_CLAUSES)]
