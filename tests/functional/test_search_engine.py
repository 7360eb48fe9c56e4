"""The whole search path against the embedded engine (no Elasticsearch can be
installed here): the official client, unmodified, sync and async, indexes,
searches and msearches through selproxy, and a deterministic ranker proves
that the answer is the engine's window reordered, in the engine's format."""
import asyncio
import threading
from typing import Sequence

from elasticsearch import AsyncElasticsearch, Elasticsearch, helpers

import selproxy
from selproxy.engine import Engine
from support.aio import run

DOCS = [
    "how to read a file line by line", "reading files with open and readline",
    "the file system hierarchy", "line endings on windows and unix",
    "iterators read lines lazily from a file object", "a file is a sequence of bytes",
    "write a line to a file", "the line discipline of terminals",
]


class LengthRanker:
    """Deterministic: shorter documents first."""

    def rank(self, query: str, docs: Sequence[str]) -> Sequence[float]:
        return [-float(len(doc)) for doc in docs]


def _serve(ready, stop, urls):
    async def main():
        async with Engine() as engine:
            async with selproxy.Proxy(upstream=engine.url, listen="127.0.0.1:0",
                                      ranker=LengthRanker()) as proxy:
                urls.extend([engine.url, proxy.url])
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.02)
    run(main(), timeout=120)


def test_official_clients_through_selproxy_against_the_embedded_engine():
    ready, stop, urls = threading.Event(), threading.Event(), []
    server = threading.Thread(target=_serve, args=(ready, stop, urls), daemon=True)
    server.start()
    try:
        assert ready.wait(30), "engine and proxy did not start"
        engine_url, proxy_url = urls
        es = Elasticsearch(proxy_url, request_timeout=30)
        direct = Elasticsearch(engine_url, request_timeout=30)

        # Index management and bulk writes pass through untouched.
        es.indices.create(index="docs", mappings={"properties": {"body": {"type": "text"}}})
        ok, errors = helpers.bulk(es, ({"_index": "docs", "_id": str(i), "body": t}
                                       for i, t in enumerate(DOCS)))
        assert ok == len(DOCS) and not errors
        es.indices.refresh(index="docs")
        assert es.count(index="docs")["count"] == len(DOCS)

        query = {"match": {"body": "read file line"}}
        engine_hits = direct.search(index="docs", query=query, size=50)["hits"]
        reranked = es.search(index="docs", query=query, size=3)
        assert reranked.meta.headers["X-Selproxy-Rerank"] == "applied"
        window = sorted(engine_hits["hits"], key=lambda h: len(h["_source"]["body"]))
        assert [h["_id"] for h in reranked["hits"]["hits"]] == [h["_id"] for h in window[:3]]
        assert reranked["hits"]["total"] == engine_hits["total"]
        assert reranked["hits"]["hits"][0]["_source"] == window[0]["_source"]
        assert reranked["hits"]["max_score"] == reranked["hits"]["hits"][0]["_score"]

        # Page 2 continues page 1 without repeats or gaps.
        page2 = es.search(index="docs", query=query, size=3, from_=3)
        assert [h["_id"] for h in page2["hits"]["hits"]] == [h["_id"] for h in window[3:6]]

        # A sort by a field is not reranked, and says why.
        skipped = es.search(index="docs", query=query, sort=[{"_id": "asc"}], size=2)
        assert skipped.meta.headers["X-Selproxy-Rerank"] == "skipped; reason=sort"

        # msearch: every sub-search reranked.
        multi = es.msearch(searches=[{"index": "docs"}, {"query": query, "size": 2},
                                     {"index": "docs"}, {"query": {"match": {"body": "terminals"}}}])
        first, second = multi["responses"]
        assert [h["_id"] for h in first["hits"]["hits"]] == [h["_id"] for h in window[:2]]
        assert second["hits"]["hits"][0]["_source"]["body"] == "the line discipline of terminals"

        # The async client, unmodified, sees the same.
        async def with_async_client():
            client = AsyncElasticsearch(proxy_url, request_timeout=30)
            try:
                res = await client.search(index="docs", query=query, size=3)
                await client.indices.delete(index="docs")
                return res
            finally:
                await client.close()

        res = asyncio.run(with_async_client())
        assert [h["_id"] for h in res["hits"]["hits"]] == [h["_id"] for h in window[:3]]
        assert not direct.indices.exists(index="docs")
        es.close()
        direct.close()
    finally:
        stop.set()
        server.join(30)
