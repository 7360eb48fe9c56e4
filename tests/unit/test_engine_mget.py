"""``_mget`` without HTTP: parsing, the response shape, and one query per index."""
from __future__ import annotations

import pytest
from support.engine_store import bulk, memory_store

from selproxy.engine.errors import ActionRequestValidation, ElasticsearchParseError, ParsingError
from selproxy.engine.mget import MgetItem, parse_mget, run_mget
from selproxy.engine.store import Store


@pytest.fixture
def store():
    yield from memory_store()


def mget(store: Store, items):
    return store._read_sync(run_mget, (items,))


def test_parse_docs_and_ids_forms() -> None:
    items = parse_mget({"docs": [{"_index": "a", "_id": 1}, {"_id": "2", "_source": False}]}, {}, "dflt")
    assert items == [MgetItem("a", "1", True), MgetItem("dflt", "2", False)]
    assert parse_mget({"ids": ["x", 7]}, {"_source_includes": "v,m"}, "vec") == [
        MgetItem("vec", "x", (["v", "m"], [])), MgetItem("vec", "7", (["v", "m"], []))]
    # A per-document _source wins over the request's parameters.
    items = parse_mget({"docs": [{"_index": "a", "_id": "1", "_source": {"excludes": ["big"]}}]},
                       {"_source": "false"}, None)
    assert items == [MgetItem("a", "1", ([], ["big"]))]
    assert parse_mget({"ids": ["1"]}, {"_source": "false"}, "a") == [MgetItem("a", "1", False)]
    assert parse_mget({"ids": ["1"]}, {"_source_excludes": "v"}, "a") == [MgetItem("a", "1", ([], ["v"]))]


@pytest.mark.parametrize("body, default, message", [
    ({"docs": []}, None, "Validation Failed: 1: no documents to get;"),
    ({"ids": ["1"]}, None, "Validation Failed: 1: index is missing for doc 0;"),
    ({"docs": [{"_index": "a"}, {"_id": "2"}]}, None,
     "Validation Failed: 1: id is missing for doc 0;2: index is missing for doc 1;"),
])
def test_parse_validation_errors(body, default, message) -> None:
    with pytest.raises(ActionRequestValidation) as caught:
        parse_mget(body, {}, default)
    assert caught.value.reason == message and caught.value.status == 400


def test_parse_malformed_bodies() -> None:
    with pytest.raises(ParsingError, match="request body is required"):
        parse_mget(None, {}, "a")
    with pytest.raises(ElasticsearchParseError, match=r"unknown parameter \[query\]"):
        parse_mget({"query": {}}, {}, "a")
    with pytest.raises(ParsingError):
        parse_mget({"docs": ["1"]}, {}, "a")


def test_found_missing_and_missing_index_in_request_order(store: Store) -> None:
    bulk(store, {"index": {"_index": "a", "_id": "1"}}, {"t": "one", "n": 1},
         {"index": {"_index": "a", "_id": "2"}}, {"t": "two", "n": 2})
    bulk(store, {"index": {"_index": "a", "_id": "2"}}, {"t": "two again", "n": 2})
    out = mget(store, [MgetItem("a", "2", True), MgetItem("a", "nope", True), MgetItem("zz", "1", True),
                       MgetItem("a", "1", (["n"], []))])
    missing_index = {"type": "index_not_found_exception", "reason": "no such index [zz]",
                     "resource.type": "index_or_alias", "resource.id": "zz", "index_uuid": "_na_", "index": "zz"}
    assert out == {"docs": [
        {"_index": "a", "_id": "2", "_version": 2, "_seq_no": 2, "_primary_term": 1, "found": True,
         "_source": {"t": "two again", "n": 2}},
        {"_index": "a", "_id": "nope", "found": False},
        {"_index": "zz", "_id": "1", "error": {"root_cause": [missing_index], **missing_index}},
        {"_index": "a", "_id": "1", "_version": 1, "_seq_no": 0, "_primary_term": 1, "found": True,
         "_source": {"n": 1}},
    ]}


def test_fifty_ids_cost_one_query(store: Store) -> None:
    bulk(store, *[line for i in range(80) for line in ({"index": {"_index": "a", "_id": str(i)}}, {"n": i})])
    conn = store._conn()  # the reader runs on this thread in _read_sync, with this connection
    statements = []
    conn.set_trace_callback(statements.append)
    try:
        out = mget(store, [MgetItem("a", str(i), True) for i in range(50)] + [MgetItem("a", "x", True)])
    finally:
        conn.set_trace_callback(None)
    assert [d["_source"]["n"] for d in out["docs"][:50]] == list(range(50))
    assert out["docs"][50]["found"] is False
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 1, statements
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT"


def test_more_ids_than_one_chunk_and_repeated_ids(store: Store) -> None:
    bulk(store, *[line for i in range(1200) for line in ({"index": {"_index": "a", "_id": str(i)}}, {"n": i})])
    wanted = [str(i) for i in range(1200)] + ["5", "5"]
    out = mget(store, [MgetItem("a", i, True) for i in wanted])
    assert [d["_source"]["n"] for d in out["docs"]] == list(range(1200)) + [5, 5]
