"""Claimed searches through the real proxy, against a loopback fake engine.

The engine (``support.search_doubles.FakeEngine``) answers in Elasticsearch's
documented shapes; the clients are aiohttp and the official ``elasticsearch``
client, unmodified, sync and async.
"""
import asyncio
import gzip
import json

import pytest
from support.aio import run

try:
    from selproxy import Proxy, _core  # noqa: F401
except ImportError:  # the compiled core is not built
    Proxy = None

from selproxy.search import SearchConfig, SearchService, solr_routes
from support.search_doubles import FakeEngine, ReverseRanker

pytestmark = pytest.mark.skipif(Proxy is None, reason="selproxy._core is not built")

DOCS = [(f"d{k:02d}", {"title": f"rocket {'engine ' * (k % 3)}number {k}", "year": 1990 + k})
        for k in range(20)]
Q = {"query": {"match": {"title": "rocket engine"}}}
PLAIN = {"Accept-Encoding": "identity"}


async def started(config=None, ranker=None):
    engine = FakeEngine({"books": list(DOCS)}, gzip_responses=True)
    host, port = await engine.serve()
    service = SearchService(ranker or ReverseRanker(), config or SearchConfig(topn=6))
    proxy = Proxy(upstream=f"http://{host}:{port}", listen="127.0.0.1:0", routes=service.routes())
    proxy.status_sections["search"] = service.status
    await proxy.start()
    return engine, service, proxy


async def stopped(engine, service, proxy):
    await proxy.stop(grace=1.0)
    await engine.close()
    service.close()


def direct_ids(engine, body):
    return [h["_id"] for h in engine.answer("POST", "/books/_search", json.dumps(body).encode())[1]["hits"]["hits"]]


def test_rerank_gzip_overrides_and_status_over_http():
    aiohttp = pytest.importorskip("aiohttp")

    async def scenario():
        engine, service, proxy = await started(SearchConfig(topn=6, extra_routes=solr_routes()))
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as http:
                url = proxy.url + "/books/_search?selproxy.upstream=http://evil"
                async with http.post(url, json={**Q, "size": 3},
                                     headers={"Accept-Encoding": "gzip"}) as r:
                    assert r.status == 200
                    assert r.headers["X-Selproxy-Rerank"] == "applied"
                    assert r.headers["X-Selproxy-Ignored"] == "upstream"
                    assert r.headers["Content-Encoding"] == "gzip"
                    assert "rank;dur=" in r.headers["Server-Timing"]
                    raw = await r.read()
                    assert int(r.headers["Content-Length"]) == len(raw)
                    doc = json.loads(gzip.decompress(raw))
                assert [h["_id"] for h in doc["hits"]["hits"]] == direct_ids(engine, {**Q, "size": 6})[::-1][:3]
                assert all("evil" not in target for _, target, _, _ in engine.requests)
                async with http.post(proxy.url + "/books/_search", json={**Q, "sort": ["year"]}) as r:
                    assert r.headers["X-Selproxy-Rerank"] == "skipped; reason=sort"
                async with http.get(proxy.url + "/solr/books/select?q=rocket&rows=2", headers=PLAIN) as r:
                    assert r.headers["X-Selproxy-Rerank"] == "applied"
                    assert len((await r.json())["response"]["docs"]) == 2
                async with http.get(proxy.url + "/books/_count") as r:
                    assert "X-Selproxy-Rerank" not in r.headers
                async with http.get(proxy.url + "/_selproxy/status", headers=PLAIN) as r:
                    status = (await r.json())["search"]
                assert status["reranked"] == 2 and status["skipped"] == {"sort": 1}
        finally:
            await stopped(engine, service, proxy)

    run(scenario(), 30)


def test_official_client_sync_and_async():
    es = pytest.importorskip("elasticsearch")

    async def scenario():
        engine, service, proxy = await started()
        try:
            expected = direct_ids(engine, {**Q, "size": 6})[::-1][:2]

            def sync_calls():
                client = es.Elasticsearch(proxy.url, request_timeout=5)
                try:
                    found = client.search(index="books", query=Q["query"], size=2)
                    multi = client.msearch(searches=[{"index": "books"}, {**Q, "size": 2}])
                    client.indices.create(index="new-index")
                    client.bulk(operations=[{"index": {"_index": "new-index", "_id": "1"}}, {"t": "x"}])
                    return found, multi
                finally:
                    client.close()

            found, multi = await asyncio.to_thread(sync_calls)
            assert [h["_id"] for h in found["hits"]["hits"]] == expected
            assert [h["_id"] for h in multi["responses"][0]["hits"]["hits"]] == expected
            assert any(t == "/new-index/_bulk" or t.startswith("/_bulk") or "_bulk" in t
                       for _, t, _, _ in engine.requests)

            client = es.AsyncElasticsearch(proxy.url, request_timeout=5)
            try:
                found = await client.search(index="books", query=Q["query"], size=2)
            finally:
                await client.close()
            assert [h["_id"] for h in found["hits"]["hits"]] == expected
        finally:
            await stopped(engine, service, proxy)

    run(scenario(), 60)


def test_status_reports_ready_only_after_the_ranker_warmed_up():
    import threading

    from support.aio import run as run_on_loop
    from support.proxy import in_process
    from support.rawhttp import RawClient
    from support.upstream import RecordingUpstream

    release = threading.Event()

    class SlowToWarm:
        warmed = False

        def warmup(self):
            release.wait(10)
            self.warmed = True

        def rank(self, query, docs):
            return [0.0] * len(docs)

    async def main():
        async with RecordingUpstream() as up:
            async with in_process(up.url, ranker=SlowToWarm()) as proxy:
                client = await RawClient.connect(proxy.url)
                before = (await client.request("GET", "/_selproxy/status")).json()["ready"]
                release.set()
                await proxy.ready()
                after = (await client.request("GET", "/_selproxy/status")).json()["ready"]
                client.close()
                return before, after

    assert run_on_loop(main()) == (False, True)
