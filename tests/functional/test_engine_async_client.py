"""The official asyncio client (AsyncElasticsearch on aiohttp) against the engine, in-process."""
from __future__ import annotations

import asyncio

import pytest
from elasticsearch import AsyncElasticsearch, BadRequestError, ConflictError, NotFoundError
from elasticsearch.helpers import async_bulk

from support.aio import run
from support.engine import running_engine


def ids(resp) -> list:
    return [hit["_id"] for hit in resp["hits"]["hits"]]


def test_async_client_full_round() -> None:
    async def scenario() -> None:
        async with running_engine() as engine:
            es = AsyncElasticsearch(engine.url, request_timeout=20)
            try:
                assert (await es.info())["tagline"] == "You Know, for Search"
                await es.indices.create(index="songs", mappings={"properties": {
                    "title": {"type": "text"}, "genre": {"type": "keyword"}, "year": {"type": "short"}}})
                assert await es.indices.exists(index="songs")
                ok, errors = await async_bulk(es, [
                    {"_index": "songs", "_id": "1", "title": "Blue moon rising", "genre": "jazz", "year": 1961},
                    {"_index": "songs", "_id": "2", "title": "Moon river", "genre": "pop", "year": 1961},
                    {"_index": "songs", "_id": "3", "title": "River deep mountain high", "genre": "pop",
                     "year": 1966},
                ])
                assert ok == 3 and not errors
                resp = await es.bulk(operations=[{"create": {"_index": "songs", "_id": "1"}}, {"title": "dup"},
                                                 {"index": {"_index": "songs", "_id": "4"}}, {"year": "x"}])
                assert resp["errors"] and [next(iter(i.values()))["status"] for i in resp["items"]] == [409, 400]
                assert (await es.get(index="songs", id="2"))["_source"]["title"] == "Moon river"
                await es.update(index="songs", id="2", doc={"genre": "soul"})
                assert ids(await es.search(index="songs", query={"term": {"genre": "soul"}})) == ["2"]
                hits = await es.search(index="songs", query={"match": {"title": "moon"}}, sort=[{"year": "asc"}],
                                       source=["year"])
                assert ids(hits) == ["1", "2"] and hits["hits"]["hits"][0]["_source"] == {"year": 1961}
                qs = await es.search(index="songs", query={"query_string": {"query": "river AND year:[1960 TO 1962]"}})
                assert ids(qs) == ["2"]
                sqs = await es.search(index="songs", query={"simple_query_string": {"query": "moon -blue"}})
                assert ids(sqs) == ["2"]
                page = await es.search(index="songs", sort=[{"year": "desc"}], size=1, from_=1)
                assert page["hits"]["total"]["value"] == 3 and len(ids(page)) == 1
                assert (await es.count(index="songs", query={"range": {"year": {"lt": 1965}}}))["count"] == 2
                multi = await es.msearch(searches=[{"index": "songs"}, {"query": {"ids": {"values": ["3"]}}},
                                                   {"index": "nope"}, {}])
                assert ids(multi["responses"][0]) == ["3"] and multi["responses"][1]["status"] == 404
                with pytest.raises(NotFoundError):
                    await es.search(index="nope")
                with pytest.raises(ConflictError):
                    await es.create(index="songs", id="3", document={"title": "again"})
                with pytest.raises(BadRequestError):
                    await es.indices.create(index="songs")
                with pytest.raises(BadRequestError):
                    await es.search(index="songs", query={"match_phrase_prefix": {"title": "mo"}})
                # Concurrent searches and writes on one engine.
                writes = [es.index(index="songs", id=f"w{i}", document={"title": f"extra moon {i}", "year": 2000})
                          for i in range(20)]
                reads = [es.search(index="songs", query={"match": {"title": "moon"}}) for _ in range(20)]
                results = await asyncio.gather(*writes, *reads)
                assert all(r["result"] == "created" for r in results[:20])
                assert (await es.count(index="songs", q="moon"))["count"] == 22
                assert (await es.indices.delete(index="songs"))["acknowledged"]
            finally:
                await es.close()

    run(scenario(), timeout=60)
