"""The store without HTTP: transactions publish index metadata only when they commit."""
from __future__ import annotations

import pytest
from support.engine_store import bulk, memory_store

from selproxy.engine.errors import IllegalArgument, IndexNotFound
from selproxy.engine.search import parse_search, run_search
from selproxy.engine.store import Store


@pytest.fixture
def store():
    yield from memory_store()


def search(store: Store, index: str, body: dict) -> dict:
    metas = store.resolve(index)
    return store._read_sync(lambda conn, _: run_search(conn, metas, parse_search(body, {})), ())


def test_failed_transaction_publishes_nothing(store: Store, monkeypatch) -> None:
    bulk(store, {"index": {"_index": "i", "_id": "1"}}, {"a": "first"})
    before = store.indices["i"]

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    original = Store._write_doc

    def write_then_break(self, txn, meta, doc_id, source, current, raw=None):
        original(self, txn, meta, doc_id, source, current, raw)
        broken()

    monkeypatch.setattr(Store, "_write_doc", write_then_break)
    with pytest.raises(RuntimeError):
        bulk(store, {"index": {"_index": "i", "_id": "2"}}, {"a": "second", "new_field": "x"})
    assert store.indices["i"] is before and "new_field" not in store.indices["i"].fields
    monkeypatch.undo()
    hits = search(store, "i", {"query": {"match_all": {}}})["hits"]
    assert [h["_id"] for h in hits["hits"]] == ["1"]
    # The index still works after the rollback, and the field can be added for real.
    assert not bulk(store, {"index": {"_index": "i", "_id": "2"}}, {"new_field": "x"})["errors"]
    assert "new_field" in store.indices["i"].fields


def test_same_id_twice_in_one_bulk(store: Store) -> None:
    result = bulk(store, {"index": {"_index": "i", "_id": "1"}}, {"t": "one"},
                  {"index": {"_index": "i", "_id": "1"}}, {"t": "two"},
                  {"delete": {"_index": "i", "_id": "1"}},
                  {"create": {"_index": "i", "_id": "1"}}, {"t": "three"})
    assert [next(iter(i.values()))["status"] for i in result["items"]] == [201, 200, 200, 201]
    hits = search(store, "i", {"query": {"match": {"t": "three"}}})["hits"]
    assert [h["_id"] for h in hits["hits"]] == ["1"]
    assert search(store, "i", {"query": {"match": {"t": "one two"}}})["hits"]["total"]["value"] == 0


def test_malformed_bulk_is_rejected_whole(store: Store) -> None:
    with pytest.raises(IllegalArgument):
        bulk(store, {"index": {"_index": "i", "_id": "1"}}, {"t": "one"}, {"bogus": {}}, {})
    with pytest.raises(IndexNotFound):
        store.resolve("i")


def test_resolve_wildcards_and_exclusions(store: Store) -> None:
    for name in ("logs-a", "logs-b", "other"):
        bulk(store, {"index": {"_index": name, "_id": "1"}}, {"t": "x"})
    assert [m.name for m in store.resolve("logs-*")] == ["logs-a", "logs-b"]
    assert [m.name for m in store.resolve("*,-logs-b*")] == ["logs-a", "other"]
    assert [m.name for m in store.resolve("_all")] == ["logs-a", "logs-b", "other"]
    assert store.resolve("missing", allow_missing=True) == []


def test_memory_fallback_without_memdb(monkeypatch) -> None:
    import sqlite3
    import os

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    s = Store(":memory:", readers=1)
    assert not s.memory and s._temp_dir is not None
    temp = s._temp_dir.name
    s._load()
    bulk(s, {"index": {"_index": "i", "_id": "1"}}, {"t": "x"})
    assert search(s, "i", {})["hits"]["total"]["value"] == 1
    s.close_sync()
    assert not os.path.exists(temp)
