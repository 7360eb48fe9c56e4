"""The search handlers end to end, against an in-process fake engine (no sockets)."""
import asyncio
import gzip
import json

import pytest
from support.aio import run

from selproxy._routes import RouteTable
from selproxy.handler import Request
from selproxy.search import SearchConfig, SearchService, solr_routes
from support.search_doubles import QUERY_FORMS, FailingRanker, FakeEngine, HeldRanker, ReverseRanker
from selproxy.rankers.identity import IdentityRanker


DOCS = [(f"d{k:02d}", {"title": f"rocket {'engine ' * (k % 3)}number {k}",
                       "body": "space " * (k % 4) + "text", "year": 1990 + k}) for k in range(30)]


def engine(**kw):
    return FakeEngine({"books": list(DOCS), ".hidden": list(DOCS[:3])}, **kw)


async def call(service, upstream, method, target, body=b"", headers=()):
    """Route the request through the core's own RouteTable, as the proxy does:
    the handler reads the segments the table captured (``request.params``)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    match = RouteTable(service.routes()).match(method, target)
    if match is not None:
        request = Request(method, target, list(headers), body, match.params)
        return await match.route.handler(request, upstream)
    raise AssertionError(f"no route for {method} {target}")


def search(service, upstream, body=None, target="/books/_search", method="POST", headers=()):
    return run(call(service, upstream, method, target, body if body is not None else b"", headers), 10)


def hits(response):
    return json.loads(response.body)["hits"]["hits"]


def ids(response):
    return [h["_id"] for h in hits(response)]


def engine_ids(fake, body, target="/books/_search"):
    status, doc = fake.answer("POST", target, json.dumps(body).encode())
    return [h["_id"] for h in doc["hits"]["hits"]]


Q = {"query": {"match": {"title": "rocket engine"}}}


def test_reranks_and_keeps_everything_else():
    fake, ranker = engine(), ReverseRanker()
    service = SearchService(ranker, SearchConfig(topn=10))
    response = search(service, fake, {**Q, "size": 4, "aggs": {"n": {}}})
    window = engine_ids(fake, {**Q, "size": 10})
    assert response.status == 200
    assert response.header("x-selproxy-rerank") == "applied"
    assert response.header("server-timing").startswith("upstream;dur=")
    assert ids(response) == window[::-1][:4]
    doc = json.loads(response.body)
    direct = fake.answer("POST", "/books/_search", json.dumps({**Q, "size": 4, "aggs": {}}).encode())[1]
    for key in ("took", "timed_out", "_shards", "aggregations"):
        assert doc[key] == direct[key]
    assert doc["hits"]["total"] == direct["hits"]["total"]
    assert doc["hits"]["max_score"] == 9.0 and hits(response)[0]["_score"] == 9.0
    sent = json.loads(fake.requests[-1][3])
    assert (sent["from"], sent["size"]) == (0, 10)
    query, texts = ranker.calls[0]
    assert query == "rocket engine" and len(texts) == 10 and texts[0].startswith("rocket engine")


def test_get_with_q_param_and_no_body():
    fake = engine()
    service = SearchService(ReverseRanker(), SearchConfig(topn=5))
    response = search(service, fake, method="GET", target="/books/_search?q=title:rocket&size=2")
    assert response.header("x-selproxy-rerank") == "applied"
    assert len(ids(response)) == 2
    method, target, headers, body = fake.requests[-1]
    assert target == "/books/_search?q=title:rocket&size=5&from=0" and body == b""


@pytest.mark.parametrize("query, text", [qt for qt in QUERY_FORMS if qt[1]])
def test_every_query_form_is_reranked(query, text):
    words = " ".join(t for _, t in QUERY_FORMS)
    fake = FakeEngine({"books": [("a", {"t": words}), ("b", {"t": "x " + words})]})
    ranker = ReverseRanker()
    response = search(SearchService(ranker), fake, {"query": query})
    assert response.header("x-selproxy-rerank") == "applied"
    assert ranker.calls[0][0] == text
    assert ids(response) == ["b", "a"]


@pytest.mark.parametrize("body, target, reason", [
    ({**Q, "sort": [{"year": "desc"}]}, "/books/_search", "sort"),
    ({**Q, "size": 0}, "/books/_search", "size0"),
    (Q, "/books/_search?scroll=1m", "scroll"),
    ({**Q, "search_after": [3]}, "/books/_search", "search_after"),
    ({**Q, "pit": {"id": "abc"}}, "/_search", "pit"),
    ({"query": {"match_all": {}}}, "/books/_search", "no_query_text"),
    ({"query": {"match": {"title": "zebra"}}}, "/books/_search", "no_hits"),
    (Q, "/missing/_search", "upstream_status"),
    (Q, "/books/_search?selproxy.rerank=false", "override"),
    (Q, "/.hidden/_search", "index"),
    ({**Q, "from": 60}, "/books/_search", "past_window"),
    (b"{not json", "/books/_search", "bad_request"),
])
def test_skip_reasons_pass_through(body, target, reason):
    fake, ranker = engine(), ReverseRanker()
    service = SearchService(ranker)
    response = search(service, fake, body, target)
    assert response.header("x-selproxy-rerank") == f"skipped; reason={reason}"
    assert not ranker.calls
    if reason not in ("no_hits", "upstream_status"):
        # passed through: exactly what the client sent, minus overrides
        method, sent_target, _, sent_body = fake.requests[-1]
        assert sent_target == target.replace("?selproxy.rerank=false", "")
        assert sent_body == (body if isinstance(body, bytes) else json.dumps(body).encode())
    if reason == "upstream_status":
        assert response.status == 404 and json.loads(response.body)["status"] == 404
    assert service.status()["skipped"] == {reason: 1}


def test_fallback_on_exception():
    fake = engine()
    service = SearchService(FailingRanker())
    response = search(service, fake, {**Q, "size": 3})
    assert response.status == 200
    assert response.header("x-selproxy-rerank") == "fallback; reason=error"
    assert ids(response) == engine_ids(fake, {**Q, "size": 3})
    assert service.status()["fallback"] == {"error": 1}


@pytest.mark.parametrize("use_async", [True, False])
def test_fallback_on_deadline(use_async):
    fake = engine()
    ranker = HeldRanker(use_async)
    service = SearchService(ranker, SearchConfig(rank_deadline=0.05))
    response = search(service, fake, {**Q, "size": 3})
    # The ranker was called and is still held: the deadline answered, not the ranker.
    assert ranker.entered == 1 and not ranker.release.is_set()
    assert response.header("x-selproxy-rerank") == "fallback; reason=deadline"
    assert ids(response) == engine_ids(fake, {**Q, "size": 3})
    ranker.release.set()
    service.close()


def test_slow_ranker_never_blocks_other_requests():
    fake = engine()
    ranker = HeldRanker(use_async=False)
    service = SearchService(ranker, SearchConfig(rank_deadline=0.05, max_pending_ranks=2))

    async def many():
        return await asyncio.gather(*(call(service, fake, "POST", "/books/_search", Q) for _ in range(6)))

    results = run(many(), 10)
    # Every search was answered while the ranker was still held: the first in
    # its one thread, the second queued behind it (its call cancelled at its
    # deadline, never started), the other four refused at once.
    assert not ranker.release.is_set() and ranker.entered == 1
    reasons = sorted(r.header("x-selproxy-rerank") for r in results)
    assert reasons == ["fallback; reason=deadline"] * 2 + ["fallback; reason=overloaded"] * 4
    # passthrough is untouched meanwhile
    response = search(service, fake, {**Q, "sort": ["year"]})
    assert response.header("x-selproxy-rerank") == "skipped; reason=sort"
    ranker.release.set()
    service.close()


def test_pages_are_consistent():
    fake = engine()
    service = SearchService(ReverseRanker(), SearchConfig(topn=7))
    engine_order = engine_ids(fake, {**Q, "size": 30})
    seen = []
    for offset in range(0, 12, 4):
        response = search(service, fake, {**Q, "size": 4, "from": offset})
        seen += ids(response)
    assert seen == engine_order[:7][::-1] + engine_order[7:12]
    assert len(set(seen)) == len(seen)
    assert service.status()["skipped"] == {"past_window": 1}


def test_source_filtering_still_reranks():
    fake, ranker = engine(), ReverseRanker()
    service = SearchService(ranker, SearchConfig(topn=5))
    response = search(service, fake, {**Q, "size": 2, "_source": False})
    assert response.header("x-selproxy-rerank") == "applied"
    assert all("_source" not in h for h in hits(response))
    assert all(ranker.calls[0][1])
    assert json.loads(fake.requests[-1][3])["_source"] is True
    response = search(service, fake, {**Q, "size": 2, "_source": ["year"]})
    assert [set(h["_source"]) for h in hits(response)] == [{"year"}, {"year"}]
    response = search(service, fake, Q, target="/books/_search?_source_excludes=body&size=1")
    assert set(hits(response)[0]["_source"]) == {"title", "year"}
    assert "_source_excludes" not in fake.requests[-1][1]


def test_configured_text_fields():
    ranker = ReverseRanker()
    service = SearchService(ranker, SearchConfig(topn=3, text_fields=("title:16",)))
    fake = engine()
    search(service, fake, Q)
    # Exactly the title of each hit of the window, cut at 16 characters.
    titles = {doc_id: source["title"] for doc_id, source in DOCS}
    window = engine_ids(fake, {**Q, "size": 3})
    assert ranker.calls == [("rocket engine", [titles[i][:16] for i in window])]
    assert all(len(titles[i]) > 16 for i in window)


@pytest.mark.parametrize("client_gzip", [True, False])
def test_gzip(client_gzip):
    fake = engine(gzip_responses=True)
    service = SearchService(ReverseRanker(), SearchConfig(topn=5))
    headers = [("Accept-Encoding", "gzip")] if client_gzip else []
    response = search(service, fake, {**Q, "size": 2}, headers=headers)
    assert response.header("x-selproxy-rerank") == "applied"
    if client_gzip:
        assert response.header("content-encoding") == "gzip"
        response.body = gzip.decompress(response.body)
    else:
        assert response.header("content-encoding") is None
    assert ids(response) == engine_ids(fake, {**Q, "size": 5})[::-1][:2]


def test_gzip_request_body():
    fake = engine()
    service = SearchService(ReverseRanker(), SearchConfig(topn=5))
    body = gzip.compress(json.dumps({**Q, "size": 2}).encode())
    response = search(service, fake, body, headers=[("Content-Encoding", "gzip")])
    assert response.header("x-selproxy-rerank") == "applied"
    sent_headers, sent_body = fake.requests[-1][2], fake.requests[-1][3]
    assert json.loads(sent_body)["size"] == 5
    # The body is framed by the core (CoreUpstream.request), not here.
    assert all(k.lower() not in ("content-encoding", "content-length") for k, _ in sent_headers)


def test_overrides_allow_list_and_upstream_attempt():
    fake = engine()
    service = SearchService(ReverseRanker(), SearchConfig(topn=5, max_topn=20))
    response = search(service, fake, {**Q, "size": 2},
                      target="/books/_search?selproxy.topn=12&selproxy.upstream=http://evil:9200",
                      headers=[("X-Selproxy-Upstream", "http://169.254.169.254"), ("X-Selproxy-Debug", "1")])
    assert response.header("x-selproxy-rerank") == "applied"
    assert response.header("x-selproxy-ignored") == "upstream"
    method, target, headers, body = fake.requests[-1]
    assert target == "/books/_search" and json.loads(body)["size"] == 12
    assert all(not k.lower().startswith("x-selproxy") for k, _ in headers)
    assert "_selproxy" in hits(response)[0]


def test_msearch_one_batched_call():
    class BatchRanker:
        def __init__(self):
            self.batches = []

        def rank(self, query, docs):
            raise AssertionError("batch_rank should be used")

        async def batch_rank(self, requests, keys):
            self.batches.append((requests, keys))
            return [[float(i) for i in range(len(docs))] for _, docs in requests]

    fake, ranker = engine(), BatchRanker()
    service = SearchService(ranker, SearchConfig(topn=4))
    lines = [{"index": "books"}, {**Q, "size": 2}, {}, {**Q, "sort": ["year"], "size": 1},
             {"index": "missing"}, Q, {}, {"query": {"match": {"title": "number"}}, "size": 3}]
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    response = run(call(service, fake, "POST", "/books/_msearch", body), 10)
    assert response.header("x-selproxy-rerank") == (
        "applied, skipped; reason=sort, skipped; reason=upstream_status, applied")
    assert len(ranker.batches) == 1 and len(ranker.batches[0][0]) == 2
    keys = ranker.batches[0][1][0]
    assert keys[0][:2] == ("books", engine_ids(fake, Q)[0]) and len(keys[0][2]) == 40
    items = json.loads(response.body)["responses"]
    assert [h["_id"] for h in items[0]["hits"]["hits"]] == engine_ids(fake, {**Q, "size": 4})[::-1][:2]
    assert len(items[1]["hits"]["hits"]) == 1 and items[2]["status"] == 404
    assert len(items[3]["hits"]["hits"]) == 3
    assert service.status()["reranked"] == 2


def test_msearch_all_skipped_is_verbatim():
    fake = engine()
    service = SearchService(ReverseRanker())
    body = b'{}\n{"query":{"match_all":{}}}\n'
    response = run(call(service, fake, "GET", "/_msearch", body), 10)
    assert response.header("x-selproxy-rerank") == "skipped; reason=no_query_text"
    assert fake.requests[-1][3] == body


def test_solr_route():
    fake = FakeEngine({"books": list(DOCS)})
    service = SearchService(ReverseRanker(), SearchConfig(topn=6, extra_routes=solr_routes()))
    target = "/solr/books/select?q=title:rocket%20AND%20engine&rows=3&start=0&wt=json"
    response = run(call(service, fake, "GET", target), 10)
    assert response.header("x-selproxy-rerank") == "applied"
    doc = json.loads(response.body)
    direct = fake.answer("GET", "/solr/books/select?q=rocket%20engine&rows=6", b"")[1]
    assert [d["id"] for d in doc["response"]["docs"]] == [d["id"] for d in direct["response"]["docs"]][::-1][:3]
    assert doc["response"]["numFound"] == direct["response"]["numFound"]
    assert doc["responseHeader"]["params"]["rows"] == "3"
    assert "rows=6" in fake.requests[-1][1] and "start=0" in fake.requests[-1][1]
    response = run(call(service, fake, "GET", "/solr/books/select?q=rocket&sort=year%20asc"), 10)
    assert response.header("x-selproxy-rerank") == "skipped; reason=sort"


def test_status_counters():
    fake = engine()
    service = SearchService(IdentityRanker(), SearchConfig(topn=5))
    search(service, fake, Q)
    search(service, fake, {**Q, "size": 0})
    status = service.status()
    assert status["searches"] == 2 and status["reranked"] == 1 and status["skipped"] == {"size0": 1}
    assert status["rank_ms"]["count"] == 1 and status["upstream_ms"]["count"] == 2
    assert set(status["upstream_ms"]) == {"count", "p50", "p90", "p99", "max"}
    assert status["ranker"] == "IdentityRanker"
    json.dumps(status)


def test_upstream_errors_propagate_to_the_core():
    from selproxy.errors import UpstreamUnavailable

    class Down:
        async def request(self, *args, **kwargs):
            raise UpstreamUnavailable("refused")

    with pytest.raises(UpstreamUnavailable):
        search(SearchService(IdentityRanker()), Down(), Q)


def test_solr_form_post_is_rewritten_in_the_body():
    fake = FakeEngine({"books": list(DOCS)})
    service = SearchService(ReverseRanker(), SearchConfig(topn=6, extra_routes=solr_routes()))
    form = b"q=rocket+engine&rows=2"
    headers = [("Content-Type", "application/x-www-form-urlencoded")]
    response = run(call(service, fake, "POST", "/solr/books/select?wt=json", form, headers), 10)
    assert response.header("x-selproxy-rerank") == "applied"
    method, target, sent_headers, body = fake.requests[-1]
    assert body == b"q=rocket+engine&rows=6"
    assert target == "/solr/books/select?wt=json&start=0"
    assert all(k.lower() != "content-length" for k, _ in sent_headers)


def test_the_query_is_offered_to_the_ranker_before_the_engine_is_asked():
    events = []

    class Prefetching(ReverseRanker):
        def prefetch_query(self, query):
            events.append(("prefetch", query, len(fake.requests)))

        def rank(self, query, docs):
            events.append(("rank", query, len(fake.requests)))
            return super().rank(query, docs)

    fake = engine()
    service = SearchService(Prefetching(), SearchConfig(topn=10))
    response = search(service, fake, {**Q, "size": 4})
    assert response.header("x-selproxy-rerank") == "applied"
    # Offered while no request had gone to the engine; ranked after its answer.
    assert events == [("prefetch", "rocket engine", 0), ("rank", "rocket engine", 1)]
