"""Interleaving through real sockets: the embedded engine, selproxy with
``--interleave``, the click beacon, the status page; and across two workers."""
import json
import os
import time

import pytest
from support.engine import engine_in_thread
from support.proxy import ProxyProcess
from support.relevance import ReversingRanker, get, index_docs, post, proxy_in_thread

from selproxy.evaluation import cli as eval_cli
from selproxy.evaluation.metrics import sign_test
from selproxy.search.interleave import CoinSource, InterleaveConfig, ResultSetToken, team_draft


def search_body(size=10, **extra):
    return {"query": {"match": {"body": "wing"}}, "size": size, **extra}


@pytest.fixture(scope="module")
def engine():
    with engine_in_thread() as url:
        index_docs(url)
        yield url


@pytest.fixture
def proxy(engine, request):
    options = getattr(request, "param", {})
    interleave = InterleaveConfig(arms=("ranker", "engine"), seed=11, **options)
    with proxy_in_thread(engine, ReversingRanker(), topn=20, rank_deadline=30, interleave=interleave) as url:
        yield url, interleave


def test_an_interleaved_page_is_the_team_draft_of_both_arms(engine, proxy):
    url, config = proxy
    _, _, direct = post(f"{engine}/docs/_search", search_body(size=20))
    engine_ids = [hit["_id"] for hit in direct["hits"]["hits"]]
    coins = CoinSource(config.seed)
    for page_from in (0, 0, 5):
        body = search_body(size=5, explain=True, **{"from": page_from})
        status, headers, found = post(f"{url}/docs/_search", body)
        assert status == 200 and headers["X-Selproxy-Rerank"] == "applied; interleaved"
        # The same coins, in the same order, give the same merge.
        draft = team_draft(list(reversed(range(20))), list(range(20)), CoinSource.coins(coins.next_seed()))
        expected = [engine_ids[i] for i in draft.order][page_from:page_from + 5]
        assert [hit["_id"] for hit in found["hits"]["hits"]] == expected
        arms = [hit["_selproxy"]["arm"] for hit in found["hits"]["hits"]]
        assert arms == [("ranker", "engine")[t] for t in draft.teams[page_from:page_from + 5]]
        # Scores stay the engine's: two rankers' scores do not compare.
        assert [hit["_score"] for hit in found["hits"]["hits"]] == [
            direct["hits"]["hits"][engine_ids.index(h["_id"])]["_score"] for h in found["hits"]["hits"]]
        token = ResultSetToken.decode(headers["X-Selproxy-Result-Set"], config.secret)
        assert token.interleaved and token.offset == page_from and len(token.teams) == 5


def test_clicks_credit_the_arm_that_contributed_the_hit(proxy):
    url, _ = proxy
    _, headers, found = post(f"{url}/docs/_search", search_body(size=6, explain=True))
    result_set = headers["X-Selproxy-Result-Set"]
    hits = found["hits"]["hits"]
    by_arm = {arm: [h["_id"] for h in hits if h["_selproxy"]["arm"] == arm] for arm in ("ranker", "engine")}
    assert len(by_arm["ranker"]) == len(by_arm["engine"]) == 3

    status, _, reply = post(f"{url}/_selproxy/click", {"result_set": result_set, "_id": by_arm["ranker"][0]})
    assert status == 200 and reply["arm"] == "A" and reply["credited"] is True
    section = get(f"{url}/_selproxy/status")["search"]["interleaving"]
    assert section["arms"]["A"]["wins"] == 1 and section["arms"]["B"]["losses"] == 1

    # The same hit again credits nothing more.
    _, _, reply = post(f"{url}/_selproxy/click", {"result_set": result_set, "_id": by_arm["ranker"][0]})
    assert reply["credited"] is False and reply["arm"] == "A"
    # One click each way: a tie.
    post(f"{url}/_selproxy/click", {"result_set": result_set, "_id": by_arm["engine"][1]})
    section = get(f"{url}/_selproxy/status")["search"]["interleaving"]
    assert section["arms"]["A"] == {"name": "ranker", "wins": 0, "losses": 0, "ties": 1, "clicks": 1}
    assert section["arms"]["B"]["clicks"] == 1 and section["repeat_clicks"] == 1
    # Then two for the engine: B wins.
    post(f"{url}/_selproxy/click", {"result_set": result_set, "_id": by_arm["engine"][0]})
    section = get(f"{url}/_selproxy/status")["search"]["interleaving"]
    assert (section["arms"]["B"]["wins"], section["arms"]["B"]["ties"], section["arms"]["A"]["losses"]) == (1, 0, 1)
    # A text/plain beacon (what navigator.sendBeacon sends for a string) works alike.
    status, _, reply = post(f"{url}/_selproxy/click", json.dumps(
        {"result_set": result_set, "_id": by_arm["engine"][2]}).encode(), {"Content-Type": "text/plain;charset=UTF-8"})
    assert status == 200 and reply["arm"] == "B"


