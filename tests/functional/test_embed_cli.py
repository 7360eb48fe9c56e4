"""``selproxy embed`` against the embedded engine, as a real subprocess: it walks every document with a
point in time, stores exactly the keys the search path computes, skips what is stored, re-embeds a changed
document, stops cleanly on SIGINT after the batch in hand, and fails in one line.

Most runs use ``support.embed_ranker:GatedRanker`` (vectors from a hash: no model to load); one runs the
real default model and then searches through a proxy that reads the same store."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from typing import Dict, List, Tuple

import pytest
from support.aio import run
from support.embed_ranker import GatedRanker
from support.engine import engine_in_thread

import selproxy
from selproxy._engine_http import EngineHTTP
from selproxy.embed import IndexWalk
from selproxy.search import SearchConfig
from selproxy.search.service import document_key, hit_texts

SUPPORT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support")
GATED = "embed_ranker:GatedRanker"
N_DOCS = 60
WORDS = ["wing", "lift", "drag", "flow", "shock", "boundary", "layer", "nozzle", "heat", "flutter"]


def request(method: str, url: str, body=None) -> Tuple[int, dict, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return res.status, dict(res.headers), json.loads(res.read())


def bulk(url: str, index: str, docs: Dict[str, dict]) -> None:
    lines = []
    for doc_id, source in docs.items():
        lines += [json.dumps({"index": {"_index": index, "_id": doc_id}}), json.dumps(source)]
    req = urllib.request.Request(f"{url}/_bulk?refresh=true", data=("\n".join(lines) + "\n").encode(),
                                 method="POST", headers={"Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(req, timeout=30) as res:
        assert not json.loads(res.read())["errors"]


def documents(n: int = N_DOCS) -> Dict[str, dict]:
    return {f"d{i}": {"title": f"{WORDS[i % 10]} study {i}",
                      "body": " ".join(WORDS[(i * j) % 10] for j in range(1, 12)) + f" case {i}",
                      "year": 1950 + i}
            for i in range(n)}


@pytest.fixture(scope="module")
def engine():
    # One point in time at most: a run that left its own open would make the next one fall back to a scroll,
    # which the tests would see in the totals.
    with engine_in_thread(max_open_contexts=1) as url:
        bulk(url, "docs", documents())
        yield url


def embed_argv(url: str, index: str, store, *extra: str, ranker: str = GATED) -> List[str]:
    return [sys.executable, "-m", "selproxy", "embed", "--upstream", url, "--index", index,
            "--ranker", ranker, "--embedding-store", str(store), *extra]


def env(tmp_path) -> Dict[str, str]:
    # A private cache directory: nothing is written under the user's own.
    return dict(os.environ, PYTHONPATH=os.pathsep.join([SUPPORT, os.environ.get("PYTHONPATH", "")]),
                XDG_CACHE_HOME=str(tmp_path / "cache"))


def embed(tmp_path, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(embed_argv(*argv, **kwargs), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=env(tmp_path))


def totals(stdout: str) -> Dict[str, str]:
    return dict(re.findall(r"^([a-z/ ()]+):\s+(.*)$", stdout, re.M))


def stored(path, identity: str = GatedRanker.identity) -> Dict[Tuple[str, str], str]:
    """``(index, _id) -> text hash`` of every vector in the store file."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT v.idx, v.id, v.text_hash FROM vectors v JOIN models m ON v.model = m.id "
                            "WHERE m.identity = ?", (identity,)).fetchall()
    return {(index, doc_id): text_hash for index, doc_id, text_hash in rows}


def search_path_keys(url: str, index: str, text_fields=()) -> List[Tuple[str, str, str]]:
    """The keys the search path computes for every document, from an ordinary search's hits."""
    _, _, found = request("POST", f"{url}/{index}/_search", {"size": 1000})
    hits = found["hits"]["hits"]
    specs = [selproxy.search.extract.parse_field_spec(s, SearchConfig().max_field_chars) for s in text_fields]
    return [document_key(h, t) for h, t in zip(hits, hit_texts(hits, specs, SearchConfig().max_field_chars))]


