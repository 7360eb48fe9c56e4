"""Capture through real sockets (what a line holds, bounds, rotation, write
errors that never fail a search), and replay reproducing the live ranker's
nDCG on a captured Cranfield run."""
import hashlib
import math
import time
import json
import os

import random

import pytest
from support.engine import engine_in_thread

from selproxy.evaluation import cli as eval_cli
from selproxy.evaluation.metrics import mrr_at, ndcg_at
from selproxy.evaluation.run import search_body
from selproxy.evaluation.trec import number_like_qrels, read_qrels, read_topics
from selproxy.search.capture import CaptureConfig, CaptureWriter
from support.relevance import ReversingRanker, get, index_docs, post, proxy_in_thread

CRANFIELD = "/work/shared/data/cranfield"


@pytest.fixture(scope="module")
def engine():
    with engine_in_thread() as url:
        index_docs(url)
        yield url


def capture_status(url, until, timeout=10.0):
    """The status page's capture section, once ``until(section)`` holds
    (the writer thread writes within its flush interval)."""
    deadline = time.monotonic() + timeout
    while True:
        section = get(f"{url}/_selproxy/status")["search"]["capture"]
        if until(section) or time.monotonic() > deadline:
            return section
        time.sleep(0.02)


def lines(path):
    with open(path) as stream:
        return [json.loads(line) for line in stream]


def test_a_captured_line_holds_the_window_the_scores_and_the_order(engine, tmp_path):
    path = tmp_path / "capture.jsonl"
    capture = CaptureConfig(str(path), rate=1.0, texts=True, seed=1)
    with proxy_in_thread(engine, ReversingRanker(), topn=8, capture=capture) as url:
        _, direct_headers, direct = post(f"{engine}/docs/_search", {"query": {"match": {"body": "wing"}},
                                                                    "size": 8})
        status, headers, found = post(f"{url}/docs/_search", {"query": {"match": {"body": "wing"}}, "size": 3})
        assert status == 200 and headers["X-Selproxy-Rerank"] == "applied"
        result_set = headers["X-Selproxy-Result-Set"]
        reply = post(f"{url}/_selproxy/click", {"result_set": result_set, "_id": found["hits"]["hits"][1]["_id"]})
        assert reply[0] == 200 and reply[2]["arm"] is None and reply[2]["position"] == 1
    search, click = lines(path)
    engine_hits = direct["hits"]["hits"]
    assert search["type"] == "search" and search["query"] == "wing" and search["indices"] == ["docs"]
    assert [h["_id"] for h in search["window"]] == [h["_id"] for h in engine_hits]
    assert [h["engine_score"] for h in search["window"]] == [h["_score"] for h in engine_hits]
    for hit in search["window"]:
        assert hit["text_sha1"] == hashlib.sha1(hit["text"].encode()).hexdigest()
    assert search["ranker_scores"] == [float(i) for i in range(8)]
    assert search["order"] == list(reversed(range(8)))
    assert [search["window"][i]["_id"] for i in search["order"][:3]] == [h["_id"] for h in found["hits"]["hits"]]
    assert search["outcome"] == "applied" and search["ranker"] == "ReversingRanker"
    assert set(search["timings_ms"]) == {"upstream", "queue", "rank", "encode", "score", "total"}
    assert search["timings_ms"]["total"] >= search["timings_ms"]["upstream"]
    assert click == {"type": "click", "v": 1, "time": click["time"], "result_set": search["result_set"],
                     "_id": found["hits"]["hits"][1]["_id"], "_index": None, "position": 1, "arm": None,
                     "arm_name": None, "repeat": False}


def test_texts_are_not_captured_by_default(engine, tmp_path):
    path = tmp_path / "capture.jsonl"
    with proxy_in_thread(engine, ReversingRanker(), topn=5, capture=CaptureConfig(str(path), rate=1.0)) as url:
        post(f"{url}/docs/_search", {"query": {"match": {"body": "wing"}}})
    (search,) = lines(path)
    assert all(set(hit) == {"_index", "_id", "text_sha1", "engine_score"} for hit in search["window"])
    assert "wing" not in json.dumps(search["window"])


