"""The remote ranker at scale, against real loopback rerank servers.

The servers speak TEI's ``/rerank`` (and enforce its default limit of 32
texts a call, answering 422 beyond it as TEI does), Elasticsearch's
``_inference/rerank/<id>`` and NVIDIA NIM's ``/v1/ranking``.  Each can be
scripted to answer the next calls with an error (429, 503, 500) and records
the bodies and trace headers it got.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from support.aio import run  # noqa: E402

from selproxy.rankers.remote import RemoteRanker, RemoteRankerError  # noqa: E402

TEI_LIMIT = 32
QUERY = "red apple"
WINDOW = [f"document {k} about {'red ' * (k % 3)}apples and pears" for k in range(50)]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def score(query: str, text: str) -> float:
    """A deterministic score, distinct for (nearly) every text."""
    return float(sum(map(ord, text)) % 997) + 1000.0 * len(set(query.split()) & set(text.split()))


EXPECTED = [score(QUERY, d) for d in WINDOW]


class RerankServer:
    def __init__(self) -> None:
        self.bodies: List[Any] = []
        self.traces: List[Tuple[Optional[str], Optional[str]]] = []
        #: Answers for the next calls, before normal service: (status, headers).
        self.script: List[Tuple[int, Dict[str, str]]] = []
        #: Every call answers this status (a failing endpoint).
        self.fail_with = 0
        self.delay = 0.0
        self.url = ""
        self._runner: Any = None

    async def _enter(self, request: web.Request) -> Tuple[Any, Optional[web.Response]]:
        body = await request.json()
        self.bodies.append(body)
        self.traces.append((request.headers.get("traceparent"), request.headers.get("tracestate")))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with:
            return body, web.json_response({"error": "down"}, status=self.fail_with)
        if self.script:
            status, headers = self.script.pop(0)
            return body, web.json_response({"error": "busy"}, status=status, headers=headers)
        return body, None

    async def tei(self, request: web.Request) -> web.Response:
        body, refused = await self._enter(request)
        if refused is not None:
            return refused
        texts = body["texts"]
        if len(texts) > TEI_LIMIT:
            return web.json_response({"error": f"batch size {len(texts)} > maximum allowed batch size "
                                               f"{TEI_LIMIT}", "error_type": "Validation"}, status=422)
        ranked = sorted(((score(body["query"], t), i) for i, t in enumerate(texts)), reverse=True)
        return web.json_response([{"index": i, "score": s} for s, i in ranked])

    async def elasticsearch(self, request: web.Request) -> web.Response:
        body, refused = await self._enter(request)
        if refused is not None:
            return refused
        ranked = sorted(((score(body["query"], t), i) for i, t in enumerate(body["input"])), reverse=True)
        return web.json_response({"rerank": [{"index": i, "relevance_score": s} for s, i in ranked]})

    async def nim(self, request: web.Request) -> web.Response:
        body, refused = await self._enter(request)
        if refused is not None:
            return refused
        query = body["query"]["text"]
        ranked = sorted(((score(query, p["text"]), i) for i, p in enumerate(body["passages"])), reverse=True)
        return web.json_response({"rankings": [{"index": i, "logit": s} for s, i in ranked]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/rerank", self.tei)
        app.router.add_post("/_inference/rerank/{inference_id}", self.elasticsearch)
        app.router.add_post("/v1/ranking", self.nim)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        await self._runner.cleanup()


async def servers(count: int) -> List[RerankServer]:
    started = [RerankServer() for _ in range(count)]
    for server in started:
        await server.start()
    return started


def test_a_50_hit_window_is_split_within_the_tei_limit_and_merged() -> None:
    async def test() -> None:
        [server] = await servers(1)
        ranker = RemoteRanker(server.url + "/rerank", api="tei")
        unsplit = RemoteRanker(server.url + "/rerank", api="tei", max_batch=0)
        try:
            assert ranker.max_batch == TEI_LIMIT
            assert await ranker.rank(QUERY, WINDOW) == EXPECTED
            assert sorted(len(b["texts"]) for b in server.bodies) == [18, 32]
            # The merge keeps window order: each call saw its own slice.
            assert sorted(server.bodies, key=len)[0]["texts"] in (WINDOW[:32], WINDOW[32:])
            assert {b["texts"][0] for b in server.bodies} == {WINDOW[0], WINDOW[32]}
            assert all(b["raw_scores"] is True and b["truncate"] is True for b in server.bodies)
            # The same window in one call is what a stock TEI refuses.
            with pytest.raises(RemoteRankerError, match="422.*maximum allowed batch size 32"):
                await unsplit.rank(QUERY, WINDOW)
        finally:
            await ranker.aclose()
            await unsplit.aclose()
            await server.stop()

    run(test(), 30)


def test_two_endpoints_one_failing_every_search_is_still_reranked() -> None:
    async def test() -> None:
        good, bad = await servers(2)
        bad.fail_with = 500
        # The failing endpoint comes first, so the first call goes to it.
        ranker = RemoteRanker([bad.url + "/rerank", good.url + "/rerank"], api="tei", cooldown=60)
        try:
            for _ in range(5):
                assert await ranker.rank(QUERY, WINDOW) == EXPECTED
            results = await ranker.batch_rank([(QUERY, WINDOW)] * 5)
            assert results == [EXPECTED] * 5
        finally:
            await ranker.aclose()
            await good.stop()
            await bad.stop()
        # The failing endpoint got the first search's two calls, then was skipped.
        assert len(bad.bodies) in (1, 2), bad.bodies
        assert len(good.bodies) == 20
        stats = ranker.stats()
        assert stats["failovers"] == len(bad.bodies)
        assert stats["endpoints"][0]["cooling_down"] and not stats["endpoints"][1]["cooling_down"]

    run(test(), 30)


def test_a_refused_connection_fails_over_and_healthy_endpoints_share_the_calls() -> None:
    async def test() -> None:
        first, second = await servers(2)
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        dead = f"http://127.0.0.1:{probe.sockets[0].getsockname()[1]}/rerank"
        probe.close()
        await probe.wait_closed()
        first.delay = second.delay = 0.05
        ranker = RemoteRanker([dead, first.url + "/rerank", second.url + "/rerank"], api="tei",
                              timeout=10)
        try:
            results = await ranker.batch_rank([(QUERY, WINDOW)] * 4)
        finally:
            await ranker.aclose()
            await first.stop()
            await second.stop()
        assert results == [EXPECTED] * 4
        # Eight calls in flight at once, spread by pending count: half each.
        assert len(first.bodies) == len(second.bodies) == 4

    run(test(), 30)


def test_429_and_503_are_retried_once_within_the_deadline() -> None:
    async def test() -> None:
        [server] = await servers(1)
        ranker = RemoteRanker(server.url + "/rerank", api="tei", timeout=3, max_batch=50)
        try:
            server.script = [(429, {"Retry-After": "0.2"})]
            started = time.monotonic()
            assert await ranker.rank(QUERY, WINDOW[:10]) == EXPECTED[:10]
            assert time.monotonic() - started >= 0.2  # Retry-After was honoured
            server.script = [(503, {})]
            assert await ranker.rank(QUERY, WINDOW[:10]) == EXPECTED[:10]
            assert len(server.bodies) == 4
            # Retried once only.
            server.script = [(429, {}), (429, {})]
            with pytest.raises(RemoteRankerError, match="answered 429"):
                await ranker.rank(QUERY, WINDOW[:10])
            assert len(server.bodies) == 6
            # A Retry-After past the deadline fails at once, without a second call.
            server.script = [(503, {"Retry-After": "30"})]
            started = time.monotonic()
            with pytest.raises(RemoteRankerError, match="answered 503"):
                await ranker.rank(QUERY, WINDOW[:10])
            assert time.monotonic() - started < 2.5
            assert len(server.bodies) == 7
        finally:
            await ranker.aclose()
            await server.stop()
        assert ranker.stats()["retries"] == 3

    run(test(), 30)


def test_elasticsearch_inference_and_nim_shapes() -> None:
    async def test() -> None:
        [server] = await servers(1)
        es = RemoteRanker(server.url + "/_inference/rerank/my-reranker", api="elasticsearch")
        nim = RemoteRanker(server.url + "/v1/ranking", api="nim", model="nvidia/llama-3.2-nv-rerankqa-1b-v2")
        try:
            assert es.max_batch == 0 and nim.max_batch == 512
            assert await es.rank(QUERY, WINDOW[:3]) == EXPECTED[:3]
            assert await nim.rank(QUERY, WINDOW[:3]) == EXPECTED[:3]
        finally:
            await es.aclose()
            await nim.aclose()
            await server.stop()
        assert server.bodies[0] == {"query": QUERY, "input": WINDOW[:3]}
        assert server.bodies[1] == {"model": "nvidia/llama-3.2-nv-rerankqa-1b-v2", "query": {"text": QUERY},
                                    "passages": [{"text": t} for t in WINDOW[:3]], "truncate": "END"}

    run(test(), 30)


def test_cohere_v2_needs_a_model() -> None:
    with pytest.raises(ValueError, match=r"/v2/rerank, which needs a model: give --ranker-option model="):
        RemoteRanker("https://api.cohere.com/v2/rerank")
    RemoteRanker("https://api.cohere.com/v2/rerank", model="rerank-v3.5")
    RemoteRanker("http://127.0.0.1:7997/rerank")  # Infinity, Jina-like: the model is optional


def test_the_search_traceparent_reaches_the_rerank_call() -> None:
    from selproxy import Proxy
    from selproxy.search import SearchConfig, SearchService
    from support.search_doubles import FakeEngine

    docs = [(f"d{k}", {"title": f"red apple number {k}"}) for k in range(8)]

    async def test() -> None:
        [server] = await servers(1)
        engine = FakeEngine({"fruit": docs})
        host, port = await engine.serve()
        ranker = RemoteRanker(server.url + "/rerank", api="tei")
        service = SearchService(ranker, SearchConfig(topn=8))
        proxy = Proxy(upstream=f"http://{host}:{port}", listen="127.0.0.1:0", routes=service.routes())
        await proxy.start()
        query = {"query": {"match": {"title": "apple"}}}
        try:
            async with aiohttp.ClientSession() as http:
                for headers in ({"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"},
                                {"traceparent": "00-not-a-trace-01"}, {}):
                    async with http.post(proxy.url + "/fruit/_search", json=query, headers=headers) as r:
                        assert r.headers["X-Selproxy-Rerank"] == "applied"
                        await r.read()
        finally:
            await proxy.stop(grace=1.0)
            await engine.close()
            await service.aclose()
            await server.stop()
        assert server.traces == [(TRACEPARENT, "congo=t61rcWkgMzE"), (None, None), (None, None)]

    run(test(), 30)


def test_status_shows_the_endpoints() -> None:
    ranker = RemoteRanker(["http://user:pw@10.0.0.1:8080/rerank?key=1", "http://10.0.0.2:8080/rerank"],
                          api="tei")
    stats = ranker.stats()
    assert json.dumps(stats)  # JSON-ready for the status page
    assert [e["url"] for e in stats["endpoints"]] == ["http://***@10.0.0.1:8080/rerank?***",
                                                      "http://10.0.0.2:8080/rerank"]


def test_the_command_line_names_the_missing_model_and_a_bad_api() -> None:
    import subprocess
    import sys

    base = [sys.executable, "-m", "selproxy", "--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0",
            "--ranker", "remote"]
    done = subprocess.run(base + ["--url", "http://127.0.0.1:9/v2/rerank"], capture_output=True, text=True,
                          timeout=60)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith("selproxy: error: ") and "model=NAME" in last, done.stderr
    done = subprocess.run(base + ["--url", "http://127.0.0.1:9/rerank", "--ranker-option", "api=grpc"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("selproxy: error: ranker 'remote': option api must be "
                                   "Literal['cohere', 'tei', 'elasticsearch', 'nim'], not 'grpc'")
