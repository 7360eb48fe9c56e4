"""Metrics and probes over real sockets: ``/_selproxy/metrics`` and
``/_selproxy/status`` answer for every worker of the group, whichever worker
takes the connection; ``/_selproxy/readyz`` follows warm-up, drain and
(with ``--readyz-upstream``) the upstream."""
import asyncio
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from typing import Dict, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.aio import run
from support.engine import engine_in_thread
from support.proxy import ProxyProcess
from support.rawhttp import RawClient
from support.search_e2e import pid_ranker_workers
from support.upstream import RecordingUpstream, response, slow_or_quick

import selproxy
from selproxy.metrics import METRICS

SUPPORT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support")


def get(url: str, timeout: float = 20.0) -> Tuple[int, Dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post(url: str, body: dict) -> Tuple[int, Dict[str, str], bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as res:
        return res.status, dict(res.headers), res.read()


def scrape(url: str) -> Dict[str, object]:
    """The exposition, parsed by prometheus_client: {sample name + labels: value},
    and the families by name under "__families__"."""
    status, headers, body = get(f"{url}/_selproxy/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples: Dict[object, float] = {}
    for family in families.values():
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    samples["__families__"] = families
    return samples


def value(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def get_past_a_closing_worker(url: str) -> Tuple[int, Dict[str, str], bytes]:
    """``get``, again if the connection is reset: the kernel resets the
    connections queued on a worker's SO_REUSEPORT socket when that worker
    stops listening (it drains or dies), and a client then simply retries."""
    for _ in range(50):
        try:
            return get(url)
        except (ConnectionError, urllib.error.URLError):
            time.sleep(0.02)
    return get(url)


def status(url: str) -> dict:
    code, _, body = get(f"{url}/_selproxy/status")
    assert code == 200
    return json.loads(body)


def test_metrics_and_status_count_every_request_of_both_workers(tmp_path, monkeypatch):
    marks = tmp_path / "marks"
    with pid_ranker_workers(marks, monkeypatch) as proxy:
        # Each request on a connection of its own, so the kernel spreads
        # them over both workers; go on until both have served some.
        passed = searched = 0
        for _ in range(200):
            code, _, _ = get(f"{proxy.url}/docs/_doc/1")
            assert code == 200
            passed += 1
            code, headers, _ = post(f"{proxy.url}/docs/_search",
                                    {"query": {"match": {"body": "wings"}}})
            assert code == 200 and headers["X-Selproxy-Rerank"] == "applied"
            searched += 1
            if passed >= 10 and len(os.listdir(marks)) == 2:
                each = status(proxy.url)["workers"]["each"]
                if all(w["proxy"]["requests"]["search"] > 0
                       and w["proxy"]["requests"]["passthrough"] > 0 for w in each):
                    break
        doc = status(proxy.url)
        each = doc["workers"]["each"]
        assert doc["workers"]["expected"] == 2 and doc["workers"]["serving"] == 2
        assert len(each) == 2 and len({w["pid"] for w in each}) == 2
        assert all(w["proxy"]["requests"]["passthrough"] > 0 for w in each), each
        # The core's counters are exact at once: they are written in place.
        totals = doc["proxy"]
        assert totals["requests_passed"] == passed
        assert totals["requests"]["passthrough"] == passed
        assert totals["requests"]["search"] == searched
        assert totals["responses"]["passthrough"]["2xx"] == passed
        assert totals["responses"]["search"]["2xx"] == searched
        assert sum(w["proxy"]["requests_passed"] for w in each) == passed
        assert doc["search"]["ranker"] == "PidRanker"
        statuses = totals["requests"]["status"]     # this one included
        assert statuses >= 2

        samples = scrape(proxy.url)
        assert value(samples, "selproxy_requests_total", route="passthrough") == passed
        assert value(samples, "selproxy_requests_total", route="search") == searched
        assert value(samples, "selproxy_requests_total", route="status") == statuses + 1
        assert value(samples, "selproxy_responses_total", route="passthrough", code="2xx") == passed
        assert value(samples, "selproxy_responses_total", route="search", code="2xx") == searched
        assert value(samples, "selproxy_responses_total", route="passthrough", code="5xx") == 0
        assert value(samples, "selproxy_workers") == 2
        assert value(samples, "selproxy_workers_expected") == 2
        assert value(samples, "selproxy_ready") == 1
        assert value(samples, "selproxy_model_warm") == 1
        assert value(samples, "selproxy_ranker_info", ranker="PidRanker") == 1
        # Every passthrough request and every search's engine call went upstream.
        assert value(samples, "selproxy_upstream_duration_seconds_count") == passed + searched
        assert value(samples, "selproxy_upstream_duration_seconds_bucket", le="+Inf") == passed + searched
        assert value(samples, "selproxy_client_received_bytes_total") > 0
        assert value(samples, "selproxy_client_sent_bytes_total") > 0
        assert value(samples, "selproxy_client_connections_accepted_total") >= passed + searched
        # The Python layer's figures reach the block within a publish interval.
        deadline = time.monotonic() + 10.0
        while True:
            samples = scrape(proxy.url)
            applied = value(samples, "selproxy_rerank_outcomes_total", outcome="applied", reason="")
            if applied == searched or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert applied == searched
        assert value(samples, "selproxy_rank_duration_seconds_count") == searched
        for family in samples["__families__"].values():
            assert family.name in METRICS or family.name + "_total" in METRICS, family.name
            kind = METRICS.get(family.name, METRICS.get(family.name + "_total"))[0]
            assert family.type == kind, family.name


def test_readyz_waits_for_the_warm_up_and_livez_does_not(tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SUPPORT, os.environ.get("PYTHONPATH", "")]))
    with engine_in_thread() as engine_url:
        args = ["--upstream", engine_url, "--workers", "2", "--ranker",
                "gated_warmup_ranker:GatedWarmupRanker", "--ranker-option", f"gate={gate}"]
        with ProxyProcess(args) as proxy:
            proxy.wait_for_workers(2)
            for _ in range(4):
                code, _, body = get(f"{proxy.url}/_selproxy/readyz")
                assert code == 503
                assert json.loads(body) == {"ready": False, "reasons": ["model warming up"]}
                code, _, body = get(f"{proxy.url}/_selproxy/livez")
                assert code == 200 and json.loads(body) == {"live": True}
            assert value(scrape(proxy.url), "selproxy_model_warm") == 0
            gate.write_text("go")
            deadline = time.monotonic() + 20.0
            while True:
                code, _, body = get(f"{proxy.url}/_selproxy/readyz")
                if code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert (code, json.loads(body)) == (200, {"ready": True})
            assert value(scrape(proxy.url), "selproxy_model_warm") == 1
            assert status(proxy.url)["ready"] is True


def test_readyz_says_draining_while_a_worker_drains_then_that_one_is_missing():
    body = os.urandom(100_000)

    async def scenario():
        async with RecordingUpstream(slow_or_quick(body, 1.5)) as up:
            with ProxyProcess(["--upstream", up.url, "--workers", "2",
                               "--shutdown-grace", "8"]) as proc:
                proc.wait_for_workers(2)
                loop = asyncio.get_running_loop()
                code, _, _ = await loop.run_in_executor(None, get, f"{proc.url}/_selproxy/readyz")
                assert code == 200
                busy = await RawClient.connect(proc.url)
                doomed = (await busy.request("GET", "/_selproxy/status")).json()["pid"]
                busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
                await up.wait_for_target("/slow")
                os.kill(doomed, signal.SIGTERM)
                # The other worker answers, for the group: one is draining.
                for _ in range(3):
                    code, _, answer = await loop.run_in_executor(
                        None, get_past_a_closing_worker, f"{proc.url}/_selproxy/readyz")
                    assert code == 503, answer
                    assert "draining" in json.loads(answer)["reasons"]
                # The request in flight finishes, whole.
                res = await busy.read_response()
                assert res.status == 200 and res.body == body
                busy.close()
                # Once the drained worker has exited, one worker is missing.
                deadline = time.monotonic() + 10
                while True:
                    code, _, answer = await loop.run_in_executor(
                        None, get_past_a_closing_worker, f"{proc.url}/_selproxy/readyz")
                    reasons = json.loads(answer).get("reasons", [])
                    if reasons == ["1 of 2 workers serving"] or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                assert (code, reasons) == (503, ["1 of 2 workers serving"])
                doc = await loop.run_in_executor(None, status, proc.url)
                states = {w["pid"]: (w["state"], w["alive"]) for w in doc["workers"]["each"]}
                assert states[doomed] == ("stopped", False)
                # Its counts stay in the totals: the slow request, and its status call.
                assert doc["proxy"]["requests"]["passthrough"] == 1

    run(scenario(), 60)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("check", [False, True], ids=["proxy-only", "readyz-upstream"])
def test_readyz_upstream_option_requires_a_reachable_upstream(check):
    port = _closed_port()

    async def scenario():
        options = {"readyz_upstream": True} if check else {}
        async with selproxy.Proxy(upstream=f"http://127.0.0.1:{port}", listen="127.0.0.1:0",
                                  **options) as proxy:
            client = await RawClient.connect(proxy.url)
            res = await client.request("GET", "/_selproxy/readyz")
            live = await client.request("GET", "/_selproxy/livez")
            client.close()
            return res, live

    res, live = run(scenario(), 30)
    assert live.status == 200
    if check:
        assert res.status == 503
        assert res.json() == {"ready": False, "reasons": ["upstream unreachable: connection refused"]}
    else:
        assert res.status == 200 and res.json() == {"ready": True}


def test_an_unreachable_upstream_is_a_warning_at_start():
    with ProxyProcess(["--upstream", f"http://127.0.0.1:{_closed_port()}", "--workers", "2"]) as proc:
        proc.wait_for_workers(2)
        log = "".join(proc.lines)
        assert "WARNING" in log and "is not reachable (connection refused)" in log, log


# -- the admin listener -------------------------------------------------------------

def test_the_admin_listener_serves_status_metrics_and_probes_only():
    async def scenario():
        async with RecordingUpstream(lambda req: response(200, b"data")) as up:
            async with selproxy.Proxy(upstream=up.url, listen="127.0.0.1:0",
                                      admin_listen="127.0.0.1:0") as proxy:
                assert proxy.admin_url is not None and proxy.admin_url != proxy.url
                loop = asyncio.get_running_loop()

                def fetch(path, method="GET"):
                    request = urllib.request.Request(proxy.admin_url + path, method=method)
                    try:
                        with urllib.request.urlopen(request, timeout=10) as res:
                            return res.status, dict(res.headers), res.read()
                    except urllib.error.HTTPError as err:
                        return err.code, dict(err.headers), err.read()

                client = await RawClient.connect(proxy.url)
                assert (await client.request("GET", "/x")).body == b"data"
                client.close()
                pages = {}
                for path in ("/metrics", "/_selproxy/metrics", "/livez", "/readyz", "/_selproxy/readyz",
                             "/status", "/x", "/_search"):
                    pages[path] = await loop.run_in_executor(None, fetch, path)
                pages["POST /readyz"] = await loop.run_in_executor(None, fetch, "/readyz", "POST")
                pages["HEAD /livez"] = await loop.run_in_executor(None, fetch, "/livez", "HEAD")
                return pages, len(up.requests)

    pages, upstream_requests = run(scenario(), 30)
    assert upstream_requests == 1          # nothing the admin port got went upstream
    for path in ("/metrics", "/_selproxy/metrics"):
        code, headers, body = pages[path]
        assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        requests = {s.labels["route"]: s.value for s in families["selproxy_requests"].samples
                    if s.name == "selproxy_requests_total"}
        assert requests["passthrough"] == 1
    assert pages["/livez"][0] == 200 and json.loads(pages["/livez"][2]) == {"live": True}
    assert pages["/readyz"][0] == 200 and pages["/_selproxy/readyz"][0] == 200
    assert pages["/status"][0] == 200 and json.loads(pages["/status"][2])["proxy"]["requests_passed"] == 1
    assert pages["/x"][0] == 404 and pages["/_search"][0] == 404
    assert pages["POST /readyz"][0] == 405
    assert pages["HEAD /livez"][0] == 200 and pages["HEAD /livez"][2] == b""


def test_the_admin_listener_answers_for_both_workers():
    admin_port = _closed_port()
    body = b"data"

    async def scenario():
        async with RecordingUpstream(lambda req: response(200, body)) as up:
            with ProxyProcess(["--upstream", up.url, "--workers", "2",
                               "--admin-listen", f"127.0.0.1:{admin_port}"]) as proc:
                proc.wait_for_workers(2)
                loop = asyncio.get_running_loop()
                sent = 0
                for _ in range(200):
                    client = await RawClient.connect(proc.url)
                    assert (await client.request("GET", "/x")).body == body
                    client.close()
                    sent += 1
                    if sent >= 10:
                        doc = await loop.run_in_executor(
                            None, status, f"http://127.0.0.1:{admin_port}")
                        if all(w["proxy"]["requests_passed"] for w in doc["workers"]["each"]):
                            break
                samples = await loop.run_in_executor(None, scrape, f"http://127.0.0.1:{admin_port}")
                code, _, _ = await loop.run_in_executor(None, get, f"http://127.0.0.1:{admin_port}/readyz")
                return sent, doc, samples, code

    sent, doc, samples, ready = run(scenario(), 60)
    assert len(doc["workers"]["each"]) == 2
    assert all(w["proxy"]["requests_passed"] for w in doc["workers"]["each"])
    assert value(samples, "selproxy_requests_total", route="passthrough") == sent
    # The admin listener's own requests are not counted as the data port's.
    assert value(samples, "selproxy_requests_total", route="status") == 0
    assert ready == 200


def test_an_admin_port_0_with_several_workers_is_refused():
    with pytest.raises(ValueError, match="admin_listen needs a fixed port"):
        selproxy.Proxy(upstream="http://127.0.0.1:9", workers=2, admin_listen="127.0.0.1:0")


def test_setting_draining_before_a_shutdown_delay_turns_readiness_off_at_once():
    async def scenario():
        async with RecordingUpstream(lambda req: response(200, b"data")) as up:
            async with selproxy.Proxy(upstream=up.url, listen="127.0.0.1:0") as proxy:
                client = await RawClient.connect(proxy.url)
                before = await client.request("GET", "/_selproxy/readyz")
                proxy.draining = True           # what a master does at SIGTERM, before its delay
                during = await client.request("GET", "/_selproxy/readyz")
                metrics = await client.request("GET", "/_selproxy/metrics")
                # Still serving meanwhile: load balancers need the time to notice.
                data = await client.request("GET", "/x")
                proxy.draining = False
                after = await client.request("GET", "/_selproxy/readyz")
                client.close()
                return before, during, metrics, data, after

    before, during, metrics, data, after = run(scenario(), 30)
    assert before.status == 200 and after.status == 200
    assert during.status == 503 and during.json() == {"ready": False, "reasons": ["draining"]}
    families = {f.name: f for f in text_string_to_metric_families(metrics.body.decode())}
    assert families["selproxy_draining"].samples[0].value == 1
    assert families["selproxy_ready"].samples[0].value == 0
    assert data.status == 200 and data.body == b"data"


def test_a_killed_workers_counts_stay_in_the_totals():
    async def scenario():
        async with RecordingUpstream(lambda req: response(200, b"data")) as up:
            with ProxyProcess(["--upstream", up.url, "--workers", "2"]) as proc:
                proc.wait_for_workers(2)
                loop = asyncio.get_running_loop()
                sent = 0
                for _ in range(200):
                    client = await RawClient.connect(proc.url)
                    assert (await client.request("GET", "/x")).body == b"data"
                    client.close()
                    sent += 1
                    if sent >= 6:
                        doc = await loop.run_in_executor(None, status, proc.url)
                        if all(w["proxy"]["requests_passed"] for w in doc["workers"]["each"]):
                            break
                victim = doc["workers"]["each"][0]
                os.kill(victim["pid"], signal.SIGKILL)
                deadline = time.monotonic() + 10
                while True:
                    _, _, answer = await loop.run_in_executor(
                        None, get_past_a_closing_worker, f"{proc.url}/_selproxy/status")
                    doc = json.loads(answer)
                    if doc["workers"]["serving"] == 1 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                code, _, answer = await loop.run_in_executor(None, get, f"{proc.url}/_selproxy/readyz")
                samples = await loop.run_in_executor(None, scrape, proc.url)
                return sent, victim, doc, code, json.loads(answer), samples

    sent, victim, doc, code, answer, samples = run(scenario(), 60)
    assert victim["proxy"]["requests_passed"] > 0
    dead = [w for w in doc["workers"]["each"] if w["pid"] == victim["pid"]][0]
    assert dead["alive"] is False
    # Killed outright, its counts stay: the core wrote them in place.
    assert doc["proxy"]["requests_passed"] == sent
    assert value(samples, "selproxy_requests_total", route="passthrough") == sent
    assert value(samples, "selproxy_workers") == 1
    assert (code, answer) == (503, {"ready": False, "reasons": ["1 of 2 workers serving"]})


def test_a_worker_that_replaces_a_stopped_one_goes_on_from_its_counts():
    """As after a graceful reload or a respawn: the new worker takes the same
    index of the block the master made, and no counter goes back."""
    from selproxy.search import SearchConfig
    from support.search_doubles import FakeEngine, ReverseRanker
    from selproxy.shared_stats import SharedStats

    docs = [(f"d{k}", {"title": f"rocket number {k}"}) for k in range(8)]
    query = json.dumps({"query": {"match": {"title": "rocket"}}}).encode()
    headers = (("Host", "test"), ("Content-Type", "application/json"))

    async def scenario():
        engine = FakeEngine({"books": docs})
        host, port = await engine.serve()
        block = SharedStats.create(2, expected_workers=1)
        seen = []
        try:
            for _generation in range(2):
                proxy = selproxy.Proxy(upstream=f"http://{host}:{port}", listen="127.0.0.1:0",
                                       ranker=ReverseRanker(), search=SearchConfig(topn=6))
                proxy.shared_stats, proxy.worker_index = block, 1   # as the master sets them
                await proxy.start()
                client = await RawClient.connect(proxy.url)
                for _ in range(3):
                    res = await client.request("POST", "/books/_search", query, headers)
                    assert res.header("X-Selproxy-Rerank") == "applied"
                text = (await client.request("GET", "/_selproxy/metrics")).body.decode()
                client.close()
                samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                           for f in text_string_to_metric_families(text) for s in f.samples}
                seen.append((samples[("selproxy_requests_total", (("route", "search"),))],
                             samples[("selproxy_rerank_outcomes_total",
                                      (("outcome", "applied"), ("reason", "")))],
                             samples[("selproxy_rank_duration_seconds_count", ())],
                             samples[("selproxy_client_connections_open", ())]))
                await proxy.stop(grace=1.0)
        finally:
            await engine.close()
        return seen

    first, second = run(scenario(), 30)
    assert first == (3, 3, 3, 1)
    # Counters go on from the stopped worker's; the gauge is the new one's own.
    assert second == (6, 6, 6, 1)