def test_embeds_every_document_under_the_search_paths_keys_then_skips_them_all(engine, tmp_path):
    store = tmp_path / "vectors.sqlite3"
    first = embed(tmp_path, engine, "docs", store, "--batch-size", "16")
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    shown = totals(first.stdout)
    assert shown["index"].endswith("(walked with point in time)"), first.stdout
    assert (shown["documents seen"], shown["embedded"], shown["skipped (already stored)"],
            shown["without text"]) == ("60", "60", "0", "0")
    assert shown["store"].startswith(f"{store} (60 vectors")
    keys = search_path_keys(engine, "docs")
    assert len(keys) == N_DOCS
    assert stored(store) == {(index, doc_id): text_hash for index, doc_id, text_hash in keys}

    second = embed(tmp_path, engine, "docs", store, "--batch-size", "16")
    assert second.returncode == 0, second.stderr
    shown = totals(second.stdout)
    assert (shown["documents seen"], shown["embedded"], shown["skipped (already stored)"]) == ("60", "0", "60")


def test_a_changed_document_is_embedded_again_and_only_it(engine, tmp_path):
    bulk(engine, "changing", documents(20))
    store = tmp_path / "vectors.sqlite3"
    assert embed(tmp_path, engine, "changing", store).returncode == 0
    before = stored(store)
    bulk(engine, "changing", {"d7": {"title": "a new title", "body": "rewritten entirely"}})
    again = embed(tmp_path, engine, "changing", store)
    assert again.returncode == 0, again.stderr
    shown = totals(again.stdout)
    assert (shown["embedded"], shown["skipped (already stored)"]) == ("1", "19")
    after = stored(store)
    assert {k for k in after if after[k] != before[k]} == {("changing", "d7")}
    assert after[("changing", "d7")] == dict(((i, d), h) for i, d, h in search_path_keys(engine, "changing"))[
        ("changing", "d7")]