@pytest.mark.parametrize("body,status,reason", [
    (b"not json", 400, "not JSON"),
    (b"[1, 2]", 400, "not a JSON object"),
    (b'{"result_set": "x"}', 400, "needs result_set and _id"),
    (b'{"result_set": 5, "_id": "1"}', 400, "needs result_set and _id"),
    (b'{"result_set": "x", "_id": "1", "_index": null}', 400, "needs result_set and _id"),
    (b'{"result_set": "x", "_id": "1", "admin": true}', 400, "result_set, _id and _index only"),
    (b'{"result_set": "AAAA", "_id": "1"}', 400, "not one this proxy issued (malformed)"),
    pytest.param(json.dumps({"result_set": "A" * 5000, "_id": "1"}).encode(), 413, "at most 4096 bytes",
                 id="too-large"),
    pytest.param(json.dumps({"result_set": "x", "_id": "i" * 600}).encode(), 400, "at most 512 characters",
                 id="long-id"),
    pytest.param(b"[" * 2000 + b"]" * 2000, 400, "not JSON", id="deeply-nested"),
    (b"\xff\xfe{", 400, "not JSON"),
])
def test_hostile_click_bodies_get_an_error_in_the_engines_shape(proxy, body, status, reason):
    url, _ = proxy
    got, _, doc = post(f"{url}/_selproxy/click", body)
    assert got == status
    assert doc["status"] == status and reason in doc["error"]["reason"]
    assert doc["error"]["root_cause"][0]["type"] == doc["error"]["type"]


def test_a_forged_or_foreign_result_set_is_refused(proxy):
    url, config = proxy
    _, headers, found = post(f"{url}/docs/_search", search_body(size=3))
    real = headers["X-Selproxy-Result-Set"]
    hit = found["hits"]["hits"][0]["_id"]
    foreign = ResultSetToken.decode(real, config.secret)
    status, _, doc = post(f"{url}/_selproxy/click", {"result_set": foreign.encode(b"k" * 32), "_id": hit})
    assert status == 400 and "forged" in doc["error"]["reason"]
    status, _, doc = post(f"{url}/_selproxy/click", {"result_set": real, "_id": "not-on-the-page"})
    assert status == 404 and doc["error"]["type"] == "resource_not_found_exception"
    rejected = get(f"{url}/_selproxy/status")["search"]["interleaving"]["rejected_clicks"]
    assert rejected["forged"] == 1 and rejected["not_shown"] == 1


@pytest.mark.parametrize("proxy", [{"ttl": 1.0, "max_open": 2}], indirect=True)
def test_result_sets_are_bounded_in_number_and_expire(proxy):
    url, _ = proxy
    sets = []
    for _ in range(3):
        _, headers, found = post(f"{url}/docs/_search", search_body(size=2))
        sets.append((headers["X-Selproxy-Result-Set"], found["hits"]["hits"][0]["_id"]))
    for result_set, hit in sets:
        assert post(f"{url}/_selproxy/click", {"result_set": result_set, "_id": hit})[0] == 200
    section = get(f"{url}/_selproxy/status")["search"]["interleaving"]
    assert section["open_result_sets"] == 2 and section["evicted"] == 1
    # Ids carry whole seconds: past ttl + 1 s every one is refused.
    time.sleep(2.2)
    status, _, doc = post(f"{url}/_selproxy/click", {"result_set": sets[0][0], "_id": sets[0][1]})
    assert status == 404 and "expired" in doc["error"]["reason"]


class RaisingRanker:
    def rank(self, query, docs):
        raise RuntimeError("no model")


def test_an_arm_that_fails_gives_the_engines_page_and_no_result_set(engine):
    interleave = InterleaveConfig(arms=("engine", "ranker"), seed=1)
    with proxy_in_thread(engine, RaisingRanker(), topn=20, interleave=interleave) as url:
        _, _, direct = post(f"{engine}/docs/_search", search_body(size=4))
        status, headers, found = post(f"{url}/docs/_search", search_body(size=4))
        section = get(f"{url}/_selproxy/status")["search"]["interleaving"]
    assert status == 200 and headers["X-Selproxy-Rerank"] == "fallback; reason=error"
    assert "X-Selproxy-Result-Set" not in headers
    assert [h["_id"] for h in found["hits"]["hits"]] == [h["_id"] for h in direct["hits"]["hits"]]
    assert section["not_interleaved"] == {"error": 1} and section["result_sets"] == 0