def test_the_sampling_rate_is_honoured_with_a_seed(engine, tmp_path):
    path = tmp_path / "capture.jsonl"
    capture = CaptureConfig(str(path), rate=0.25, seed=3)
    with proxy_in_thread(engine, ReversingRanker(), topn=5, capture=capture) as url:
        answers = [post(f"{url}/docs/_search", {"query": {"match": {"body": "wing"}}})[1] for _ in range(40)]
        draws = random.Random(3)
        expected = sum(draws.random() < 0.25 for _ in range(40))
        section = capture_status(url, lambda s: s["written"] >= expected)
    assert len(lines(path)) == expected == section["written"]
    # Only captured searches get a result-set id (a click has nothing to join otherwise).
    assert sum("X-Selproxy-Result-Set" in headers for headers in answers) == expected


def test_capture_files_rotate_and_stay_bounded(engine, tmp_path):
    path = tmp_path / "capture.jsonl"
    capture = CaptureConfig(str(path), rate=1.0, max_bytes=2048, backups=2)
    with proxy_in_thread(engine, ReversingRanker(), topn=3, capture=capture) as url:
        for _ in range(40):
            assert post(f"{url}/docs/_search", {"query": {"match": {"body": "wing"}}, "size": 2})[0] == 200
        section = capture_status(url, lambda s: s["written"] == 40)
    assert sorted(os.listdir(tmp_path)) == ["capture.jsonl", "capture.jsonl.1", "capture.jsonl.2"]
    for name in os.listdir(tmp_path):
        assert 0 < os.path.getsize(tmp_path / name) <= 2048
        assert all(line["type"] == "search" for line in lines(tmp_path / name))
    assert section["written"] == 40 and section["rotations"] >= 3
    assert section["dropped"] == section["errors"] == section["too_large"] == 0


def test_a_capture_that_cannot_be_written_never_fails_a_search(engine, tmp_path):
    path = tmp_path / "no-such-directory" / "capture.jsonl"
    with proxy_in_thread(engine, ReversingRanker(), topn=5, capture=CaptureConfig(str(path), rate=1.0)) as url:
        for _ in range(5):
            status, headers, _ = post(f"{url}/docs/_search", {"query": {"match": {"body": "wing"}}})
            assert status == 200 and headers["X-Selproxy-Rerank"] == "applied"
        section = capture_status(url, lambda s: s["errors"] == 5)
    assert section["written"] == 0 and section["errors"] == 5


def test_the_writer_drops_rather_than_waits_when_its_queue_is_full(tmp_path):
    writer = CaptureWriter(str(tmp_path / "c.jsonl"), max_bytes=1 << 20, backups=1, queue=2)
    with writer._wake:  # hold the writer thread off: the loop's side must not wait
        accepted = [writer.put({"n": n}) for n in range(5)]
    writer.close()
    assert accepted == [True, True, False, False, False] and writer.dropped == 3
    assert writer.written == 2 and lines(tmp_path / "c.jsonl") == [{"n": 0}, {"n": 1}]


def test_a_line_with_a_lone_surrogate_stays_utf8_and_reads_back(tmp_path):
    writer = CaptureWriter(str(tmp_path / "c.jsonl"), max_bytes=1 << 20, backups=1)
    assert writer.put({"text": "broken \ud800 text", "ok": "é"})
    writer.close()
    raw = (tmp_path / "c.jsonl").read_bytes()
    raw.decode("utf-8")
    assert json.loads(raw) == {"text": "broken \ud800 text", "ok": "é"}


