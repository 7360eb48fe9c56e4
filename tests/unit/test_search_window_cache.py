"""The window cache's keys, bounds and write log, sans-io (one test forks)."""
import multiprocessing
import os

import pytest

from selproxy._routes import RouteTable
from selproxy.handler import Response, Route
from selproxy.search.window_cache import WindowCache, WriteLog, window_key, write_routes


def key(**changes):
    args = dict(route="r", ranker="x", window=50, path="/books/_search", query_string="",
                body={"query": {"match": {"t": "a"}}, "from": 0, "size": 10},
                headers=[("Authorization", "Basic a"), ("Host", "h")])
    args.update(changes)
    return window_key(**args)


def test_the_key_leaves_out_paging_and_neutral_headers_only():
    base = key()
    assert key(body={"query": {"match": {"t": "a"}}, "size": 3, "from": 20}) == base
    assert key(body={"from": 5, "query": {"match": {"t": "a"}}}) == base
    assert key(query_string="from=10&size=5") == base
    assert key(headers=[("authorization", "Basic a"), ("Host", "other"), ("traceparent", "1"),
                        ("User-Agent", "z"), ("Accept-Encoding", "gzip")]) == base
    for changed in (dict(body={"query": {"match": {"t": "b"}}}), dict(query_string="q=a"),
                    dict(headers=[("Authorization", "Basic b")]), dict(headers=[]),
                    dict(headers=[("Authorization", "Basic a"), ("Cookie", "s=1")]),
                    dict(headers=[("Authorization", "Basic a"), ("Accept", "text/plain")]),
                    dict(window=20), dict(ranker="y"), dict(route="s"), dict(path="/other/_search"),
                    dict(extra=(True,))):
        assert key(**changed) != base, changed


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def put(cache, name, body=b"{}", started=None, indices=("books",)):
    return cache.put(name, Response(200, [("Content-Type", "application/json")]), body, [1.0, 0.5],
                     fetch=50, hits=50, details="", started=cache._clock() if started is None else started,
                     indices=indices)


def test_lru_bounds_in_entries_and_bytes():
    clock = Clock()
    cache = WindowCache(max_entries=2, max_bytes=10_000, clock=clock, settle=0.0, write_log=WriteLog(64))
    for name in (b"a", b"b"):
        assert put(cache, name)
    assert cache.get(b"a", 10, 10) is not None   # a is now the most recent
    assert put(cache, b"c")
    assert (len(cache), cache.evictions) == (2, {"entries": 1})
    assert cache.get(b"b", 10, 10) is None and cache.get(b"a", 10, 10) is not None
    assert put(cache, b"d", body=b"x" * 9500)
    assert list(cache._entries) == [b"d"] and cache.bytes <= 10_000
    assert not put(cache, b"e", body=b"x" * 20_000)
    assert cache.not_stored == {"too_large": 1}


def test_ttl_and_a_page_past_the_hits_kept():
    clock = Clock()
    cache = WindowCache(ttl=5.0, clock=clock, settle=0.0, write_log=WriteLog(64))
    put(cache, b"a")
    assert cache.get(b"a", 45, 5) is not None
    assert cache.get(b"a", 45, 10) is None   # needs 55 hits of a 50-hit fetch
    clock.now += 5.0
    assert cache.get(b"a", 10, 10) is None and cache.evictions == {"ttl": 1}


def test_writes_by_index_and_broad_writes():
    clock = Clock()
    cache = WindowCache(clock=clock, settle=1.0, by_index=True, write_log=WriteLog(64))
    assert put(cache, b"books", started=clock.now, indices=("books",))
    assert put(cache, b"wild", started=clock.now, indices=("bo*",))
    clock.now += 2.0
    cache.write_log.note(["films"], now=clock.now)
    assert cache.get(b"books", 10, 10) is not None
    assert cache.get(b"wild", 10, 10) is None   # a wildcard depends on every write
    # A window begun less than the settle time after a write is not kept.
    assert not put(cache, b"late", started=clock.now + 0.5, indices=("films",))
    assert put(cache, b"later", started=clock.now + 1.0, indices=("films",))
    cache.write_log.note(None, now=clock.now + 3)
    assert cache.get(b"books", 10, 10) is None


