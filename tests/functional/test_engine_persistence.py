"""Data kept in a SQLite file survives stopping and starting the engine."""
from __future__ import annotations

from pathlib import Path

from elasticsearch import Elasticsearch, helpers

from support.engine import engine_in_thread


def test_data_survives_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "engine.sqlite3")
    with engine_in_thread(path) as url:
        es = Elasticsearch(url, request_timeout=20)
        es.indices.create(index="kept", mappings={"properties": {"t": {"type": "text"}, "n": {"type": "long"}}})
        helpers.bulk(es, ({"_index": "kept", "_id": str(i), "t": f"persistent word{i % 3}", "n": i}
                          for i in range(50)))
        es.index(index="kept", id="dyn", document={"t": "persistent", "added": "dynamic field"})
        es.delete(index="kept", id="0")
        es.indices.create(index="dropped")
        es.indices.delete(index="dropped")
        before = es.search(index="kept", query={"match": {"t": "persistent word1"}}, size=5)
        version = es.get(index="kept", id="1")["_seq_no"]
        es.close()
    assert Path(path).exists()
    with engine_in_thread(path) as url:
        es = Elasticsearch(url, request_timeout=20)
        assert es.count(index="kept")["count"] == 50
        assert not es.indices.exists(index="dropped")
        mapping = es.indices.get_mapping(index="kept")["kept"]["mappings"]["properties"]
        assert mapping["added"]["type"] == "text" and mapping["n"] == {"type": "long"}
        after = es.search(index="kept", query={"match": {"t": "persistent word1"}}, size=5)
        assert after["hits"]["hits"] == before["hits"]["hits"]
        assert es.search(index="kept", query={"match": {"added": "dynamic"}})["hits"]["hits"][0]["_id"] == "dyn"
        assert es.get(index="kept", id="1")["_seq_no"] == version
        new = es.index(index="kept", id="new", document={"t": "after restart"})
        assert new["_seq_no"] > version
        es.close()