@pytest.mark.skipif(not os.path.isdir(CRANFIELD), reason="needs the Cranfield collection")
def test_replay_reproduces_the_live_rankers_ndcg_on_a_captured_cranfield_run(tmp_path, capsys):
    pytest.importorskip("bm25s")
    topics_path, qrels_path = f"{CRANFIELD}/cran.qry.xml", f"{CRANFIELD}/cranqrel.trec.txt"
    qrels = read_qrels(qrels_path)
    topics = [t for t in number_like_qrels(read_topics(topics_path), qrels)
              if any(r > 0 for r in qrels.get(t.id, {}).values())][:60]
    path = tmp_path / "cranfield.jsonl"
    # A generous deadline: every window is reranked whole, so replay must match exactly.
    capture = CaptureConfig(str(path), rate=1.0, texts=True, seed=0)
    with engine_in_thread() as engine:
        assert eval_cli.main(["load", "--upstream", engine, "--index", "cranfield",
                              f"{CRANFIELD}/cran.all.1400.xml"]) == 0
        with proxy_in_thread(engine, "bm25", topn=50, rank_deadline=30.0, capture=capture) as url:
            live = []
            for topic in topics:
                status, headers, found = post(f"{url}/cranfield/_search",
                                              search_body(topic.text, ("title", "text"), 50))
                assert status == 200 and headers["X-Selproxy-Rerank"] == "applied"
                live.append([hit["_id"] for hit in found["hits"]["hits"]])
    capsys.readouterr()
    live_ndcg = sum(ndcg_at(ids, qrels[t.id], 10) for ids, t in zip(live, topics)) / len(topics)
    live_mrr = sum(mrr_at(ids, qrels[t.id], 10) for ids, t in zip(live, topics)) / len(topics)

    assert eval_cli.main(["replay", str(path), "--ranker", "bm25", "--qrels", qrels_path,
                          "--topics", topics_path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["label"]: row for row in report["rows"]}
    assert report["judgements"] == "qrels" and report["searches"] == report["judged"] == len(topics)
    for label in ("live", "bm25"):
        assert rows[label]["queries"] == len(topics)
        assert rows[label]["ndcg"] == live_ndcg and rows[label]["mrr"] == live_mrr
    assert (rows["bm25"]["wins"], rows["bm25"]["losses"]) == (0, 0)
    assert rows["bm25"]["rbo_live"] == pytest.approx(1.0)
    assert report["rbo"]["live~bm25"] == pytest.approx(1.0)
    assert rows["engine"]["ndcg"] != live_ndcg


def test_replay_reads_the_texts_of_a_capture_without_them_from_the_engine(tmp_path, capsys):
    path = tmp_path / "capture.jsonl"
    with engine_in_thread() as engine:
        index_docs(engine)
        with proxy_in_thread(engine, ReversingRanker(), topn=8, capture=CaptureConfig(str(path), rate=1.0)) as url:
            for query in ("wing", "drag"):
                _, headers, found = post(f"{url}/docs/_search", {"query": {"match": {"body": query}}})
            clicked = found["hits"]["hits"][2]["_id"]
            post(f"{url}/_selproxy/click", {"result_set": headers["X-Selproxy-Result-Set"], "_id": clicked})
        capsys.readouterr()
        replay = ["replay", str(path), "--ranker", "support.relevance:ReversingRanker", "--json"]
        assert eval_cli.main(replay) == 1
        assert "give --upstream URL" in capsys.readouterr().err
        assert eval_cli.main(replay + ["--upstream", engine]) == 0
        report = json.loads(capsys.readouterr().out)
        rows = {row["label"]: row for row in report["rows"]}
        # No qrels: the click is the judgement; the replayed ranker is the live one.
        assert (report["judgements"], report["searches"], report["judged"]) == ("clicks", 2, 1)
        assert rows["support.relevance:ReversingRanker"]["ndcg"] == rows["live"]["ndcg"] == 1 / math.log2(4)
        assert rows["support.relevance:ReversingRanker"]["rbo_live"] == pytest.approx(1.0)
        assert rows["live"]["click_rank"] == 3.0
        # A document changed since: its windows are left out, not replayed on other text.
        post(f"{engine}/docs/_doc/{clicked}?refresh=true", {"body": "rewritten wing drag"})
        assert eval_cli.main(replay + ["--upstream", engine]) == 1
        err = capsys.readouterr().err
        assert "2 captured windows left out" in err and "no captured window could be replayed" in err
