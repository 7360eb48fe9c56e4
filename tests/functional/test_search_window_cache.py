"""The window cache over real loopback sockets, against the embedded engine.

A tap between the proxy and the engine counts the requests the engine gets,
and a counting ranker the model calls: a later page served from the window
makes neither.  Pages are compared with the same pages from a proxy whose
cache is off, so "cached" means "the same answer, for free".
"""
import asyncio
import json
from typing import List, Sequence

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from selproxy import Proxy
from selproxy.engine import Engine
from selproxy.search import SearchConfig
from support.aio import run
from support.tap import Tap

WORDS = ["rocket", "engine", "fuel", "orbit", "thrust", "nozzle", "stage", "launch"]
DOCS = [{"title": " ".join(WORDS[(k * j) % len(WORDS)] for j in range(1, 2 + k % 7)) + f" note {k}"}
        for k in range(40)]
QUERY = {"query": {"match": {"title": "rocket engine thrust"}}}


class CountingRanker:
    """Deterministic (shorter documents first) and counts its calls."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        self.calls += 1
        return [-float(len(doc)) for doc in docs]


async def _load(http: aiohttp.ClientSession, url: str, docs=DOCS) -> None:
    async with http.put(url + "/books", json={"mappings": {"properties": {"title": {"type": "text"}}}}) as r:
        assert r.status == 200, await r.text()
    lines = "".join(json.dumps({"index": {"_index": "books", "_id": f"d{k}"}}) + "\n" + json.dumps(d) + "\n"
                    for k, d in enumerate(docs))
    async with http.post(url + "/_bulk?refresh=true", data=lines,
                         headers={"Content-Type": "application/x-ndjson"}) as r:
        assert r.status == 200 and not (await r.json())["errors"]


async def _search(http, url, offset, size, headers=None, body=QUERY):
    async with http.post(f"{url}/books/_search", json={**body, "from": offset, "size": size},
                         headers=headers or {}) as r:
        assert r.status == 200, await r.text()
        return r.headers.get("X-Selproxy-Rerank"), await r.json()


def _same_page(a, b):
    a, b = dict(a), dict(b)
    a.pop("took"), b.pop("took")
    return a == b


class Stack:
    """engine <- tap <- proxy (cache on) and engine <- proxy (cache off)."""

    def __init__(self, **config) -> None:
        config.setdefault("topn", 20)
        config.setdefault("cache_settle", 0.0)
        self.config = SearchConfig(**config)
        self.ranker = CountingRanker()

    async def __aenter__(self) -> "Stack":
        self.engine = await Engine().__aenter__()
        host, port = self.engine.url.rsplit("/", 1)[-1].split(":")
        self.tap = await Tap(host, int(port)).__aenter__()
        self.proxy = await Proxy(upstream=self.tap.url, listen="127.0.0.1:0", ranker=self.ranker,
                                 search=self.config).__aenter__()
        self.plain = await Proxy(upstream=self.engine.url, listen="127.0.0.1:0", ranker=CountingRanker(),
                                 search=SearchConfig(topn=self.config.topn, window_cache=False)).__aenter__()
        self.http = aiohttp.ClientSession()
        await _load(self.http, self.engine.url)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.close()
        for part in (self.plain, self.proxy, self.tap, self.engine):
            await part.__aexit__(None, None, None)

    @property
    def cache(self):
        return self.proxy.search_service.window_cache


def test_pages_two_and_three_come_from_the_window_with_no_engine_or_model_call():
    async def scenario():
        async with Stack() as s:
            header, page1 = await _search(s.http, s.proxy.url, 0, 5)
            assert header == "applied"
            engine_calls, model_calls = s.tap.requests, s.ranker.calls
            assert (engine_calls, model_calls) == (1, 1)
            for offset in (5, 10):
                header, cached = await _search(s.http, s.proxy.url, offset, 5)
                assert header == "applied; cached"
                _, uncached = await _search(s.http, s.plain.url, offset, 5)
                assert _same_page(cached, uncached)
                assert len(cached["hits"]["hits"]) == 5
            assert (s.tap.requests, s.ranker.calls) == (engine_calls, model_calls)
            seen = [h["_id"] for p in (page1,) for h in p["hits"]["hits"]]
            assert len(seen) == 5
            stats = s.proxy.status.document()["search"]["window_cache"]
            assert (stats["hits"], stats["stores"], stats["entries"]) == (2, 1, 1)
            # The metrics count the same, read through the exposition.
            async with s.http.get(s.proxy.url + "/_selproxy/metrics") as r:
                assert r.status == 200
                exposition = await r.text()
            samples = {sample.name: sample.value
                       for family in text_string_to_metric_families(exposition)
                       for sample in family.samples if not sample.labels}
            assert samples["selproxy_window_cache_hits_total"] == 2
            assert samples["selproxy_window_cache_stores_total"] == 1
            assert samples["selproxy_window_cache_entries"] == 1

            # A page that ends past the hits the window holds goes to the engine,
            # and one past the window is the engine's own page, as before.
            header, _ = await _search(s.http, s.proxy.url, 18, 5)
            assert header == "applied" and s.tap.requests == engine_calls + 1
            header, _ = await _search(s.http, s.proxy.url, 20, 5)
            assert header == "skipped; reason=past_window" and s.tap.requests == engine_calls + 2

            # Another query, another window: a miss.
            other = {"query": {"match": {"title": "orbit"}}}
            header, _ = await _search(s.http, s.proxy.url, 5, 5, body=other)
            assert header == "applied" and s.tap.requests == engine_calls + 3
            # The same search asking for the first page again refreshes the window.
            header, _ = await _search(s.http, s.proxy.url, 0, 5)
            assert header == "applied" and s.tap.requests == engine_calls + 4
    run(scenario())


def test_a_bulk_through_the_proxy_drops_the_window_and_a_direct_write_waits_for_the_ttl():
    async def scenario():
        async with Stack() as s:
            await _search(s.http, s.proxy.url, 0, 5)
            header, before = await _search(s.http, s.proxy.url, 5, 5)
            assert header == "applied; cached"

            # A write that bypasses the proxy is not seen: the page stays cached.
            async with s.http.post(s.engine.url + "/books/_doc/direct?refresh=true",
                                   json={"title": "rocket"}) as r:
                assert r.status in (200, 201)
            header, stale = await _search(s.http, s.proxy.url, 5, 5)
            assert header == "applied; cached" and stale == before

            # A _bulk through the proxy drops it.
            lines = json.dumps({"index": {"_index": "books", "_id": "new"}}) + "\n" + json.dumps(
                {"title": "rocket"}) + "\n"
            async with s.http.post(s.proxy.url + "/_bulk?refresh=true", data=lines,
                                   headers={"Content-Type": "application/x-ndjson"}) as r:
                assert r.status == 200 and not (await r.json())["errors"]
            assert s.cache.stats()["write_notices"] == 2   # the head, then the end of the exchange
            engine_calls = s.tap.requests
            header, after = await _search(s.http, s.proxy.url, 5, 5)
            assert header == "applied" and s.tap.requests == engine_calls + 1
            _, uncached = await _search(s.http, s.plain.url, 5, 5)
            assert _same_page(after, uncached)
            assert after["hits"]["total"]["value"] == before["hits"]["total"]["value"] + 2
            assert s.cache.stats()["evictions"]["write"] >= 1
    run(scenario())


def test_entries_expire_after_the_ttl():
    async def scenario():
        async with Stack(cache_ttl=0.3) as s:
            await _search(s.http, s.proxy.url, 0, 5)
            header, _ = await _search(s.http, s.proxy.url, 5, 5)
            assert header == "applied; cached"
            await asyncio.sleep(0.5)
            engine_calls = s.tap.requests
            header, _ = await _search(s.http, s.proxy.url, 5, 5)
            assert header == "applied" and s.tap.requests == engine_calls + 1
            assert s.cache.stats()["evictions"] == {"ttl": 1}
    run(scenario())


def test_a_window_begun_within_the_settle_time_of_a_write_is_not_kept():
    async def scenario():
        async with Stack(cache_settle=30.0) as s:
            async with s.http.post(s.proxy.url + "/books/_doc/x?refresh=true", json={"title": "fuel"}) as r:
                assert r.status in (200, 201)
            await _search(s.http, s.proxy.url, 0, 5)
            header, _ = await _search(s.http, s.proxy.url, 5, 5)
            assert header == "applied"
            assert s.cache.stats()["not_stored"] == {"recent_write": 2}
    run(scenario())


def test_the_cache_is_bounded_in_entries_and_bytes():
    async def scenario():
        async with Stack(cache_entries=2) as s:
            for word in ("rocket", "orbit", "fuel"):
                await _search(s.http, s.proxy.url, 0, 5, body={"query": {"match": {"title": word}}})
            stats = s.cache.stats()
            assert stats["entries"] == 2 and stats["evictions"] == {"entries": 1}
            # The oldest went first: rocket's later page is a miss, fuel's a hit.
            header, _ = await _search(s.http, s.proxy.url, 5, 5, body={"query": {"match": {"title": "rocket"}}})
            assert header == "applied"
            header, _ = await _search(s.http, s.proxy.url, 5, 5, body={"query": {"match": {"title": "fuel"}}})
            assert header == "applied; cached"

        async with Stack() as s:
            await _search(s.http, s.proxy.url, 0, 5)
            one = s.cache.stats()["bytes"]
            assert one > 1000
        async with Stack(cache_bytes=int(one * 1.5)) as s:
            await _search(s.http, s.proxy.url, 0, 5)
            await _search(s.http, s.proxy.url, 0, 5, body={"query": {"match": {"title": "rocket thrust"}}})
            stats = s.cache.stats()
            assert stats["entries"] == 1 and stats["bytes"] <= one * 1.5
            assert stats["evictions"] == {"bytes": 1}
        async with Stack(cache_bytes=one // 2) as s:
            await _search(s.http, s.proxy.url, 0, 5)
            assert s.cache.stats()["not_stored"] == {"too_large": 1}
    run(scenario())


def test_a_window_is_never_served_to_another_principal():
    async def scenario():
        async with Stack() as s:
            alice = {"Authorization": "Basic YWxpY2U6cHc="}
            bob = {"Authorization": "Basic Ym9iOnB3"}
            await _search(s.http, s.proxy.url, 0, 5, headers=alice)
            engine_calls = s.tap.requests
            for headers in (bob, {}, {"Cookie": "session=1"}, {**alice, "es-security-runas-user": "root"}):
                header, _ = await _search(s.http, s.proxy.url, 5, 5, headers=headers)
                assert header == "applied", headers
            assert s.tap.requests == engine_calls + 4
            # Neutral headers (tracing, client metadata) do not split entries.
            header, _ = await _search(s.http, s.proxy.url, 5, 5,
                                      headers={**alice, "traceparent": "00-1-2-01", "User-Agent": "x"})
            assert header == "applied; cached"
    run(scenario())


@pytest.mark.parametrize("mode", ["index", "all"])
def test_a_write_to_one_index_drops_its_windows(mode):
    async def scenario():
        async with Stack(cache_invalidation=mode) as s:
            async with s.http.put(s.engine.url + "/other", json={}) as r:
                assert r.status == 200
            await _search(s.http, s.proxy.url, 0, 5)
            async with s.http.post(s.proxy.url + "/other/_doc/1", json={"title": "x"}) as r:
                assert r.status in (200, 201)
            header, _ = await _search(s.http, s.proxy.url, 5, 5)
            assert header == ("applied; cached" if mode == "index" else "applied")
            async with s.http.delete(s.proxy.url + "/books/_doc/d1") as r:
                assert r.status == 200
            header, _ = await _search(s.http, s.proxy.url, 5, 5)
            assert header == "applied"
    run(scenario())


def test_a_write_through_one_worker_drops_the_windows_of_all():
    import http.client
    import urllib.parse

    from support.engine import engine_in_thread
    from support.proxy import ProxyProcess

    def post(conn, target, body, ctype="application/json"):
        conn.request("POST", target, body=body, headers={"Content-Type": ctype})
        response = conn.getresponse()
        data = response.read()
        assert response.status in (200, 201), data
        return response.headers.get("X-Selproxy-Rerank"), data

    def page(conn, offset, n):
        # A query of its own per connection: a window of its own, in the
        # worker that connection reached.
        query = {"query": {"match": {"title": f"rocket note {n}"}}}
        return post(conn, "/books/_search", json.dumps({**query, "from": offset, "size": 5}))[0]

    with engine_in_thread() as url:
        docs = "".join(json.dumps({"index": {"_index": "books", "_id": f"d{k}"}}) + "\n" + json.dumps(d) + "\n"
                       for k, d in enumerate(DOCS))
        engine = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(engine.hostname, engine.port, timeout=30)
        post(conn, "/_bulk?refresh=true", docs, "application/x-ndjson")
        conn.close()
        args = ["--upstream", url, "--ranker", "bm25", "--workers", "2", "--cache-settle", "0", "--topn", "20"]
        with ProxyProcess(args) as proxy:
            proxy.wait_for_workers(2)
            where = urllib.parse.urlsplit(proxy.url)
            conns = [http.client.HTTPConnection(where.hostname, where.port, timeout=30) for _ in range(12)]
            pids = set()
            for n, c in enumerate(conns):
                assert page(c, 0, n) == "applied"
                assert page(c, 5, n) == "applied; cached"
                c.request("GET", "/_selproxy/status")
                pids.add(json.loads(c.getresponse().read())["pid"])
            assert len(pids) == 2, "the connections all reached one worker"
            writer = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
            post(writer, "/books/_doc/new?refresh=true", json.dumps({"title": "rocket"}))
            for n, c in enumerate(conns):
                assert page(c, 5, n) == "applied", n
                c.close()
