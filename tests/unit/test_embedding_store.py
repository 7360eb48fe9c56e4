"""The persistent embedding store: keys, compact vectors, eviction, and two
processes sharing one file."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from selproxy.rankers import store as store_module
from selproxy.rankers.store import (SQLiteVectorStore, decode_vector, default_store_path,
                                    encode_vector, open_store)


def unit_vectors(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype, tolerance", [("int8", 0.005), ("float16", 0.001)])
def test_compact_vectors_keep_dot_products(dtype, tolerance):
    a, b = unit_vectors(2)
    blob_a, scale_a = encode_vector(a, dtype)
    blob_b, scale_b = encode_vector(b, dtype)
    assert len(blob_a) == (384 if dtype == "int8" else 768)
    back_a, back_b = decode_vector(blob_a, scale_a, dtype), decode_vector(blob_b, scale_b, dtype)
    assert abs(float(back_a @ back_b) - float(a @ b)) < tolerance
    assert abs(float(back_a @ a) - 1.0) < tolerance


def test_a_vector_is_found_only_under_its_model_index_id_and_text(tmp_path):
    path = tmp_path / "v.sqlite3"
    vectors = unit_vectors(3)
    store = SQLiteVectorStore(path, "model-a")
    store.put_many([(("books", "1", "h1"), vectors[0]), (("books", "2", "h2"), vectors[1]),
                    (("", "", "h3"), vectors[2])])
    found = store.get_many([("books", "1", "h1"), ("books", "1", "changed"), ("films", "1", "h1"),
                            ("books", "2", "h2"), ("", "", "h3"), ("books", "9", "h9")])
    assert [v is not None for v in found] == [True, False, False, True, True, False]
    assert float(found[0] @ vectors[0]) > 0.999
    assert store.stats()["hits"] == 3 and store.stats()["misses"] == 3
    # Another model's vectors in the same file are never reused.
    other = SQLiteVectorStore(path, "model-b")
    assert other.get_many([("books", "1", "h1")]) == [None]
    # A changed document replaces its row instead of adding one.
    store.put_many([(("books", "1", "changed"), vectors[2])])
    assert len(store) == 3
    assert store.get_many([("books", "1", "h1")]) == [None]
    assert store.known([("books", "1", "changed"), ("books", "2", "h2"), ("x", "y", "z")]) == [
        True, True, False]
    store.close()
    other.close()
    # It survives a restart.
    again = SQLiteVectorStore(path, "model-a")
    assert again.get_many([("books", "2", "h2")])[0] is not None
    again.close()


def test_eviction_keeps_the_store_bounded_and_drops_the_least_recently_used(tmp_path, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(store_module.time, "time", lambda: clock[0])
    store = SQLiteVectorStore(tmp_path / "v.sqlite3", "m", max_entries=10)
    vectors = unit_vectors(16)
    store.put_many([(("i", str(n), "h"), vectors[n]) for n in range(5)])
    clock[0] += 2 * store_module.TOUCH_INTERVAL
    # Reading 0 and 1 marks them used now (their last use is old enough to refresh).
    assert all(v is not None for v in store.get_many([("i", "0", "h"), ("i", "1", "h")]))
    clock[0] += 10
    store.put_many([(("i", str(n), "h"), vectors[n]) for n in range(5, 11)])
    assert len(store) == 9 and store.stats()["evictions"] == 2
    kept = store.known([("i", str(n), "h") for n in range(11)])
    # 2, 3 and 4 were the least recently used: two of them went.
    assert kept[:2] == [True, True] and kept[5:] == [True] * 6 and kept[2:5].count(False) == 2
    store.close()


def test_default_path_is_one_file_per_model_under_the_cache_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a = default_store_path("minilm", "identity-1")
    assert a.parent == tmp_path / "selproxy" / "embeddings" and a.name.startswith("minilm-")
    assert default_store_path("minilm", "identity-2") != a
    assert open_store(":memory:", "minilm", "x") is None
    store = open_store("default", "minilm", "identity-1")
    assert isinstance(store, SQLiteVectorStore) and store.path == str(a) and a.exists()
    store.close()


#: The writer runs as its own interpreter (the installed selproxy, nothing of
#: the test module), as a second worker process would.
WRITER = """
import sys
import numpy as np
from selproxy.rankers.store import SQLiteVectorStore
path, rounds = sys.argv[1], int(sys.argv[2])
store = SQLiteVectorStore(path, "shared")
vectors = np.random.default_rng(1).standard_normal((rounds * 50, 384)).astype(np.float32)
for r in range(rounds):
    store.put_many([(("i", str(r * 50 + n), "h"), vectors[r * 50 + n]) for n in range(50)])
store.close()
"""


def test_a_writer_and_a_reader_in_two_processes_share_the_file(tmp_path):
    path = str(tmp_path / "shared.sqlite3")
    SQLiteVectorStore(path, "shared").close()
    rounds = 40
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, str(rounds)],
                              stderr=subprocess.PIPE, text=True)
    reader = SQLiteVectorStore(path, "shared")
    keys = [("i", str(n), "h") for n in range(rounds * 50)]
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            # Readers never wait for the writer, and never see a torn batch.
            found = reader.get_many(keys)
            present = sum(v is not None for v in found)
            assert present % 50 == 0 and present >= seen
            seen = present
            if present == len(keys) or (writer.poll() is not None and writer.returncode != 0):
                break
            time.sleep(0.01)
    finally:
        _, errors = writer.communicate(timeout=30)
    assert writer.returncode == 0, errors
    assert seen == len(keys)
    reader.close()