def test_eval_interleaving_reads_the_status_page(proxy, capsys):
    url, _ = proxy
    for n in range(3):
        _, headers, found = post(f"{url}/docs/_search", search_body(size=4, explain=True))
        arm = "engine" if n < 2 else "ranker"
        hit = next(h["_id"] for h in found["hits"]["hits"] if h["_selproxy"]["arm"] == arm)
        post(f"{url}/_selproxy/click", {"result_set": headers["X-Selproxy-Result-Set"], "_id": hit})
    assert eval_cli.main(["interleaving", url, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"arms": ["ranker", "engine"], "a_wins": 1, "b_wins": 2, "ties": 0,
                      "p_value": 1.0, "delta": 1 / 3 - 0.5, "source": "status page"}


def test_any_of_two_workers_credits_a_click_for_a_search_another_served(engine, tmp_path, capsys):
    """Searches and clicks on fresh connections spread over both workers; the
    capture's per-worker files show which served what."""
    capture = tmp_path / "capture.jsonl"
    args = ["--upstream", engine, "--workers", "2", "--ranker", "bm25", "--interleave", "bm25,engine",
            "--topn", "20", "--rank-deadline", "30", "--capture", str(capture), "--capture-rate", "1.0"]
    with ProxyProcess(args, timeout=60) as proxy:
        proxy.wait_for_workers(2, timeout=60)
        clicked = 0
        for _ in range(24):
            status, headers, found = post(f"{proxy.url}/docs/_search", search_body(size=4))
            assert status == 200 and headers["X-Selproxy-Rerank"] == "applied; interleaved"
            status, _, reply = post(f"{proxy.url}/_selproxy/click", {
                "result_set": headers["X-Selproxy-Result-Set"], "_id": found["hits"]["hits"][0]["_id"]})
            assert status == 200 and reply["credited"] is True, reply
            clicked += 1
    files = sorted(p for p in os.listdir(tmp_path) if p.startswith("capture."))
    assert len(files) == 2, files  # capture.<pid>.jsonl, one per worker
    served, credited = {}, {}
    for name in files:
        for line in (tmp_path / name).read_text().splitlines():
            record = json.loads(line)
            (served if record["type"] == "search" else credited)[record["result_set"]] = name
    assert len(served) == len(credited) == clicked
    crossed = [rs for rs, name in credited.items() if served[rs] != name]
    assert crossed, "every click landed on the worker that served its search"

    # The click lines add up exactly across the workers' files.
    arms = [json.loads(line)["arm"] for name in files for line in (tmp_path / name).read_text().splitlines()
            if json.loads(line)["type"] == "click"]
    capsys.readouterr()
    assert eval_cli.main(["interleaving", *(str(tmp_path / name) for name in files), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arms"] == ["bm25", "engine"] and result["source"] == "click log"
    assert (result["a_wins"], result["b_wins"], result["ties"]) == (arms.count("A"), arms.count("B"), 0)
    assert result["p_value"] == sign_test(arms.count("A"), arms.count("B"))


def test_an_interleaved_capture_records_both_arms_and_replays_the_served_order(engine, tmp_path):
    from selproxy.evaluation.replay import read_capture
    from selproxy.search.capture import CaptureConfig
    path = tmp_path / "capture.jsonl"
    interleave = InterleaveConfig(arms=("ranker", "engine"), seed=5)
    with proxy_in_thread(engine, ReversingRanker(), topn=20, interleave=interleave,
                         capture=CaptureConfig(str(path), rate=1.0)) as url:
        _, headers, found = post(f"{url}/docs/_search", search_body(size=20, explain=True))
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [hit["_id"] for hit in record["window"]]
    served = [hit["_id"] for hit in found["hits"]["hits"]]
    merged = record["interleaving"]
    assert merged["arms"] == ["ranker", "engine"]
    assert merged["orders"] == [list(reversed(range(20))), list(range(20))]
    assert [ids[i] for i in merged["order"]] == served
    assert [("ranker", "engine")[t] for t in merged["teams"]] == [h["_selproxy"]["arm"] for h in found["hits"]["hits"]]
    assert record["order"] == list(reversed(range(20)))  # the proxy's own ranker's order
    assert record["result_set"] == ResultSetToken.decode(headers["X-Selproxy-Result-Set"], interleave.secret).name
    searches, _ = read_capture([str(path)])
    assert [searches[0].ids[i] for i in searches[0].live_order] == served
