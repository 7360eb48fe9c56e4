"""RemoteRanker against a real loopback ``/rerank`` server.

The server speaks both dialects: ``/v2/rerank`` as Cohere, Jina and Infinity
do, and ``/rerank`` as Hugging Face TEI does.  It scores a document by how
many query words it contains, answers best first (as the services do), checks
the auth header, and counts the calls in flight.
"""
from __future__ import annotations

import asyncio
from typing import Any, Dict, List

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from support.aio import run  # noqa: E402

from selproxy.rankers.remote import RemoteRanker, RemoteRankerError  # noqa: E402

QUERY = "red apple pie"
DOCS = ["a green pear", "apple pie with red apples", "red car", "pie"]
EXPECTED = [0.0, 3.0, 1.0, 1.0]


def overlap(query: str, doc: str) -> float:
    return float(len(set(query.split()) & set(doc.split())))


class RerankServer:
    def __init__(self) -> None:
        self.bodies: List[Dict[str, Any]] = []
        self.auth: List[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self.url = ""
        self._runner: Any = None

    async def _enter(self, request: web.Request) -> Dict[str, Any]:
        body = await request.json()
        self.bodies.append(body)
        self.auth.append(request.headers.get("Authorization", ""))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return body

    async def cohere(self, request: web.Request) -> web.Response:
        body = await self._enter(request)
        scored = sorted(((overlap(body["query"], d), i) for i, d in enumerate(body["documents"])),
                        reverse=True)[:body.get("top_n") or None]
        return web.json_response({"id": "x", "results": [
            {"index": i, "relevance_score": s} for s, i in scored], "meta": {}})

    async def tei(self, request: web.Request) -> web.Response:
        body = await self._enter(request)
        scored = sorted(((overlap(body["query"], d), i) for i, d in enumerate(body["texts"])),
                        reverse=True)
        return web.json_response([{"index": i, "score": s} for s, i in scored])

    async def broken(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": "model not loaded"}, status=503)

    async def partial(self, request: web.Request) -> web.Response:
        await request.read()
        results = [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}]
        return web.json_response({"results": results})

    async def garbage(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"results": [{"index": 99, "relevance_score": 1.0}]})

    async def echo(self, request: web.Request) -> web.Response:
        # A careless service: its error page quotes the request, key included,
        # and goes on for pages.
        body = await request.text()
        page = (f"unauthorized: {request.headers.get('Authorization')} for {request.path_qs}\n"
                + body + "\n" + "padding " * 5000 + request.headers.get("Authorization", ""))
        return web.Response(text=page, status=401)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/echo", self.echo)
        app.router.add_post("/v2/rerank", self.cohere)
        app.router.add_post("/rerank", self.tei)
        app.router.add_post("/broken", self.broken)
        app.router.add_post("/partial", self.partial)
        app.router.add_post("/garbage", self.garbage)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        await self._runner.cleanup()


async def with_server(test: Any) -> None:
    server = RerankServer()
    await server.start()
    try:
        await test(server)
    finally:
        await server.stop()


def test_cohere_dialect_scores_every_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELPROXY_TEST_RERANK_KEY", "s3cret")

    async def test(server: RerankServer) -> None:
        ranker = RemoteRanker(server.url + "/v2/rerank", model="rerank-v3.5",
                              auth_env="SELPROXY_TEST_RERANK_KEY")
        try:
            assert await ranker.rank(QUERY, DOCS) == EXPECTED
            assert await ranker.rank(QUERY, []) == []
        finally:
            await ranker.aclose()
        assert server.bodies == [{"query": QUERY, "documents": DOCS, "top_n": 4,
                                  "return_documents": False, "model": "rerank-v3.5"}]
        assert server.auth == ["Bearer s3cret"]

    run(with_server(test), 20)


def test_tei_dialect() -> None:
    async def test(server: RerankServer) -> None:
        ranker = RemoteRanker(server.url + "/rerank", api="tei", max_chars=8)
        try:
            scores = await ranker.rank(QUERY, DOCS)
        finally:
            await ranker.aclose()
        assert server.bodies[0]["texts"] == [d[:8] for d in DOCS]
        assert server.bodies[0]["truncate"] is True and "documents" not in server.bodies[0]
        assert server.auth == [""]
        assert scores == [overlap(QUERY, d[:8]) for d in DOCS]

    run(with_server(test), 20)


