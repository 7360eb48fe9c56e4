"""The official client walks the engine and reads many documents at once: ``_mget``, point in
time with ``search_after``, scroll (``helpers.scan``), and a stored-only vector index."""
from __future__ import annotations

import base64
import struct
import time
import uuid
import warnings
from typing import Iterator, List

import pytest
from elasticsearch import (ApiError, AsyncElasticsearch, BadRequestError, Elasticsearch, ElasticsearchWarning,
                           NotFoundError, helpers)

from support.aio import run
from support.engine import engine_in_thread
from selproxy.engine import Engine

N_DOCS = 2500


@pytest.fixture(scope="module")
def es() -> Iterator[Elasticsearch]:
    with engine_in_thread() as url:
        client = Elasticsearch(url, request_timeout=30)
        yield client
        client.close()


@pytest.fixture(scope="module")
def walk(es: Elasticsearch) -> str:
    es.indices.create(index="walk", mappings={"properties": {"n": {"type": "integer"}, "t": {"type": "text"},
                                                             "g": {"type": "keyword"}}})
    ok, errors = helpers.bulk(es, ({"_index": "walk", "_id": f"d{i}", "n": i, "t": f"word{i % 7} common",
                                    "g": f"g{i % 10}"} for i in range(N_DOCS)), chunk_size=500)
    assert ok == N_DOCS and not errors
    return "walk"


def fresh() -> str:
    return "w-" + uuid.uuid4().hex[:10]


def fill(es: Elasticsearch, index: str, count: int) -> None:
    ok, errors = helpers.bulk(es, ({"_index": index, "_id": str(i), "n": i} for i in range(count)))
    assert ok == count and not errors


def pit_walk(es: Elasticsearch, pit_id: str, size: int, during=None, **search) -> List[dict]:
    """Every hit of a point-in-time walk in pages of ``size``; ``during(page_number)`` runs between pages."""
    hits: List[dict] = []
    after = None
    for page in range(10_000):
        extra = {"search_after": after} if after is not None else {}
        resp = es.search(pit={"id": pit_id, "keep_alive": "1m"}, size=size, **search, **extra)
        assert resp["pit_id"] == pit_id
        batch = resp["hits"]["hits"]
        if not batch:
            return hits
        hits += batch
        after = batch[-1]["sort"]
        if during is not None:
            during(page)
    raise AssertionError("the walk did not end")


# -- _mget --------------------------------------------------------------------------------------------

def test_mget_found_missing_and_missing_index(es: Elasticsearch, walk: str) -> None:
    resp = es.mget(docs=[{"_index": walk, "_id": "d3"}, {"_index": walk, "_id": "absent"},
                         {"_index": "no-such-index", "_id": "1"}, {"_index": walk, "_id": "d4", "_source": ["n"]}])
    docs = resp["docs"]
    assert docs[0] == {"_index": walk, "_id": "d3", "_version": 1, "_seq_no": 3, "_primary_term": 1, "found": True,
                       "_source": {"n": 3, "t": "word3 common", "g": "g3"}}
    assert docs[1] == {"_index": walk, "_id": "absent", "found": False}
    assert docs[2]["_index"] == "no-such-index" and docs[2]["_id"] == "1"
    assert docs[2]["error"]["type"] == "index_not_found_exception"
    assert docs[2]["error"]["root_cause"][0]["reason"] == "no such index [no-such-index]"
    assert docs[3]["_source"] == {"n": 4}


def test_mget_ids_form_with_source_parameters(es: Elasticsearch, walk: str) -> None:
    resp = es.mget(index=walk, ids=["d10", "d11", "nope"], source_includes=["n", "g"], source_excludes=["g"])
    assert [d.get("_source") for d in resp["docs"]] == [{"n": 10}, {"n": 11}, None]
    assert [d["found"] for d in resp["docs"]] == [True, True, False]
    resp = es.mget(index=walk, ids=["d1"], source=False)
    assert "_source" not in resp["docs"][0] and resp["docs"][0]["found"] is True
    # The index in the path is a default that a document may override.
    resp = es.mget(index="elsewhere", docs=[{"_id": "d2", "_index": walk}, {"_id": "d2"}])
    assert resp["docs"][0]["found"] is True and resp["docs"][1]["error"]["type"] == "index_not_found_exception"


def test_mget_rejects_empty_and_index_less_requests(es: Elasticsearch) -> None:
    with pytest.raises(BadRequestError) as caught:
        es.mget(docs=[])
    assert caught.value.body["error"]["reason"] == "Validation Failed: 1: no documents to get;"
    with pytest.raises(BadRequestError) as caught:
        es.mget(ids=["1"])
    assert caught.value.body["error"]["type"] == "action_request_validation_exception"


