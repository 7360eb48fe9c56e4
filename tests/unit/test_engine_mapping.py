"""Stored-only mappings without HTTP: binary, index:false, enabled:false, dynamic false|strict,
hidden indices, and the root attributes kept across restarts."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest

from selproxy.engine.app import _bulk_txn
from selproxy.engine.errors import DocumentParsingError, MapperParsingError, StrictDynamicMapping
from selproxy.engine.mapping import analyse_document, flatten, validate_properties, validate_root
from selproxy.engine.search import parse_search, run_search
from selproxy.engine.store import Store

VECTORS = {"dynamic": False, "properties": {"v": {"type": "binary"}, "m": {"type": "keyword", "index": False}}}


def analyse(source: dict, mappings: dict):
    props = mappings.get("properties", {})
    validate_properties(props)
    root = validate_root(mappings)
    fields, specs = flatten(props)
    return analyse_document(source, props, fields, specs, "1", root=root)


def test_binary_and_unmapped_fields_under_dynamic_false_make_no_text_rows() -> None:
    rows, new_props = analyse({"v": "AAAAPwAAgD8=", "m": "minilm", "note": "free text", "obj": {"a": 1}}, VECTORS)
    assert rows.texts == {} and rows.numbers == []
    assert rows.keywords == [("m", "minilm")]  # index:false keeps doc values, which ES 8 can still query
    assert new_props is None                   # dynamic false: the mapping does not grow


def test_binary_must_be_a_string() -> None:
    with pytest.raises(DocumentParsingError, match=r"field \[v\] of type \[binary\]"):
        analyse({"v": [1.0, 2.0]}, VECTORS)


def test_index_false_text_and_doc_values_false_leaves_are_stored_only() -> None:
    mappings = {"properties": {"t": {"type": "text", "index": False},
                               "k": {"type": "keyword", "index": False, "doc_values": False},
                               "n": {"type": "long", "index": False}}}
    rows, _ = analyse({"t": "hello", "k": "x", "n": 5}, mappings)
    assert rows.texts == {} and rows.keywords == [] and rows.numbers == [("n", 5)]


def test_enabled_false_object_holds_anything_and_indexes_nothing() -> None:
    mappings = {"properties": {"blob": {"type": "object", "enabled": False}, "raw": {"enabled": False},
                               "t": {"type": "text"}}}
    rows, new_props = analyse({"blob": {"x": "words", "y": [1, 2]}, "raw": "a scalar", "t": "kept"}, mappings)
    assert rows.texts == {"t": "kept"} and rows.keywords == [] and new_props is None
    assert analyse({}, {"enabled": False})[0].texts == {}
    rows, _ = analyse({"t": "not indexed"}, {"enabled": False, "properties": {"t": {"type": "text"}}})
    assert rows.texts == {}


def test_dynamic_strict_and_object_level_dynamic() -> None:
    strict = {"dynamic": "strict", "properties": {"t": {"type": "text"}}}
    assert analyse({"t": "ok"}, strict)[0].texts == {"t": "ok"}
    with pytest.raises(StrictDynamicMapping) as caught:
        analyse({"other": 1}, strict)
    assert caught.value.status == 400
    assert caught.value.reason == ("[other] mapping set to strict, dynamic introduction of [other] within [_doc] "
                                   "is not allowed")
    # An object's own dynamic overrides the root's, for its subtree only.
    mixed = {"dynamic": False, "properties": {"meta": {"dynamic": True, "properties": {}}}}
    rows, new_props = analyse({"meta": {"lang": "en"}, "top": "ignored"}, mixed)
    assert rows.texts == {"meta.lang": "en"}
    assert new_props == {"meta": {"dynamic": True, "properties": {
        "lang": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}}}}


@pytest.mark.parametrize("mappings", [{"dynamic": "sometimes"}, {"enabled": "no"}])
def test_bad_root_attributes(mappings: dict) -> None:
    with pytest.raises(MapperParsingError):
        validate_root(mappings)


# -- through the store -----------------------------------------------------------------------------

def bulk(store: Store, *lines: dict) -> dict:
    raw = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    return store._write_sync(_bulk_txn, (store, raw, None))


def search(store: Store, index, body: dict, hidden: bool = False) -> dict:
    metas = store.resolve(index, hidden=hidden)
    return store._read_sync(lambda conn, _: run_search(conn, metas, parse_search(body, {})), ())


def test_vector_index_keeps_its_mapping_and_is_hidden_across_a_restart(tmp_path) -> None:
    path = str(tmp_path / "engine.sqlite3")
    store = Store(path, readers=1)
    store._load()
    name = ".selproxy-vectors-minilm"
    store._write_sync(store.create_index, (name, {"mappings": VECTORS, "settings": {"index.hidden": True}}))
    store._write_sync(store.create_index, ("books", {}))
    bulk(store, {"index": {"_index": name, "_id": "k"}}, {"v": "AAAAPw==", "m": "minilm", "note": "hello"},
         {"index": {"_index": "books", "_id": "1"}}, {"t": "hello"})
    store.close_sync()

    store = Store(path, readers=1)
    store._load()
    try:
        meta = store.indices[name]
        assert meta.mappings() == {"dynamic": "false", "properties": VECTORS["properties"]}
        assert meta.hidden
        # No FTS table was ever made for the vector index: nothing in it is text.
        assert meta.fts == {}
        assert [m.name for m in store.resolve("*")] == ["books"]
        assert [m.name for m in store.resolve(None)] == ["books"]
        assert [m.name for m in store.resolve(".sel*")] == [name]
        assert [m.name for m in store.resolve("*", hidden=True)] == [name, "books"]
        assert [m.name for m in store.resolve(name)] == [name]
        hits = search(store, name, {"query": {"query_string": {"query": "hello"}}})
        assert hits["hits"]["total"]["value"] == 0
        hits = search(store, name, {"query": {"term": {"v": "AAAAPw=="}}})
        assert hits["hits"]["total"]["value"] == 0
        hits = search(store, name, {"query": {"term": {"m": "minilm"}}})
        assert [h["_source"] for h in hits["hits"]["hits"]] == [{"v": "AAAAPw==", "m": "minilm", "note": "hello"}]
        # dynamic false: "note" was neither mapped nor indexed.
        assert "note" not in meta.props
    finally:
        store.close_sync()


def test_database_without_the_root_column_is_upgraded(tmp_path) -> None:
    path = str(tmp_path / "old.sqlite3")
    store = Store(path, readers=1)
    store._load()
    bulk(store, {"index": {"_index": "a", "_id": "1"}}, {"t": "x"})
    store.close_sync()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE indices DROP COLUMN mapping_root")  # as written before this column existed
    conn.commit()
    conn.close()
    assert os.path.exists(path)
    store = Store(path, readers=1)
    store._load()
    try:
        assert store.indices["a"].root == {}
        store._write_sync(store.put_mapping, ("a", {"dynamic": "strict"}))
        assert store.indices["a"].mappings()["dynamic"] == "strict"
    finally:
        store.close_sync()
