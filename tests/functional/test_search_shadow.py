"""Shadow mode over real loopback sockets, against the embedded engine: the
client gets the engine's bytes, and the rerank runs after the answer."""
import asyncio
import json
import threading
import urllib.request
from typing import List, Sequence

import aiohttp

from selproxy import Proxy
from selproxy.engine import Engine
from selproxy.search import SearchConfig, SearchRoute
from support.aio import run
from support.engine import engine_in_thread
from support.proxy import ProxyProcess
from support.tap import Tap

DOCS = [{"title": "rocket " + "engine " * (k % 5) + "thrust " * (k % 3) + f"note {k}"} for k in range(30)]
QUERY = {"query": {"match": {"title": "rocket engine thrust"}}, "size": 4}


class GatedRanker:
    """Shorter documents first, once the test opens the gate."""

    name = "gated"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()
        self.calls = 0

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        self.calls += 1
        self.started.set()
        assert self.gate.wait(30)
        return [-float(len(doc)) for doc in docs]


def _bulk(docs, index="books") -> str:
    return "".join(json.dumps({"index": {"_index": index, "_id": f"d{k}"}}) + "\n" + json.dumps(d) + "\n"
                   for k, d in enumerate(docs))


async def _load(http: aiohttp.ClientSession, url: str) -> None:
    async with http.put(url + "/books", json={"mappings": {"properties": {"title": {"type": "text"}}}}) as r:
        assert r.status == 200
    async with http.post(url + "/_bulk?refresh=true", data=_bulk(DOCS),
                         headers={"Content-Type": "application/x-ndjson"}) as r:
        assert r.status == 200 and not (await r.json())["errors"]


def test_shadow_answers_with_the_engine_bytes_and_records_both_orders_after():
    async def scenario():
        ranker = GatedRanker()
        async with Engine() as engine, aiohttp.ClientSession(auto_decompress=False) as http:
            await _load(http, engine.url)
            host, port = engine.url.rsplit("/", 1)[-1].split(":")
            async with Tap(host, int(port)) as tap:
                config = SearchConfig(topn=12, shadow=True, rank_deadline=30.0, shadow_record_queries=True)
                async with Proxy(upstream=tap.url, listen="127.0.0.1:0", ranker=ranker, search=config) as proxy:
                    heard = []
                    proxy.search_service.shadow.listeners.append(heard.append)
                    async with http.post(proxy.url + "/books/_search?selproxy.topn=12", json=QUERY,
                                         headers={"Accept-Encoding": "gzip"}) as r:
                        assert r.status == 200
                        assert r.headers["X-Selproxy-Rerank"] == "skipped; reason=shadow"
                        body = await r.read()
                    # The client has its answer while the ranker has not ranked:
                    # its latency is the engine's.
                    assert await asyncio.get_running_loop().run_in_executor(None, ranker.started.wait, 30)
                    assert not heard
                    # Exactly the bytes the engine sent for the request as the client
                    # sent it (the first request through the tap), not re-encoded.
                    assert tap.targets[0] == "/books/_search"
                    assert "Content-Encoding" not in r.headers
                    first_answer = bytes(tap.received).split(b"\r\n\r\n", 1)[1]
                    assert first_answer.startswith(body)
                    async with http.post(engine.url + "/books/_search", json=QUERY) as direct:
                        expected = await direct.json()
                    got = json.loads(body)
                    assert got.pop("took") >= 0 and expected.pop("took") >= 0
                    assert got == expected and len(got["hits"]["hits"]) == 4
                    # The background rerank asked for the window live mode asks for.
                    assert tap.targets[1] == "/books/_search"
                    ranker.gate.set()
                    await proxy.search_service.shadow.wait_idle(30)
                    assert len(heard) == 1
                    record = heard[0]
                    async with http.post(engine.url + "/books/_search", json={**QUERY, "size": 12}) as direct:
                        window = (await direct.json())["hits"]["hits"]
                    assert record.engine_ids == [h["_id"] for h in window]
                    ranked = sorted(window, key=lambda h: len(h["_source"]["title"]))
                    assert record.ranked_ids == [h["_id"] for h in ranked]
                    assert record.client_page == [h["_id"] for h in expected["hits"]["hits"]]
                    assert record.outcome == "applied"
                    assert len(record.text_hashes) == 12 and len(set(record.text_hashes)) == 12
                    assert record.ranker_scores is not None and len(record.ranker_scores) == 12
                    status = proxy.status.document()["search"]
                    shadow = status["shadow"]
                    assert (shadow["searches"], shadow["recorded"], shadow["dropped"]) == (1, 1, 0)
                    recent = shadow["recent"][0]
                    assert recent["engine_ids"] == record.engine_ids
                    assert recent["query"] == record.query == "rocket engine thrust"
                    assert recent["page_changed"] == (record.client_page != record.ranked_page)
                    assert status["skipped"] == {"shadow": 1}
    run(scenario())