# -- point in time --------------------------------------------------------------------------------------

def test_pit_walk_sees_every_document_once(es: Elasticsearch, walk: str) -> None:
    pit = es.open_point_in_time(index=walk, keep_alive="1m")
    assert pit["_shards"] == {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
    hits = pit_walk(es, pit["id"], 500, sort=["_shard_doc"], track_total_hits=False)
    assert len(hits) == N_DOCS
    assert len({h["_id"] for h in hits}) == N_DOCS
    keys = [h["sort"][0] for h in hits]
    assert keys == sorted(keys) and len(set(keys)) == N_DOCS
    closed = es.close_point_in_time(id=pit["id"])
    assert closed.body == {"succeeded": True, "num_freed": 1}
    with pytest.raises(NotFoundError) as caught:
        es.close_point_in_time(id=pit["id"])
    assert caught.value.body == {"succeeded": True, "num_freed": 0}


def test_pit_with_a_field_sort_gets_the_shard_doc_tiebreaker(es: Elasticsearch, walk: str) -> None:
    pit = es.open_point_in_time(index=walk, keep_alive="1m")
    try:
        query = {"term": {"g": "g3"}}  # 250 documents
        hits = pit_walk(es, pit["id"], 40, sort=[{"n": "desc"}], query=query)
        assert [h["_source"]["n"] for h in hits] == list(range(N_DOCS - 7, -1, -10))
        assert all(len(h["sort"]) == 2 for h in hits)  # [n, _shard_doc]
        first = es.search(pit={"id": pit["id"]}, size=3, sort=[{"n": "desc"}], query=query)
        assert first["hits"]["total"] == {"value": 250, "relation": "eq"}
    finally:
        es.close_point_in_time(id=pit["id"])


def test_pit_without_a_sort_pages_by_score_then_shard_doc(es: Elasticsearch, walk: str) -> None:
    pit = es.open_point_in_time(index=walk, keep_alive="1m")
    try:
        query = {"bool": {"should": [{"match": {"t": "word2"}}, {"match": {"t": "common"}}]}}
        hits = pit_walk(es, pit["id"], 300, query=query)
        assert len(hits) == N_DOCS == len({h["_id"] for h in hits})
        assert all(len(h["sort"]) == 2 and h["sort"][0] == h["_score"] for h in hits)  # [_score, _shard_doc]
        word2 = {f"d{i}" for i in range(2, N_DOCS, 7)}
        assert {h["_id"] for h in hits[:len(word2)]} == word2  # the better-scored documents come first
        assert [h["sort"] for h in hits] == sorted((h["sort"] for h in hits), key=lambda s: (-s[0], s[1]))
    finally:
        es.close_point_in_time(id=pit["id"])


def test_pit_sees_the_documents_present_when_it_opened(es: Elasticsearch) -> None:
    index = fresh()
    fill(es, index, 100)
    pit = es.open_point_in_time(index=index, keep_alive="1m")

    def change(page: int) -> None:
        if page == 0:  # after the first page of 0..9: documents below and above the walk's position change
            es.index(index=index, id="new-1", document={"n": 1000}, refresh=True)
            es.index(index=index, id="new-2", document={"n": 1001}, refresh=True)
            es.delete(index=index, id="50")
            es.index(index=index, id="60", document={"n": 60, "changed": True})
            es.index(index=index, id="5", document={"n": 5, "changed": True})

    try:
        hits = pit_walk(es, pit["id"], 10, during=change, sort=["_shard_doc"])
        # The total is the one counted when the walk began, as over Elasticsearch's frozen view.
        again = es.search(pit={"id": pit["id"]}, size=1, sort=["_shard_doc"])
        assert again["hits"]["total"] == {"value": 100, "relation": "eq"}
        assert es.count(index=index)["count"] == 101
    finally:
        es.close_point_in_time(id=pit["id"])
    seen = [h["_id"] for h in hits]
    assert seen == [str(i) for i in range(100) if i != 50]   # nothing added, the deleted one gone, no repeats
    assert hits[60 - 1]["_source"] == {"n": 60, "changed": True}  # read after its update
    assert hits[5]["_source"] == {"n": 5}                         # read before its update


def test_pit_search_rules(es: Elasticsearch, walk: str) -> None:
    pit = es.open_point_in_time(index=walk, keep_alive="1m")
    try:
        with pytest.raises(BadRequestError) as caught:
            es.search(index=walk, pit={"id": pit["id"]})
        assert "[indices] cannot be used with point in time" in caught.value.body["error"]["reason"]
        with pytest.raises(BadRequestError) as caught:
            es.search(index=walk, sort=["_shard_doc"])
        assert caught.value.body["error"]["reason"] == "[_shard_doc] sort field cannot be used without [point in time]"
        resp = es.msearch(searches=[{}, {"pit": {"id": pit["id"]}}])
        assert resp["responses"][0]["error"]["reason"].startswith("[pit] in _msearch is not supported")
        with pytest.raises(BadRequestError) as caught:
            es.open_point_in_time(index=walk, keep_alive="2d")
        assert caught.value.body["error"]["reason"].startswith("Keep alive for request (2d) is too large.")
    finally:
        es.close_point_in_time(id=pit["id"])
    with pytest.raises(NotFoundError):
        es.open_point_in_time(index="no-such-index", keep_alive="1m")


def test_expired_pit_and_scroll_are_search_context_missing(es: Elasticsearch, walk: str) -> None:
    pit = es.open_point_in_time(index=walk, keep_alive="1ms")
    first = es.search(index=walk, scroll="1ms", size=10)
    time.sleep(0.05)
    for attempt in (lambda: es.search(pit={"id": pit["id"]}, size=1),
                    lambda: es.scroll(scroll_id=first["_scroll_id"], scroll="1m")):
        with pytest.raises(NotFoundError) as caught:
            attempt()
        error = caught.value.body["error"]
        assert caught.value.meta.status == 404
        assert error["type"] == "search_phase_execution_exception"
        assert error["root_cause"][0]["type"] == "search_context_missing_exception"
        assert error["root_cause"][0]["reason"].startswith("No search context found for id [")


def test_deleting_the_index_ends_the_pit(es: Elasticsearch) -> None:
    index = fresh()
    fill(es, index, 5)
    pit = es.open_point_in_time(index=index, keep_alive="1m")
    es.indices.delete(index=index)
    fill(es, index, 5)  # a new index of the same name is not the one the PIT saw
    with pytest.raises(NotFoundError) as caught:
        es.search(pit={"id": pit["id"]})
    assert caught.value.body["error"]["root_cause"][0]["type"] == "search_context_missing_exception"
    es.close_point_in_time(id=pit["id"])


# -- scroll -------------------------------------------------------------------------------------------

def test_helpers_scan_reads_every_document(es: Elasticsearch, walk: str) -> None:
    docs = list(helpers.scan(es, index=walk, size=300))
    assert len(docs) == N_DOCS and len({d["_id"] for d in docs}) == N_DOCS
    # preserve_order keeps the query's own order (score, then document order), across pages.
    ordered = list(helpers.scan(es, index=walk, size=100, preserve_order=True,
                                query={"query": {"match": {"t": "word4"}}, "sort": [{"n": "asc"}]}))
    assert [d["_source"]["n"] for d in ordered] == list(range(4, N_DOCS, 7))


def test_scroll_by_hand(es: Elasticsearch, walk: str) -> None:
    resp = es.search(index=walk, scroll="1m", size=1000, query={"match": {"t": "common"}})
    scroll_id = resp["_scroll_id"]
    total = resp["hits"]["total"]
    assert total == {"value": N_DOCS, "relation": "eq"}  # a scroll counts every hit
    seen = [h["_id"] for h in resp["hits"]["hits"]]
    while True:
        resp = es.scroll(scroll_id=scroll_id, scroll="1m")
        assert resp["_scroll_id"] == scroll_id and resp["hits"]["total"] == total
        if not resp["hits"]["hits"]:
            break
        seen += [h["_id"] for h in resp["hits"]["hits"]]
    assert len(seen) == N_DOCS == len(set(seen))
    assert es.scroll(scroll_id=scroll_id)["hits"]["hits"] == []  # exhausted stays exhausted
    assert es.clear_scroll(scroll_id=scroll_id).body == {"succeeded": True, "num_freed": 1}
    with pytest.raises(NotFoundError):
        es.clear_scroll(scroll_id=scroll_id)


def test_scroll_request_rules(es: Elasticsearch, walk: str) -> None:
    for kwargs, reason in (({"from_": 5}, "using [from] is not allowed in a scroll context"),
                           ({"size": 0}, "[size] cannot be [0] in a scroll context"),
                           ({"track_total_hits": False}, "disabling [track_total_hits] is not allowed")):
        with pytest.raises(BadRequestError) as caught:
            es.search(index=walk, scroll="1m", **kwargs)
        assert reason in caught.value.body["error"]["reason"]
    with pytest.raises(BadRequestError) as caught:
        es.search(index=walk, scroll="1 minute")
    assert caught.value.body["error"]["type"] == "parse_exception"


def test_open_contexts_are_capped() -> None:
    async def scenario() -> None:
        async with Engine(max_open_contexts=3) as engine:
            es = AsyncElasticsearch(engine.url, request_timeout=20)
            try:
                await es.bulk(operations=[line for i in range(10) for line in (
                    {"index": {"_index": "c", "_id": str(i)}}, {"n": i})])
                scrolls = [await es.search(index="c", scroll="1m", size=2) for _ in range(3)]
                with pytest.raises(ApiError) as caught:
                    await es.search(index="c", scroll="1m", size=2)
                assert caught.value.meta.status == 429
                assert caught.value.body["error"]["type"] == "too_many_scroll_contexts_exception"
                pits = [await es.open_point_in_time(index="c", keep_alive="1m") for _ in range(3)]
                with pytest.raises(ApiError) as caught:
                    await es.open_point_in_time(index="c", keep_alive="1m")
                assert caught.value.meta.status == 429
                # Closing one frees its place; the others still work.
                await es.clear_scroll(scroll_id=scrolls[0]["_scroll_id"])
                await es.close_point_in_time(id=pits[0]["id"])
                await es.search(index="c", scroll="1m", size=2)
                await es.open_point_in_time(index="c", keep_alive="1m")
                page = await es.scroll(scroll_id=scrolls[1]["_scroll_id"], scroll="1m")
                assert [h["_id"] for h in page["hits"]["hits"]] == ["2", "3"]
                freed = await es.clear_scroll(scroll_id="_all")
                assert freed.body == {"succeeded": True, "num_freed": 3}
                # helpers.async_scan clears its scroll at the end: nothing stays open.
                from elasticsearch.helpers import async_scan
                assert len([d async for d in async_scan(es, index="c", size=3)]) == 10
                with pytest.raises(NotFoundError):
                    await es.clear_scroll(scroll_id="_all")
            finally:
                await es.close()

    run(scenario())


# -- a stored-only vector index -------------------------------------------------------------------------

VECTOR_MAPPING = {"dynamic": False, "properties": {"v": {"type": "binary"}, "m": {"type": "keyword", "index": False}}}


def vector(i: int) -> str:
    return base64.b64encode(struct.pack("<8e", *[i / (k + 1) for k in range(8)])).decode()


def test_vector_sidecar_index(es: Elasticsearch, walk: str) -> None:
    name = ".selproxy-vectors-minilm"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a hidden dot-index is created without a deprecation warning
        es.indices.create(index=name, mappings=VECTOR_MAPPING, settings={"index": {"hidden": True}})
    ok, errors = helpers.bulk(es, ({"_index": name, "_id": f"walk/d{i}/abc", "v": vector(i), "m": "minilm",
                                    "text": "common words"} for i in range(50)))
    assert ok == 50 and not errors
    assert es.indices.get_mapping(index=name).body == {name: {"mappings": {
        "dynamic": "false", "properties": VECTOR_MAPPING["properties"]}}}
    resp = es.mget(index=name, ids=[f"walk/d{i}/abc" for i in range(50)] + ["walk/x/abc"], source_includes=["v"])
    docs = resp["docs"]
    assert [d["_source"]["v"] for d in docs[:50]] == [vector(i) for i in range(50)]
    assert docs[50] == {"_index": name, "_id": "walk/x/abc", "found": False}
    # Nothing in it is searchable as text, and wildcards that do not ask for it leave it out.
    assert es.search(index=name, q="common")["hits"]["total"]["value"] == 0
    assert es.search(index=name, query={"match": {"v": vector(1)}})["hits"]["total"]["value"] == 0
    assert es.count(index="*", q="common")["count"] == N_DOCS
    assert es.count(index=".selproxy-*")["count"] == 50
    assert es.count(index="*minilm")["count"] == 0
    assert es.count(index="*minilm", expand_wildcards="all")["count"] == 50
    assert es.indices.get(index=name)[name]["settings"]["index"]["hidden"] == "true"


def test_plain_dot_index_is_created_with_elasticsearchs_warning(es: Elasticsearch) -> None:
    with pytest.warns(ElasticsearchWarning, match=r"index name \[.plain\] starts with a dot"):
        es.indices.create(index=".plain")
    es.index(index=".plain", id="1", document={"t": "visible"}, refresh=True)
    assert es.search(index=".plain", q="visible")["hits"]["total"]["value"] == 1
    es.indices.delete(index=".plain")
