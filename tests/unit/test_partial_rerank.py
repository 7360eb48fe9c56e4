"""Deadline-aware reranking: the longest prefix that fits, the rest in engine
order, the rest embedded in the background (the real model, small windows)."""
from __future__ import annotations

import json
import time
from typing import List

import pytest
from support.aio import run

from selproxy.handler import Request
from selproxy.rankers.base import Scores
from selproxy.search import SearchConfig, SearchService
from support.search_doubles import FakeEngine
from selproxy.search.respond import page_hits
from selproxy.search.rewrite import plan_search


class PrefixRanker:
    """Scores only the first ``k`` documents, in reverse engine order."""

    partial_results = True

    def __init__(self, k: int) -> None:
        self.k = k

    def rank(self, query: str, docs: List[str]) -> List[float]:
        return Scores(float(i) for i in range(min(self.k, len(docs))))


def test_page_hits_reorders_only_the_scored_prefix():
    plan = plan_search({"size": 6}, {}, ("books",), topn=6)
    hits = [{"_id": str(n), "_score": 10.0 - n} for n in range(6)]
    page = page_hits(hits, plan, [0.1, 0.3, 0.2])
    assert [h["_id"] for h in page] == ["1", "2", "0", "3", "4", "5"]
    assert [h["_score"] for h in page] == [0.3, 0.2, 0.1, 7.0, 6.0, 5.0]


def test_the_service_says_which_prefix_was_reranked():
    fake = FakeEngine({"books": [(f"d{k}", {"title": f"rocket {k}"}) for k in range(8)]})
    service = SearchService(PrefixRanker(3), SearchConfig(topn=8))
    body = json.dumps({"query": {"match": {"title": "rocket"}}, "size": 8}).encode()
    route = next(r for r in service.routes() if r.path == "/{index}/_search")
    response = run(route.handler(Request("POST", "/books/_search", [], body, {"index": "books"}),
                                 fake), 10)
    assert response.header("x-selproxy-rerank") == "applied; partial=3/8"
    engine_order = [h["_id"] for h in fake.answer("POST", "/books/_search", body)[1]["hits"]["hits"]]
    got = [h["_id"] for h in json.loads(response.body)["hits"]["hits"]]
    assert got == engine_order[:3][::-1] + engine_order[3:]
    assert service.status()["partial"] == 1


pytest.importorskip("onnxruntime")
from selproxy.rankers.minilm import MiniLMRanker  # noqa: E402

PASSAGE = ("an experimental study of a wing in a propeller slipstream was made in order to "
           "determine the spanwise distribution of the lift increase due to slipstream ")


@pytest.fixture(scope="module")
def ranker():
    model = MiniLMRanker(threads=1, embedding_store=":memory:")
    model.warmup()
    yield model
    model.close()