def test_batch_rank_and_the_concurrency_limit() -> None:
    async def test(server: RerankServer) -> None:
        server.delay = 0.05
        ranker = RemoteRanker(server.url + "/v2/rerank", model="rerank-v3.5", concurrency=2, timeout=5)
        try:
            results = await ranker.batch_rank([(QUERY, DOCS)] * 6 + [("car", ["red car"])])
        finally:
            await ranker.aclose()
        assert results == [EXPECTED] * 6 + [[1.0]]
        assert server.max_in_flight == 2

    run(with_server(test), 20)


def test_timeout_errors_and_missing_results() -> None:
    async def test(server: RerankServer) -> None:
        slow = RemoteRanker(server.url + "/v2/rerank", model="rerank-v3.5", timeout=0.1)
        broken = RemoteRanker(server.url + "/broken")
        partial = RemoteRanker(server.url + "/partial")
        garbage = RemoteRanker(server.url + "/garbage")
        try:
            server.delay = 1.0
            with pytest.raises(asyncio.TimeoutError):
                await slow.rank(QUERY, DOCS)
            server.delay = 0.0
            with pytest.raises(RemoteRankerError, match="503"):
                await broken.rank(QUERY, DOCS)
            # Documents the service leaves out rank below the rest.
            assert await partial.rank(QUERY, ["a", "b", "c"]) == [0.1, 0.9, pytest.approx(-0.9)]
            with pytest.raises(RemoteRankerError):
                await garbage.rank(QUERY, ["a"])
        finally:
            for ranker in (slow, broken, partial, garbage):
                await ranker.aclose()

    run(with_server(test), 20)


def test_unreachable_service_fails_fast() -> None:
    async def test() -> None:
        # A port nothing listens on: bind one, then close it.
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        ranker = RemoteRanker(f"http://127.0.0.1:{port}/rerank", timeout=2)
        try:
            with pytest.raises(aiohttp.ClientConnectionError):
                await ranker.rank(QUERY, DOCS)
        finally:
            await ranker.aclose()

    run(test(), 20)


def test_configuration_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SELPROXY_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ValueError, match="SELPROXY_TEST_MISSING_KEY"):
        RemoteRanker("http://127.0.0.1:1/rerank", auth_env="SELPROXY_TEST_MISSING_KEY")
    with pytest.raises(ValueError):
        RemoteRanker("http://127.0.0.1:1/rerank", api="grpc")
    with pytest.raises(ValueError):
        RemoteRanker("http://127.0.0.1:1/rerank", concurrency=0)


def test_an_error_answer_is_logged_bounded_and_without_the_key(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from selproxy.rankers.adapter import RankerAdapter, RankFailed, RankJob

    secret = "sk-live-0123456789abcdef"
    monkeypatch.setenv("SELPROXY_TEST_RERANK_KEY", secret)

    async def test(server: RerankServer) -> None:
        host = server.url.split("://", 1)[1]
        keyed = RemoteRanker(f"{server.url}/echo?api_key=q-secret-42&region=eu",
                             auth_env="SELPROXY_TEST_RERANK_KEY")
        # Credentials in the URL: aiohttp sends them as Basic auth, which the
        # service echoes too.
        userinfo = RemoteRanker(f"http://user:hunter2@{host}/echo")
        adapter = RankerAdapter(keyed)
        try:
            with pytest.raises(RemoteRankerError) as raised:
                await keyed.rank(QUERY, DOCS)
            with pytest.raises(RemoteRankerError) as basic:
                await userinfo.rank(QUERY, DOCS)
            with caplog.at_level("WARNING", logger="selproxy.rankers"):
                with pytest.raises(RankFailed) as failed:
                    await adapter.rank([RankJob(QUERY, DOCS)], 5.0)
        finally:
            for ranker in (keyed, userinfo):
                await ranker.aclose()
            adapter.close()
        message = str(raised.value)
        assert message.startswith(f"{server.url}/echo?*** answered 401: "
                                  "unauthorized: Bearer *** for /echo?api_key=***&region=eu ")
        assert str(basic.value).startswith(f"http://***@{host}/echo answered 401: unauthorized: Basic ***")
        assert len(message) < 400 and len(str(basic.value)) < 400
        assert failed.value.reason == "error"
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert "answered 401" in logged and len(logged) < 600
        for leaked in (secret, "hunter2", "dXNlcjpodW50ZXIy", "q-secret-42", "padding " * 40):
            for text in (message, str(basic.value), logged):
                assert leaked not in text, text

    run(with_server(test), 20)