def test_shadow_reranks_are_bounded_and_dropped_when_the_queue_is_full():
    async def scenario():
        ranker = GatedRanker()
        async with Engine() as engine, aiohttp.ClientSession() as http:
            await _load(http, engine.url)
            config = SearchConfig(topn=8, shadow=True, rank_deadline=30.0, shadow_concurrency=1,
                                  shadow_queue=2, shadow_ring=1)
            async with Proxy(upstream=engine.url, listen="127.0.0.1:0", ranker=ranker, search=config) as proxy:
                for _ in range(4):
                    async with http.post(proxy.url + "/books/_search", json=QUERY) as r:
                        assert r.headers["X-Selproxy-Rerank"] == "skipped; reason=shadow"
                shadow = proxy.search_service.shadow
                assert shadow.dropped == 2 and shadow.stats()["running"] == 2
                ranker.gate.set()
                await shadow.wait_idle(30)
                stats = shadow.stats()
                assert (stats["recorded"], stats["dropped"], len(stats["recent"])) == (2, 2, 1)
                assert "query" not in stats["recent"][0] and len(stats["recent"][0]["query_sha1"]) == 16
    run(scenario())


def test_shadow_per_route_and_from_the_command_line():
    async def scenario():
        ranker = GatedRanker()
        ranker.gate.set()
        async with Engine() as engine, aiohttp.ClientSession() as http:
            await _load(http, engine.url)
            routes = (SearchRoute("/{index}/_search", shadow=True), SearchRoute("/_search"))
            config = SearchConfig(topn=8, routes=routes, rank_deadline=30.0)
            async with Proxy(upstream=engine.url, listen="127.0.0.1:0", ranker=ranker, search=config) as proxy:
                async with http.post(proxy.url + "/books/_search", json=QUERY) as r:
                    assert r.headers["X-Selproxy-Rerank"] == "skipped; reason=shadow"
                async with http.post(proxy.url + "/_search", json=QUERY) as r:
                    assert r.headers["X-Selproxy-Rerank"] == "applied"
                await proxy.search_service.shadow.wait_idle(30)
                assert proxy.search_service.shadow.recorded == 1
    run(scenario())

    with engine_in_thread() as url:
        request = urllib.request.Request(url + "/_bulk?refresh=true", data=_bulk(DOCS).encode(), method="POST",
                                         headers={"Content-Type": "application/x-ndjson"})
        urllib.request.urlopen(request, timeout=30).read()
        with ProxyProcess(["--upstream", url, "--ranker", "bm25", "--shadow", "--topn", "8"]) as proxy:
            request = urllib.request.Request(proxy.url + "/books/_search", data=json.dumps(QUERY).encode(),
                                             method="POST", headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as r:
                assert r.headers["X-Selproxy-Rerank"] == "skipped; reason=shadow"
            for _ in range(200):
                with urllib.request.urlopen(proxy.url + "/_selproxy/status", timeout=30) as r:
                    shadow = json.loads(r.read())["search"]["shadow"]
                if shadow["recorded"]:
                    break
                threading.Event().wait(0.05)
            assert shadow["recorded"] == 1 and shadow["enabled"] is True
