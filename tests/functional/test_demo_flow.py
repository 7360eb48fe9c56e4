"""The demo flow over loopback: load passages, compare both orders, print curl commands."""
import contextlib
import io
import types

from selproxy.demo import app
from selproxy.demo.corpus import Passage
from support.aio import run
from support.fake_search import FakeElasticsearch, ReversingProxy, serve

PASSAGES = [
    Passage("open#0", "open", "open file and return a stream read lines line by line", "function"),
    Passage("io.IOBase#2", "io.IOBase", "iterate over a file object to read it line by line", "class"),
    Passage("subprocess.run#0", "subprocess.run", "run a command and capture its output", "function"),
]


def test_demo_flow_with_stand_ins(monkeypatch):
    # The real corpus is covered by the unit tests; keep this one small and fast.
    monkeypatch.setattr(app, "build_passages", lambda: list(PASSAGES))
    out = io.StringIO()

    @contextlib.asynccontextmanager
    async def proxy_for(engine_url):
        async with serve(ReversingProxy(engine_url).app) as url:
            yield types.SimpleNamespace(url=url)

    async def scenario():
        async with serve(FakeElasticsearch().app) as engine_url:
            return await app.run_demo(
                contextlib.nullcontext(engine_url), proxy_for,
                queries=["read a file line by line"], serve_forever=False, out=out,
            )

    (comparison,) = run(scenario(), timeout=30)
    assert comparison.engine_titles[:2] == ["open", "io.IOBase (part 3)"]  # most query words, then load order
    assert comparison.reranked_titles == comparison.engine_titles[::-1]
    assert comparison.rank_ms == 4.25 and comparison.rerank == "applied"
    text = out.getvalue()
    assert "indexed 3 passages into 'pydocs'" in text
    assert "engine order" in text and "selproxy reranked" in text
    assert "curl -s http://127.0.0.1:" in text and "/pydocs/_search" in text
