"""A failing model never fails a search, nor the proxy, nor its shutdown.

Over real loopback sockets: rankers that raise ``SystemExit``,
``KeyboardInterrupt``, ``CancelledError`` or a bare ``BaseException``, sync
and async, or that swallow their cancellation, leave the proxy serving, each
search answered in the engine's order with ``fallback; reason=...``.  And a
``python -m selproxy`` whose sync ranker never returns still exits within
its ``--shutdown-grace`` after SIGTERM.
"""
import asyncio
import json
import os
import signal
import textwrap
import threading
import time
import urllib.request

import pytest
from support.aio import run
from support.engine import engine_in_thread
from support.proxy import ProxyProcess
from support.sync_http import post_json

from selproxy import Proxy
from selproxy.search import SearchConfig, SearchService
from support.search_doubles import FakeEngine

aiohttp = pytest.importorskip("aiohttp")

DOCS = [(f"d{k:02d}", {"title": f"rocket {'engine ' * (k % 3)}number {k}"}) for k in range(8)]
SEARCH = {"query": {"match": {"title": "rocket engine"}}, "size": 5}


def raising(kind, is_async):
    if is_async:
        class Ranker:
            async def rank(self, query, docs):
                await asyncio.sleep(0)
                raise kind("from the ranker")
    else:
        class Ranker:
            def rank(self, query, docs):
                raise kind("from the ranker")
    return Ranker()


async def search_through(ranker, config, requests):
    """Start a fake engine and a proxy around ``ranker``; send ``requests``
    (``"search"``, ``"msearch"``, ``"status"`` or ``"passthrough"``) one after
    another; return (status, rerank header, ids, seconds) for each, and the
    engine's own order."""
    engine = FakeEngine({"books": list(DOCS)})
    host, port = await engine.serve()
    service = SearchService(ranker, config)
    proxy = Proxy(upstream=f"http://{host}:{port}", listen="127.0.0.1:0", routes=service.routes())
    await proxy.start()
    answers = []
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://{host}:{port}/books/_search", json=SEARCH) as r:
                direct = [h["_id"] for h in (await r.json())["hits"]["hits"]]
            for kind in requests:
                started = time.perf_counter()
                if kind == "msearch":
                    lines = "".join(json.dumps(x) + "\n" for x in ({}, SEARCH, {}, SEARCH))
                    async with http.post(proxy.url + "/books/_msearch", data=lines,
                                         headers={"Content-Type": "application/x-ndjson"}) as r:
                        doc = await r.json()
                        ids = [[h["_id"] for h in item["hits"]["hits"]] for item in doc["responses"]]
                elif kind == "search":
                    async with http.post(proxy.url + "/books/_search", json=SEARCH) as r:
                        ids = [h["_id"] for h in (await r.json())["hits"]["hits"]]
                else:
                    path = "/_selproxy/status" if kind == "status" else "/books/_count"
                    async with http.get(proxy.url + path) as r:
                        await r.read()
                        ids = None
                answers.append((r.status, r.headers.get("X-Selproxy-Rerank"), ids,
                                time.perf_counter() - started))
    finally:
        await proxy.stop(grace=1.0)
        await engine.close()
    return answers, direct


@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt, asyncio.CancelledError, BaseException],
                         ids=lambda k: k.__name__)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_ranker_raising_anything_leaves_the_proxy_serving(kind, is_async):
    answers, direct = run(search_through(
        raising(kind, is_async), SearchConfig(topn=6, rank_deadline=5.0),
        ["search", "msearch", "status", "passthrough", "search"]), timeout=30)
    search, msearch, status, passthrough, again = answers
    assert search[:3] == (200, "fallback; reason=error", direct)
    assert msearch[:3] == (200, "fallback; reason=error, fallback; reason=error", [direct, direct])
    assert status[0] == 200 and passthrough[0] == 200
    assert again[:3] == (200, "fallback; reason=error", direct)


def test_the_deadline_bounds_a_search_whose_ranker_swallows_cancellation():
    stop = threading.Event()

    class Stubborn:
        async def rank(self, query, docs):
            while not stop.is_set():
                try:
                    await asyncio.sleep(0.02)
                except asyncio.CancelledError:
                    pass  # the defect under test
            return [0.0] * len(docs)

    try:
        answers, direct = run(search_through(
            Stubborn(), SearchConfig(topn=6, rank_deadline=0.3), ["search", "search"]), timeout=30)
    finally:
        stop.set()
    for status, rerank, ids, seconds in answers:
        assert (status, ids) == (200, direct)
        assert rerank in ("fallback; reason=deadline", "fallback; reason=overloaded")
        assert seconds < 3.0  # 0.3 s deadline; the defect held each for as long as the ranker liked
    assert answers[0][1] == "fallback; reason=deadline"


