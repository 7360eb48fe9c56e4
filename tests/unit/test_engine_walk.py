"""Scroll and point-in-time pages without HTTP: the high-water cut, the _shard_doc tiebreaker,
remembered totals, and a page's cost not growing with the index."""
from __future__ import annotations

import json
from typing import List, Optional

import pytest
from support.engine_store import memory_store

from selproxy.engine.app import _bulk_txn
from selproxy.engine.errors import IllegalArgument
from selproxy.engine.search import SHARD_DOC_SHIFT, Walk, parse_search, run_search
from selproxy.engine.store import Store, high_waters


@pytest.fixture
def store():
    yield from memory_store()


def fill(store: Store, index: str, count: int, start: int = 0) -> None:
    raw = "".join(json.dumps({"index": {"_index": index, "_id": str(i)}}) + "\n" + json.dumps({"n": i, "t": "x"})
                  + "\n" for i in range(start, start + count)).encode()
    store._write_sync(_bulk_txn, (store, raw, None))


def page(store: Store, index: str, body: dict, walk: Optional[Walk]) -> dict:
    metas = store.resolve(index)
    req = parse_search(body, {})
    return store._read_sync(lambda conn, _: run_search(conn, metas, req, walk), ())


def marks(store: Store, index: str) -> List[int]:
    return store._read_sync(high_waters, (store.resolve(index),))


def test_high_water_cuts_later_documents_and_the_tiebreaker_spans_indices(store: Store) -> None:
    fill(store, "a", 3)
    fill(store, "b", 2)
    hw = marks(store, "a,b")
    assert hw == [3, 2]
    fill(store, "a", 2, start=100)  # after the walk "opened"
    out = page(store, "a,b", {"sort": ["_shard_doc"], "size": 10}, Walk(hw))
    assert [(h["_index"], h["_id"]) for h in out["hits"]["hits"]] == [
        ("a", "0"), ("a", "1"), ("a", "2"), ("b", "0"), ("b", "1")]
    assert [h["sort"] for h in out["hits"]["hits"]] == [[1], [2], [3], [SHARD_DOC_SHIFT + 1], [SHARD_DOC_SHIFT + 2]]
    assert out["hits"]["total"] == {"value": 5, "relation": "eq"}
    # search_after on a tiebreaker from the second index skips the whole first one.
    out = page(store, "a,b", {"sort": ["_shard_doc"], "size": 10, "search_after": [SHARD_DOC_SHIFT + 1]}, Walk(hw))
    assert [(h["_index"], h["_id"]) for h in out["hits"]["hits"]] == [("b", "1")]


def test_scroll_pages_continue_from_the_walk_and_reuse_the_first_total(store: Store) -> None:
    fill(store, "a", 7)
    walk = Walk(marks(store, "a"), show_tiebreak=False)
    first = page(store, "a", {"size": 3}, walk)
    assert "sort" not in first["hits"]["hits"][0]  # a scroll shows no sort it was not asked for
    assert walk.known_total == (7, "eq", 1.0)
    seen = [h["_id"] for h in first["hits"]["hits"]]
    while walk.last_sort is not None:
        walk = Walk(walk.high_water, show_tiebreak=False, after=walk.last_sort, known_total=walk.known_total)
        out = page(store, "a", {"size": 3}, walk)
        assert out["hits"]["total"] == {"value": 7, "relation": "eq"}
        seen += [h["_id"] for h in out["hits"]["hits"]]
    assert seen == [str(i) for i in range(7)]


def test_shard_doc_needs_a_walk(store: Store) -> None:
    fill(store, "a", 1)
    with pytest.raises(IllegalArgument, match=r"\[_shard_doc\] sort field cannot be used without"):
        page(store, "a", {"sort": ["_shard_doc"]}, None)


def vm_steps(store: Store, index: str, body: dict, walk: Walk) -> int:
    conn = store._conn()
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(count, 100)
    try:
        out = page(store, index, body, walk)
    finally:
        conn.set_progress_handler(None, 0)
    assert len(out["hits"]["hits"]) == body["size"]
    return steps[0]


def test_a_document_order_page_costs_the_same_in_a_small_and_a_large_index(store: Store) -> None:
    fill(store, "small", 200)
    fill(store, "large", 4000)
    body = {"sort": ["_shard_doc"], "size": 20, "search_after": [50], "track_total_hits": False}
    small = vm_steps(store, "small", body, Walk(marks(store, "small")))
    large = vm_steps(store, "large", body, Walk(marks(store, "large")))
    # Reading the page off the primary key: the same work whatever the index's size
    # (reading the index to sort it would cost 20 times as much in the larger one).
    assert large <= 2 * small + 5, (small, large)
    # The same for _doc with the tiebreaker, and for a scroll's later pages (whose total is known).
    body = {"sort": ["_doc"], "size": 20, "search_after": [50, 50]}
    small = vm_steps(store, "small", body, Walk(marks(store, "small"), known_total=(200, "eq", None)))
    large = vm_steps(store, "large", body, Walk(marks(store, "large"), known_total=(4000, "eq", None)))
    assert large <= 2 * small + 5, (small, large)
