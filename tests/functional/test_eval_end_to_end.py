"""``selproxy eval load`` then ``selproxy eval run`` on a small judged set, over loopback.

The upstream is the embedded engine when ``support.engine`` can start it, and
otherwise a small aiohttp server that answers ``_bulk``/``_search`` in
Elasticsearch's documented shapes.  The proxy is selproxy itself (search
service with a ranker that reverses the window) when it can be imported, and
otherwise a stand-in that does the same with the headers selproxy sets; either
way the reranked scores can be worked out by hand whatever engine is behind it.
"""
import asyncio
import contextlib
import json
import re

import pytest
from aiohttp import web

from selproxy.evaluation import cli
from support.aio import run
from support.fake_search import FakeElasticsearch, ReversingProxy, serve

# Documents of equal length, so any tf-based lexical score (BM25, FTS5, the
# stand-in's term count) orders them by how often the query term occurs.
DOCS = {
    "d1": "alpha alpha alpha filler filler",
    "d2": "alpha alpha filler filler filler",
    "d3": "alpha filler filler filler filler",
    "d4": "beta beta filler filler filler",
    "d5": "beta filler filler filler filler",
    "d9": "delta filler filler filler filler",
    "d6": "gamma filler filler filler filler",
}
TOPICS = "<top><num>1</num><title>alpha</title></top>\n<top><num>2</num><title>beta</title></top>\n" \
    "<top><num>3</num><title>gamma</title></top>\n"
QRELS = "1 0 d3 2\n1 0 d1 1\n1 0 d2 0\n2 0 d4 1\n2 0 d9 1\n3 0 d6 0\n"
LOG2_3 = 1.584962500721156
# k=2, window=3. Engine: [d1 d2 d3] and [d4 d5]; reranked: [d3 d2 d1] and [d5 d4].
IDEAL_1 = 2 + 1 / LOG2_3
IDEAL_2 = 1 + 1 / LOG2_3
EXPECTED = {
    "engine": {"ndcg": (1 / IDEAL_1 + 1 / IDEAL_2) / 2, "mrr": 1.0, "recall": 0.75},
    "reversed": {"ndcg": (2 / IDEAL_1 + (1 / LOG2_3) / IDEAL_2) / 2, "mrr": 0.75, "recall": 0.75},
}


@contextlib.asynccontextmanager
async def engine_url():
    try:
        from support.engine import running_engine  # the embedded engine, when it can be imported
    except ImportError:
        async with serve(FakeElasticsearch().app) as url:
            yield url
    else:
        async with running_engine() as running:
            yield running.url


class ReversingRanker:
    """Scores the window in reverse engine order."""

    def rank(self, query, docs):
        return [float(position) for position in range(len(docs))]


@contextlib.asynccontextmanager
async def reranking_proxy(upstream):
    try:
        from selproxy.search.config import SearchConfig
        from selproxy.search.service import SearchService
        from selproxy.server import Proxy
    except ImportError:
        async with serve(ReversingProxy(upstream).app) as url:
            yield url
        return
    service = SearchService(ReversingRanker(), SearchConfig(topn=3))
    try:
        async with Proxy(upstream=upstream, listen="127.0.0.1:0", routes=service.routes()) as proxy:
            yield proxy.url
    finally:
        service.close()


@pytest.fixture
def judged_set(tmp_path):
    collection = tmp_path / "docs.jsonl"
    collection.write_text("".join(
        json.dumps({"_id": doc_id, "title": f"document {doc_id}", "text": text}) + "\n"
        for doc_id, text in DOCS.items()
    ))
    (tmp_path / "topics.xml").write_text(TOPICS)
    (tmp_path / "qrels.txt").write_text(QRELS)
    return tmp_path


def test_load_then_evaluate_engine_against_reranked(judged_set, capsys):
    async def scenario():
        loop = asyncio.get_running_loop()
        async with engine_url() as upstream, reranking_proxy(upstream) as proxy:
            # The CLI runs its own event loop, so it gets a thread of its own.
            load_status = await loop.run_in_executor(None, cli.main, [
                "load", "--upstream", upstream, "--index", "judged", "--batch-size", "3",
                str(judged_set / "docs.jsonl"),
            ])
            load_output = capsys.readouterr().out
            run_status = await loop.run_in_executor(None, cli.main, [
                "run", "--upstream", upstream, "--proxy", f"reversed={proxy}", "--index", "judged",
                "--topics", str(judged_set / "topics.xml"), "--qrels", str(judged_set / "qrels.txt"),
                "--k", "2", "--window", "3", "--warmup", "1", "--json",
            ])
            return load_status, load_output, run_status, capsys.readouterr().out

    load_status, load_output, run_status, run_output = run(scenario(), timeout=60)
    assert load_status == 0, load_output
    assert re.search(r"indexed 7 documents into 'judged'.*0 rejected", load_output)
    assert run_status == 0
    report = json.loads(run_output)
    assert (report["topics"], report["judged"], report["k"], report["window"]) == (3, 2, 2, 3)
    runs = {summary["label"]: summary for summary in report["runs"]}
    for label, expected in EXPECTED.items():
        for metric, value in expected.items():
            assert runs[label][metric] == pytest.approx(value), (label, metric)
        assert runs[label]["queries"] == 2
        assert runs[label]["latency_p50_ms"] > 0
    assert runs["engine"]["rank_p50_ms"] is None and runs["engine"]["rerank"] == {}
    assert runs["reversed"]["rank_p50_ms"] >= 0
    assert runs["reversed"]["rerank"] == {"applied": 2}


def test_table_output_and_unreachable_upstream(judged_set, capsys):
    async def scenario():
        loop = asyncio.get_running_loop()
        async with engine_url() as upstream:
            await loop.run_in_executor(None, cli.main, [
                "load", "--upstream", upstream, "--index", "t", str(judged_set / "docs.jsonl")])
            capsys.readouterr()
            status = await loop.run_in_executor(None, cli.main, [
                "run", "--upstream", upstream, "--index", "t", "--topics", str(judged_set / "topics.xml"),
                "--qrels", str(judged_set / "qrels.txt"), "--k", "2", "--window", "3",
            ])
            return status, capsys.readouterr().out

    status, output = run(scenario(), timeout=60)
    assert status == 0
    assert "| run | nDCG@2 |" in output and "| engine | 0.4966 |" in output

    # Nothing listens on a port we just released.
    async def closed_port():
        async with serve(web.Application()) as url:
            return url

    url = run(closed_port(), timeout=10)
    status = cli.main(["run", "--upstream", url, "--index", "t", "--topics", str(judged_set / "topics.xml"),
                       "--qrels", str(judged_set / "qrels.txt"), "--timeout", "5"])
    assert status == 1
    assert "selproxy eval:" in capsys.readouterr().err