STUCK_RANKERS = textwrap.dedent('''
    import asyncio
    import threading


    class Stuck:
        """Never returns, as a model wedged in native code would not."""

        def rank(self, query, docs):
            threading.Event().wait()


    class Stubborn:
        """Swallows every cancellation, and never returns."""

        async def rank(self, query, docs):
            while True:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    pass
''')


@pytest.mark.parametrize("ranker", ["Stuck", "Stubborn"])
def test_a_stuck_ranker_does_not_keep_the_proxy_alive_after_sigterm(tmp_path, monkeypatch, ranker):
    (tmp_path / "stuck_ranker.py").write_text(STUCK_RANKERS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    grace = 1.0
    with engine_in_thread() as engine_url:
        post_json(f"{engine_url}/docs/_doc/1?refresh=true", {"body": "wings and lift"})
        args = ["--upstream", engine_url, "--ranker", f"stuck_ranker:{ranker}", "--rank-deadline", "0.2",
                "--shutdown-grace", str(grace)]
        with ProxyProcess(args) as proxy:
            headers, found = post_json(f"{proxy.url}/docs/_search", {"query": {"match": {"body": "wings"}}})
            assert headers["X-Selproxy-Rerank"] == "fallback; reason=deadline"
            assert [hit["_id"] for hit in found["hits"]["hits"]] == ["1"]
            # The ranker's thread, or task, is now stuck for good.
            started = time.monotonic()
            proxy.signal(signal.SIGTERM)
            code = proxy.wait(timeout=30)
            took = time.monotonic() - started
    assert code == 0, "".join(proxy.lines)
    # Drained at once (nothing in flight), so far less than the grace;
    # before, the process never exited: its ranker thread was joined, its
    # ranker task awaited after it was cancelled.
    assert took < grace + 2.0, (took, "".join(proxy.lines))


def test_a_search_stuck_in_its_ranker_at_sigterm_is_cut_at_the_grace(tmp_path, monkeypatch):
    (tmp_path / "stuck_ranker.py").write_text(STUCK_RANKERS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    grace = 1.0
    with engine_in_thread() as engine_url:
        post_json(f"{engine_url}/docs/_doc/1?refresh=true", {"body": "wings and lift"})
        # The rank deadline is far past the grace: the grace must win.
        args = ["--upstream", engine_url, "--ranker", "stuck_ranker:Stuck", "--rank-deadline", "60",
                "--shutdown-grace", str(grace)]
        with ProxyProcess(args) as proxy:
            outcome = []

            def search():
                try:
                    outcome.append(post_json(f"{proxy.url}/docs/_search", {"query": {"match": {"body": "wings"}}},
                                             timeout=30))
                except Exception as exc:  # cut by the shutdown: expected
                    outcome.append(exc)

            client = threading.Thread(target=search, daemon=True)
            client.start()
            for _ in range(500):  # until the search waits on the ranker
                with urllib.request.urlopen(f"{proxy.url}/_selproxy/status", timeout=10) as res:
                    if json.loads(res.read())["search"]["pending_ranks"] == 1:
                        break
                time.sleep(0.02)
            else:
                pytest.fail("the search never reached the ranker")
            started = time.monotonic()
            proxy.signal(signal.SIGTERM)
            code = proxy.wait(timeout=30)
            took = time.monotonic() - started
            client.join(30)
    assert code == 0, "".join(proxy.lines)
    assert grace * 0.9 <= took < grace + 2.0, (took, "".join(proxy.lines))
    assert outcome and isinstance(outcome[0], Exception)


# -- the same for any claimed route's handler ---------------------------------

@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt, asyncio.CancelledError, BaseException],
                         ids=lambda k: k.__name__)
def test_a_handler_raising_anything_gets_a_500_and_the_proxy_serves_on(kind):
    from selproxy import Route
    from support.proxy import in_process
    from support.rawhttp import RawClient
    from support.upstream import RecordingUpstream, echo

    async def handler(request, upstream):
        await asyncio.sleep(0)
        raise kind("internal detail password=hunter2")

    async def main():
        async with RecordingUpstream(echo) as up:
            async with in_process(up.url, routes=[Route(("GET",), "/boom", handler)]) as proxy:
                client = await RawClient.connect(proxy.url)
                failed = await asyncio.wait_for(client.request("GET", "/boom"), 10)
                after = await asyncio.wait_for(client.request("GET", "/next"), 10)
                client.close()
                return failed, after

    failed, after = run(main(), 30)
    assert failed.status == 500
    assert json.loads(failed.body)["error"]["reason"] == f"the handler failed: {kind.__name__}"
    assert after.status == 200 and after.header("x-target") == "/next"