def test_a_deadline_bounds_the_prefix_and_the_rest_is_embedded_in_the_background(ranker):
    docs = [f"{PASSAGE} variant {n}" for n in range(12)]
    keys = [("cold", str(n), f"h{n}") for n in range(12)]
    # A model that takes 100 ms a document: with 600 ms, about five fit.  (The
    # slow part dominates the model's own work, which a shared machine's load
    # stretches: at 40 ms and 200 ms, a loaded machine fitted none.)
    embed = ranker.encoder.embed

    def slow(texts, *args):
        time.sleep(0.100 * sum(1 for t in texts if t.startswith(PASSAGE)))
        return embed(texts, *args)

    ranker.encoder.embed = slow
    try:
        started = time.perf_counter()
        scores = ranker.batch_rank([("wing lift", docs)], keys=[keys],
                                   deadlines=[started + 0.6])[0]
        elapsed = time.perf_counter() - started
    finally:
        ranker.encoder.embed = embed
    assert isinstance(scores, Scores)
    assert 1 <= len(scores) <= 6, len(scores)
    # Chunk by chunk, with the cost it measures: it stops before the deadline
    # (a loaded machine may add the length of one chunk at most).
    assert elapsed < 0.6 + 0.6, elapsed
    assert scores.encoded == len(scores)
    assert set(scores.timing) == {"wait", "lookup", "encode", "score"}
    # The rest went to the background, which embeds each once.
    deadline = time.monotonic() + 60
    while (ranker.backlog() or ranker.cache.count_missing(keys)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ranker.cache.count_missing(keys) == 0
    assert ranker.counters["encoded_background"] == len(docs) - len(scores)
    full = ranker.batch_rank([("wing lift", docs)], keys=[keys],
                             deadlines=[time.perf_counter() + 0.2])[0]
    assert len(full) == len(docs) and full.encoded == 0
    assert full[:len(scores)] == pytest.approx(list(scores), abs=1e-4)


def test_without_a_deadline_every_document_is_scored(ranker):
    docs = [f"{PASSAGE} other {n}" for n in range(5)]
    assert len(ranker.rank("wing", docs)) == 5


def test_a_passed_deadline_scores_only_what_is_known(ranker):
    docs = [f"{PASSAGE} late {n}" for n in range(4)]
    keys = [("late", str(n), "h") for n in range(4)]
    ranker.batch_rank([("wing", docs[:1])], keys=[keys[:1]])
    scores = ranker.batch_rank([("wing", docs)], keys=[keys],
                               deadlines=[time.perf_counter() - 1])[0]
    assert len(scores) == 1 and scores.encoded == 0


def test_fusion_needs_engine_scores_and_says_when_it_had_none(ranker):
    docs = [f"{PASSAGE} fused {n}" for n in range(3)]
    fused = ranker.batch_rank([("wing", docs)], engine_scores=[[3.0, 2.0, 1.0]])[0]
    alone = ranker.batch_rank([("wing", docs)], engine_scores=[None])[0]
    assert fused.fusion == "on" and alone.fusion == "off"
    assert min(fused) >= 0.0 and max(fused) <= 1.0


def test_a_search_stops_a_background_batch_and_takes_the_model_at_once():
    model = MiniLMRanker(threads=1, embedding_store=":memory:")
    model.warmup()
    model.BACKGROUND_SLICE = 60.0  # one long background batch
    docs = [f"{PASSAGE} backlog {n}" for n in range(48)]
    keys = [("bg", str(n), "h") for n in range(48)]
    try:
        # A passed deadline: nothing is embedded now, all 48 go to the background.
        assert model.batch_rank([("wing", docs)], keys=[keys],
                                deadlines=[time.perf_counter() - 1])[0] == []
        give_up = time.monotonic() + 30
        while model._preemptible is None:
            assert time.monotonic() < give_up, "the background never started"
            time.sleep(0.001)
        started = time.perf_counter()
        scores = model.batch_rank([("wing", docs[:1])], keys=[keys[:1]],
                                  deadlines=[started + 5.0])[0]
        # It waited for the model far less than the background batch of 48 takes.
        assert scores.timing["wait"] < 0.5, scores.timing
        assert len(scores) == 1
        assert model.counters["preempted_background"] >= 1
        give_up = time.monotonic() + 120
        while model.cache.count_missing(keys) and time.monotonic() < give_up:
            time.sleep(0.05)
        assert model.cache.count_missing(keys) == 0
        # Each document embedded once: by the search (1) or the background (the rest).
        assert model.counters["encoded_background"] + model.counters["encoded_foreground"] == 48
    finally:
        model.close()


def test_a_model_call_still_running_at_the_deadline_is_stopped(ranker):
    docs = [f"{PASSAGE} long {n} " * 3 for n in range(48)]
    keys = [("stop", str(n), "h") for n in range(48)]
    # A wrong estimate (far too cheap) and one chunk of all 48 documents: the
    # call would take most of a second; the deadline stops it.
    ranker.cost_per_token, ranker.cost_per_call = 1e-9, 0.0
    record, chunks = ranker._record_cost, ranker.FOREGROUND_CHUNKS
    ranker._record_cost = lambda tokens, seconds: None
    ranker.FOREGROUND_CHUNKS = (48,)
    stopped = ranker.counters["stopped_at_deadline"]
    try:
        started = time.perf_counter()
        scores = ranker.batch_rank([("wing", docs)], keys=[keys], deadlines=[started + 0.15])[0]
        elapsed = time.perf_counter() - started
    finally:
        ranker._record_cost, ranker.FOREGROUND_CHUNKS = record, chunks
    assert ranker.counters["stopped_at_deadline"] == stopped + 1
    assert list(scores) == [] and scores.encoded == 0
    assert elapsed < 0.15 + 0.1, elapsed


def test_a_document_scores_the_same_embedded_now_or_read_from_the_store(tmp_path):
    docs = [f"{PASSAGE} stored {n}" for n in range(5)]
    keys = [("same", str(n), "h") for n in range(5)]
    path = str(tmp_path / "v.sqlite3")
    first = MiniLMRanker(threads=1, embedding_store=path)
    embedded_now = first.rank("wing lift", docs, keys=keys)
    first.close()
    second = MiniLMRanker(threads=1, embedding_store=path)
    from_the_store = second.rank("wing lift", docs, keys=keys)
    assert second.counters["encoded_foreground"] == 0 and second.store.stats()["hits"] == 5
    second.close()
    assert from_the_store == embedded_now


def test_a_query_embedded_ahead_makes_its_search_embed_nothing(ranker):
    docs = [f"{PASSAGE} ahead {n}" for n in range(3)]
    ranker.rank("warm these documents", docs)
    query = "supersonic flutter of a heated panel"
    ranker.prefetch_query(query)
    give_up = time.monotonic() + 30
    while not ranker.query_cache.contains(query):
        assert time.monotonic() < give_up
        time.sleep(0.005)
    hits = ranker.query_cache.hits
    scores = ranker.batch_rank([(query, docs)], deadlines=[time.perf_counter() + 1])[0]
    assert len(scores) == 3 and scores.encoded == 0 and ranker.query_cache.hits == hits + 1
    ranker.prefetch_query(query)  # already cached: nothing to do
    assert ranker.counters["prefetched_queries"] >= 1


def test_queries_waiting_to_be_embedded_ahead_are_bounded():
    model = MiniLMRanker(threads=1, embedding_store=":memory:")
    model.PREFETCH_QUEUE = 5
    try:
        with model._model_lock:  # the model is busy: nothing prefetched can start
            for n in range(20):
                model.prefetch_query(f"query {n}")
            assert len(model._prefetching) == 5
        give_up = time.monotonic() + 30
        while model._prefetching and time.monotonic() < give_up:
            time.sleep(0.01)
        assert model.counters["prefetched_queries"] == 5
        assert [model.query_cache.contains(f"query {n}") for n in range(20)] == [True] * 5 + [False] * 15
    finally:
        model.close()