def _note_in_child(log):
    log.note(["books"])
    os._exit(0)


def test_the_write_log_is_shared_across_a_fork():
    log = WriteLog(64)
    slots = log.slots_for(["books"], True)
    assert log.last_write(slots) == 0.0
    child = multiprocessing.get_context("fork").Process(target=_note_in_child, args=(log,))
    child.start()
    child.join(30)
    assert log.last_write(slots) > 0.0


def test_write_routes_are_notify_routes_that_do_not_shadow_searches():
    heard = []
    table = RouteTable([Route(("GET", "POST"), "/{index}/_search", None)] + write_routes(heard.append))
    assert not table.match("POST", "/books/_search").notify
    for method, target, indices in [("POST", "/_bulk", None), ("PUT", "/books/_bulk", None),
                                    ("POST", "/books/_doc", ("books",)), ("DELETE", "/a,b/_doc/1", ("a", "b")),
                                    ("POST", "/books/_update/1", ("books",)), ("DELETE", "/books", ("books",)),
                                    ("POST", "/books/_delete_by_query", ("books",)),
                                    ("POST", "/_refresh", None), ("POST", "/_aliases", None)]:
        match = table.match(method, target)
        assert match is not None and match.notify, target
        match.route.handler(method, target, match.params, False)
        assert heard.pop() == indices
    for method, target in [("GET", "/books"), ("GET", "/books/_doc/1"), ("POST", "/books/_count")]:
        assert table.match(method, target) is None, target


@pytest.mark.parametrize("bad", [dict(max_entries=0), dict(ttl=0), dict(settle=-1)])
def test_bad_bounds(bad):
    with pytest.raises(ValueError):
        WindowCache(**bad)


class Plan:
    offset, size, window, fetch = 0, 10, 50, 50


def test_only_a_complete_ranking_is_kept_and_first_pages_refresh():
    cache = WindowCache(settle=0.0, write_log=WriteLog(64))
    response = Response(200, [])
    for name, scores, outcome in [(b"p", [1.0], ("applied", "partial=1/50")), (b"f", None, ("fallback", "deadline")),
                                  (b"s", None, ("skipped", "no_doc_text"))]:
        assert not cache.keep(name, response, b"{}", scores, outcome, Plan(), hits=50, started=0.0,
                              indices=("books",))
    assert cache.not_stored == {"partial": 1, "fallback": 1, "skipped": 1} and len(cache) == 0
    assert cache.keep(b"k", response, b"{}", [1.0] * 50, ("applied", "fusion=off"), Plan(), hits=50,
                      started=cache._clock(), indices=("books",))
    assert not cache.serves(0) and cache.serves(10)
    assert WindowCache(first_page=True, write_log=WriteLog(64)).serves(0)


def test_a_cached_page_is_cut_from_the_kept_order_and_says_so():
    import json

    from selproxy.search.rewrite import SearchPlan

    cache = WindowCache(settle=0.0, write_log=WriteLog(64))
    hits = [{"_id": str(i), "_score": 1.0} for i in range(6)]
    body = json.dumps({"took": 3, "hits": {"total": {"value": 6}, "max_score": 1.0, "hits": hits}}).encode()
    scores = [float(i) for i in range(4)]   # the window (4) reversed, then 4, 5 in engine order
    plan = SearchPlan(query="q", offset=0, size=6, window=4, fetch=6)
    assert cache.keep(b"k", Response(200, [("X-Elastic-Product", "Elasticsearch")]), body, scores,
                      ("applied", "fusion=off"), plan, hits=6, started=cache._clock(), indices=("b",))
    later = SearchPlan(query="q", offset=2, size=3, window=4, fetch=5)
    response, doc, outcome = cache.page(b"k", later)
    assert outcome == ("applied", "fusion=off; cached")
    assert response.headers == [("X-Elastic-Product", "Elasticsearch")]
    assert [h["_id"] for h in doc["hits"]["hits"]] == ["1", "0", "4"]
    assert doc["hits"]["max_score"] == 3.0 and doc["took"] == 3