def held_at_second_batch(engine, store, tmp_path, *flags):
    """``selproxy embed`` of ``docs`` in batches of 4, its ranker held at the
    start of the second batch until ``gate / "go"`` exists; the process and
    the gate directory, once it is held there."""
    gate = tmp_path / "gate"
    gate.mkdir()
    proc = subprocess.Popen(embed_argv(engine, "docs", store, "--batch-size", "4", *flags,
                                       "--ranker-option", f"gate_dir={gate}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env=env(tmp_path))
    deadline = time.monotonic() + 60
    while not (gate / "second-batch").exists():
        if proc.poll() is not None or time.monotonic() >= deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"the second batch never started: {out} {err}")
        time.sleep(0.01)
    return proc, gate


def test_sigint_stops_after_the_batch_in_hand_and_the_next_run_embeds_only_the_rest(engine, tmp_path):
    store = tmp_path / "vectors.sqlite3"
    proc, gate = held_at_second_batch(engine, store, tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        # The run says it will stop after this batch before the batch is let go.
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "stopping after this batch" in line, line
        (gate / "go").touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    shown = totals(out)
    assert shown["interrupted"].startswith("yes")
    assert shown["embedded"] == "8"  # the first batch and the one in hand, both kept
    assert len(stored(store)) == 8
    rest = embed(tmp_path, engine, "docs", store, "--batch-size", "4")
    assert rest.returncode == 0, rest.stderr
    shown = totals(rest.stdout)
    assert shown["index"].endswith("(walked with point in time)")  # the interrupted run closed its own
    assert (shown["embedded"], shown["skipped (already stored)"]) == ("52", "8")
    assert len(stored(store)) == N_DOCS


def test_an_unknown_index_is_one_line_without_the_password(engine, tmp_path):
    with_password = engine.replace("http://", "http://elastic:s3cret@")
    done = embed(tmp_path, with_password, "no-such-index", tmp_path / "v.sqlite3")
    assert done.returncode == 1
    assert done.stdout == ""
    shown = engine.replace("http://", "http://***@")
    assert done.stderr == f"selproxy: error: no index 'no-such-index' at {shown}\n"


def test_an_unreachable_engine_and_a_storeless_ranker_are_one_line_each(tmp_path):
    with engine_in_thread() as url:
        pass  # its port is free again
    done = embed(tmp_path, url, "docs", tmp_path / "v.sqlite3")
    assert done.returncode == 1
    assert done.stderr.startswith(f"selproxy: error: cannot reach the engine at {url} (")
    assert done.stderr.count("\n") == 1

    with engine_in_thread() as url:
        done = embed(tmp_path, url, "docs", ":memory:")
        assert done.returncode != 0
        assert done.stderr == ("selproxy: error: no index 'docs' at " + url + "\n")
        bulk(url, "docs", documents(3))
        done = embed(tmp_path, url, "docs", ":memory:")
        assert done.returncode == 1
        assert done.stderr == ("selproxy: error: --embedding-store :memory: keeps nothing; "
                               "name a file, 'default' or 'engine'\n")


def test_the_scroll_walk_sees_every_document_once_and_closes_its_context(engine):
    http = EngineHTTP(engine)
    walk = IndexWalk(http, "docs", page_size=7, source=["title"])
    walk.mode = "scroll"  # as on an engine without point in time
    try:
        pages = list(walk.pages())
        scroll_id = walk._scroll
        assert scroll_id is not None
    finally:
        walk.close()
    hits = [h for page in pages for h in page]
    assert sorted(h["_id"] for h in hits) == sorted(documents())
    assert all(set(h["_source"]) == {"title"} for h in hits)
    status, _ = http.request("POST", "/_search/scroll", {"scroll_id": scroll_id, "scroll": "1m"})
    assert status == 404
    http.close()


def test_after_embedding_with_the_real_model_a_search_encodes_nothing(engine, tmp_path):
    pytest.importorskip("onnxruntime")
    from selproxy.rankers.minilm import MiniLMRanker

    store = tmp_path / "minilm.sqlite3"
    fields = ["--text-field", "title", "--text-field", "body:40"]
    done = embed(tmp_path, engine, "docs", store, *fields, "--batch-size", "32", ranker="minilm")
    assert done.returncode == 0, done.stderr
    assert totals(done.stdout)["embedded"] == "60"

    ranker = MiniLMRanker(embedding_store=str(store), background_queue=0)
    config = SearchConfig(topn=50, rank_deadline=60.0, text_fields=("title", "body:40"))

    async def search() -> Tuple[dict, dict]:
        async with selproxy.Proxy(upstream=engine, listen="127.0.0.1:0", ranker=ranker, search=config) as proxy:
            import asyncio
            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: request("POST", f"{proxy.url}/docs/_search",
                                      {"query": {"match": {"body": "wing lift"}}, "size": 5})[1:])

    try:
        headers, found = run(search())
        assert headers["X-Selproxy-Rerank"] == "applied"
        assert len(found["hits"]["hits"]) == 5
        assert ranker.counters["encoded_foreground"] == 0
        assert ranker.store is not None and ranker.store.stats()["misses"] == 0
        assert ranker.store.stats()["hits"] == 50
    finally:
        ranker.close()


def test_a_point_in_time_that_expires_between_pages_is_one_line_and_keeps_what_was_stored(engine, tmp_path):
    store = tmp_path / "vectors.sqlite3"
    proc, gate = held_at_second_batch(engine, store, tmp_path, "--keep-alive", "1s")
    try:
        time.sleep(1.5)  # past the keep-alive, while the second page is being embedded
        (gate / "go").touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert err == ("selproxy: error: the engine's point in time expired between two pages (a page took longer "
                   "to embed than --keep-alive 1s); run again with a longer one: what is stored is skipped\n")
    assert len(stored(store)) == 8


def test_the_engine_store_is_filled_in_a_sidecar_index_and_resumed_from(engine, tmp_path):
    first = embed(tmp_path, engine, "docs", "engine", "--batch-size", "32")
    assert first.returncode == 0, first.stderr
    shown = totals(first.stdout)
    assert shown["embedded"] == "60"
    sidecar = re.match(r"index (\S+) of the engine$", shown["store"])
    assert sidecar and sidecar.group(1).startswith(".selproxy-vectors-gated-"), shown["store"]
    _, _, counted = request("POST", f"{engine}/{sidecar.group(1)}/_count")
    assert counted["count"] == N_DOCS
    again = embed(tmp_path, engine, "docs", "engine", "--batch-size", "32")
    assert again.returncode == 0, again.stderr
    assert (totals(again.stdout)["embedded"], totals(again.stdout)["skipped (already stored)"]) == ("0", "60")


def test_urls_lose_their_password_and_text_fields_ask_only_for_what_they_read():
    from selproxy.embed import EmbedError, source_request
    from selproxy.search.extract import parse_field_spec

    assert EngineHTTP("https://elastic:s3cret@es.example:9243/prefix").display == "https://***@es.example:9243/prefix"
    assert EngineHTTP("http://user@[::1]:9200").display == "http://***@[::1]:9200"
    assert EngineHTTP("http://127.0.0.1:9200").display == "http://127.0.0.1:9200"
    assert source_request([]) == (None, None)
    specs = [parse_field_spec(s) for s in ("title", "meta.abstract:100", "fields.tags", "title:5")]
    assert source_request(specs) == (["title", "meta.abstract"], ["tags"])
    assert source_request([parse_field_spec("fields.tags")]) == (False, ["tags"])
    with pytest.raises(EmbedError, match="highlight"):
        source_request([parse_field_spec("highlight.body")])
