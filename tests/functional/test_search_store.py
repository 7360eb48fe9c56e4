"""The neural ranker at its defaults over real sockets: a cold proxy answers
within its deadline with a partial rerank and converges; the store is shared by
workers and survives a restart.  The real packaged model, the embedded engine,
``python -m selproxy`` as a user runs it (only the store's path is given, to
keep the test's files apart)."""
from __future__ import annotations

import json
import time
import urllib.request
from typing import Dict, Tuple

import pytest
from support.engine import engine_in_thread
from support.proxy import ProxyProcess

pytest.importorskip("onnxruntime")

from selproxy.search import SearchConfig  # noqa: E402

WORDS = ("wing lift drag boundary layer shock wave supersonic flow pressure heat transfer "
         "turbulent laminar nozzle jet panel flutter buckling cylinder shell plate").split()


def post(url: str, body: object, timeout: float = 30.0) -> Tuple[Dict[str, str], dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return dict(answer.headers), json.loads(answer.read())


def index_abstracts(engine_url: str, n: int = 60) -> None:
    lines = []
    for k in range(n):
        words = [WORDS[(k * 7 + j * 3) % len(WORDS)] for j in range(90)]
        lines.append(json.dumps({"index": {"_index": "papers", "_id": str(k)}}))
        lines.append(json.dumps({"title": f"paper {k}", "text": " ".join(words)}))
    request = urllib.request.Request(f"{engine_url}/_bulk?refresh=true",
                                     ("\n".join(lines) + "\n").encode(), method="POST",
                                     headers={"Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert not json.loads(answer.read())["errors"]


QUERY = {"query": {"match": {"text": "supersonic wing flutter"}}, "size": 10}


def status(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_selproxy/status", timeout=10) as answer:
        return json.loads(answer.read())


def wait_until_ready(url: str, timeout: float = 60.0) -> None:
    """As a load balancer's readiness check would: the model has warmed up."""
    give_up = time.monotonic() + timeout
    while not status(url)["ready"]:
        assert time.monotonic() < give_up, "the proxy never became ready"
        time.sleep(0.05)


def timing(headers: Dict[str, str]) -> Dict[str, float]:
    out = {}
    for metric in headers["Server-Timing"].split(","):
        name, _, dur = metric.strip().partition(";dur=")
        out[name] = float(dur)
    return out


def test_a_cold_proxy_answers_on_time_with_a_partial_rerank_then_converges(tmp_path):
    deadline_ms = SearchConfig().rank_deadline * 1000
    with engine_in_thread() as engine_url:
        index_abstracts(engine_url)
        args = ["--upstream", engine_url, "--embedding-store", str(tmp_path / "v.sqlite3")]
        # No --ranker: the default neural ranker is on.
        with ProxyProcess(args, timeout=60, passthrough_only=False) as proxy:
            wait_until_ready(proxy.url)
            started = time.perf_counter()
            headers, first = post(f"{proxy.url}/papers/_search", QUERY)
            elapsed_ms = (time.perf_counter() - started) * 1000
            kind = headers["X-Selproxy-Rerank"]
            assert kind.startswith("applied; partial="), kind
            scored, window = map(int, kind.split("partial=")[1].split("/"))
            assert 1 <= scored < window == 50
            spent = timing(headers)
            assert spent["encode"] > 0 and spent["rank"] <= deadline_ms + 50, spent
            # The whole answer, engine included, stays near the deadline even on a busy box.
            assert elapsed_ms < deadline_ms + spent["upstream"] + 1000
            assert len(first["hits"]["hits"]) == 10
            # The rest of the window is embedded in the background: the
            # same search converges to a full rerank with nothing to embed.
            converged = None
            give_up = time.monotonic() + 90
            while time.monotonic() < give_up:
                headers, _ = post(f"{proxy.url}/papers/_search", QUERY)
                if headers["X-Selproxy-Rerank"] == "applied":
                    converged = headers
                    break
                time.sleep(0.2)
            assert converged is not None, "the window never became fully embedded"
            model = status(proxy.url)["search"]["model"]
            # The background did part of it, between searches.
            assert model["encoded_background"] > 0, model
            # Now the window costs no embedding at all.
            headers, _ = post(f"{proxy.url}/papers/_search", QUERY)
            assert headers["X-Selproxy-Rerank"] == "applied"
            after = status(proxy.url)["search"]["model"]
            assert after["encoded_foreground"] == model["encoded_foreground"]
            assert after["encoded_background"] == model["encoded_background"]
        # A restart (and any other worker) finds the vectors in the store.
        with ProxyProcess(args + ["--workers", "2"], timeout=60, passthrough_only=False) as proxy:
            proxy.wait_for_workers(2, timeout=60)
            ready = set()
            give_up = time.monotonic() + 60
            while len(ready) < 2:  # each connection lands on either worker
                assert time.monotonic() < give_up, "a worker never became ready"
                seen = status(proxy.url)
                if seen["ready"]:
                    ready.add(seen["pid"])
                time.sleep(0.02)
            pids = set()
            for _ in range(12):
                headers, _ = post(f"{proxy.url}/papers/_search", QUERY)
                assert headers["X-Selproxy-Rerank"] == "applied"
                pids.add(status(proxy.url)["pid"])
            # Fresh connections spread over both workers; none had to embed the window.
            assert len(pids) == 2


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def test_two_proxies_share_the_store_kept_in_the_engine():
    with engine_in_thread() as engine_url:
        index_abstracts(engine_url, n=30)
        mapping_before = get(f"{engine_url}/papers/_mapping")
        # A deadline long enough for the first proxy to embed the whole window.
        args = ["--upstream", engine_url, "--embedding-store", "engine", "--rank-deadline", "60"]
        with ProxyProcess(args, timeout=60, passthrough_only=False) as first:
            wait_until_ready(first.url)
            headers, _ = post(f"{first.url}/papers/_search", QUERY)
            assert headers["X-Selproxy-Rerank"] == "applied"
            model = status(first.url)["search"]["model"]
            assert model["encoded_foreground"] == 30 and model["store"]["writes"] == 30
            sidecar = model["store"]["index"]
        assert sidecar.startswith(".selproxy-vectors-minilm-")
        get(f"{engine_url}/{sidecar}/_refresh")
        assert get(f"{engine_url}/{sidecar}/_count")["count"] == 30
        # Another replica, a fresh process with an empty memory, embeds nothing.
        with ProxyProcess(args, timeout=60, passthrough_only=False) as second:
            wait_until_ready(second.url)
            headers, _ = post(f"{second.url}/papers/_search", QUERY)
            assert headers["X-Selproxy-Rerank"] == "applied"
            model = status(second.url)["search"]["model"]
            assert model["encoded_foreground"] == 0 and model["store"]["hits"] == 30
        # The user's index is as it was; the sidecar stays out of wildcard searches.
        assert get(f"{engine_url}/papers/_mapping") == mapping_before
        assert get(f"{engine_url}/papers/_count")["count"] == 30
        everything = get(f"{engine_url}/*/_search?size=100")
        assert {hit["_index"] for hit in everything["hits"]["hits"]} == {"papers"}
