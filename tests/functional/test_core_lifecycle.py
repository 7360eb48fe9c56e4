"""The proxy's life: the command line, workers, graceful shutdown on SIGTERM
and SIGINT, and the status endpoint."""
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from support.aio import run
from support.proxy import ProxyProcess, in_process
from support.rawhttp import RawClient
from support.upstream import RecordingUpstream, echo, response, slow_or_quick

import selproxy
from selproxy.config import Config


def selproxy_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selproxy", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


async def refused(url: str, timeout: float = 3.0) -> bool:
    """True once new connections to ``url`` are refused (within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client = await RawClient.connect(url)
        except OSError:
            return True
        client.close()
        await asyncio.sleep(0.02)
    return False


async def wait_for_exit(proc: ProxyProcess, timeout: float) -> int:
    """The exit code, without blocking the loop the upstream runs on."""
    assert proc.proc is not None
    deadline = time.monotonic() + timeout
    while proc.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    code = proc.proc.poll()
    assert code is not None, f"selproxy still running {timeout}s after the signal"
    if proc.proc.stderr is not None:
        proc.lines.extend(proc.proc.stderr.readlines())
    if code != 0:
        print("".join(proc.lines))   # shown with the failure: why it failed
    return code


# -- command line -------------------------------------------------------------------

def test_help_lists_the_documented_flags():
    done = selproxy_cli("--help")
    assert done.returncode == 0, done.stderr
    for flag in ("--listen", "--upstream", "--workers", "--upstream-ca-file",
                 "--upstream-insecure", "--shutdown-grace", "--forwarded-headers"):
        assert flag in done.stdout


@pytest.mark.parametrize("upstream", ["ftp://127.0.0.1:9200", "127.0.0.1:9200",
                                      "http://127.0.0.1:9200/some/path",
                                      "http://user:secret@127.0.0.1:9200"])
def test_bad_upstream_is_a_usage_error(upstream):
    done = selproxy_cli("--upstream", upstream, "--listen", "127.0.0.1:0")
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "upstream" in done.stderr.lower()
    assert "Traceback" not in done.stderr
    # The error must not echo a password back.
    assert "secret" not in done.stderr


@pytest.mark.parametrize("flags", [["--workers", "0"], ["--listen", "nowhere"],
                                   ["--listen", "127.0.0.1:70000"], ["--header-timeout", "0"],
                                   ["--max-header-bytes", "-1"]])
def test_bad_option_values_are_usage_errors(flags):
    args = ["--upstream", "http://127.0.0.1:9200", "--listen", "127.0.0.1:0", *flags]
    done = selproxy_cli(*args)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert "error" in done.stderr.lower()


def test_version_flag():
    done = selproxy_cli("--version")
    assert done.returncode == 0
    assert selproxy.__version__ in done.stdout


def test_missing_upstream_is_a_usage_error():
    done = selproxy_cli("--listen", "127.0.0.1:0")
    assert done.returncode == 2
    assert "--upstream" in done.stderr


# -- workers -------------------------------------------------------------------------

def test_two_workers_serve_one_port():
    async def scenario():
        async with RecordingUpstream(echo) as up:
            with ProxyProcess(["--upstream", up.url, "--workers", "2"]) as proc:
                pids = set()
                deadline = time.monotonic() + 10.0
                for _ in range(400):
                    if len(pids) == 2 or time.monotonic() > deadline:
                        break
                    client = await RawClient.connect(proc.url)
                    res = await client.request("GET", "/_selproxy/status")
                    assert res.status == 200
                    assert res.header("Content-Type") == "application/json"
                    pids.add(res.json()["pid"])
                    # Passthrough works from either worker.
                    assert (await client.request("POST", "/w", b"hi")).body == b"hi"
                    client.close()
                assert len(pids) == 2, pids
                assert proc.proc.pid not in pids    # the workers are children
                proc.signal(signal.SIGTERM)
                assert await wait_for_exit(proc, 10.0) == 0
                for pid in pids:
                    assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)

    run(scenario(), 40)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# -- graceful shutdown --------------------------------------------------------------

@pytest.mark.parametrize("signum,workers", [
    (signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-2-workers"])
def test_signal_lets_the_request_in_flight_finish(signum, workers):
    body = os.urandom(300_000)

    async def scenario():
        async with RecordingUpstream(slow_or_quick(body, 1.0)) as up:
            with ProxyProcess(["--upstream", up.url, "--shutdown-grace", "8",
                               "--workers", str(workers)]) as proc:
                proc.wait_for_workers(workers)
                idle = await RawClient.connect(proc.url)
                assert (await idle.request("GET", "/quick")).body == b"quick"
                busy = await RawClient.connect(proc.url)
                busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
                await up.wait_for_target("/slow")
                signalled = time.monotonic()
                proc.signal(signum)
                # New connections are refused at once ...
                assert await refused(proc.url, 0.8)
                # ... the idle keep-alive connection is closed ...
                assert await idle.at_eof(1.0)
                # ... and the exchange in flight completes, whole.
                res = await busy.read_response()
                assert res.status == 200 and res.body == body
                # Its head went out after the signal, so it says the
                # connection ends (RFC 9112 section 9.6).
                assert res.header("Connection") == "close"
                assert await busy.at_eof(2.0)
                # Then the process exits 0, well before the grace is up.
                assert await wait_for_exit(proc, 5.0) == 0
                assert time.monotonic() - signalled < 4.0
                idle.close()
                busy.close()

    run(scenario(), 40)


@pytest.mark.parametrize("head_only", [False, True], ids=["mid-body", "mid-head"])
def test_a_request_still_arriving_when_the_drain_begins_is_read_whole_and_answered(head_only):
    # A drain (SIGTERM, or a reload replacing a worker) waits for the rest
    # of a request it is receiving instead of pausing it mid-upload.
    async def scenario():
        async with RecordingUpstream(lambda request: response(200, b"got %d" % len(request.body))) as up:
            with ProxyProcess(["--upstream", up.url, "--shutdown-grace", "8"]) as proc:
                proc.wait_for_workers(1)
                client = await RawClient.connect(proc.url)
                head = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n"
                first = head[:20] if head_only else head + b"12345"
                rest = head[20:] + b"1234567890" if head_only else b"67890"
                client.send(first)
                await asyncio.sleep(0.3)   # the worker has read the first part
                proc.signal(signal.SIGTERM)
                assert await refused(proc.url, 0.8)
                client.send(rest)
                res = await client.read_response()
                assert res.status == 200 and res.body == b"got 10"
                assert res.header("Connection") == "close"
                assert await client.at_eof(2.0)
                assert await wait_for_exit(proc, 5.0) == 0
                client.close()

    run(scenario(), 40)


def test_sigterm_closes_an_open_tunnel_after_the_grace():
    switch = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\n\r\n")

    async def scenario():
        async with RecordingUpstream(lambda req: [switch, ("tunnel", bytes.upper)]) as up:
            with ProxyProcess(["--upstream", up.url, "--shutdown-grace", "0.5"]) as proc:
                client = await RawClient.connect(proc.url)
                client.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
                            b"Upgrade: websocket\r\n\r\n")
                assert (await client.read_response()).status == 101
                client.send(b"ping")
                assert await client.reader.readexactly(4) == b"PING"
                signalled = time.monotonic()
                proc.signal(signal.SIGTERM)
                # The tunnel keeps working during the grace ...
                client.send(b"still")
                assert await client.reader.readexactly(5) == b"STILL"
                # ... and is closed at its end, both sides.
                assert await client.at_eof(5.0)
                assert await wait_for_exit(proc, 5.0) == 0
                assert time.monotonic() - signalled < 4.0
                assert await _eventually_closed(up)
                client.close()

    run(scenario(), 30)


def test_sigterm_just_after_start_still_exits_0():
    """A SIGTERM as soon as the proxy says it listens (a supervisor stopping a
    fresh instance) is a graceful stop too, with workers still starting."""
    with ProxyProcess(["--upstream", "http://127.0.0.1:9", "--workers", "4"]) as proc:
        proc.signal(signal.SIGTERM)
        code = proc.wait(10.0)
        assert code == 0, "".join(proc.lines)


def test_shutdown_closes_what_is_still_busy_after_the_grace():
    async def scenario():
        async with RecordingUpstream(lambda req: ["stall"]) as up:
            with ProxyProcess(["--upstream", up.url, "--shutdown-grace", "0.5"]) as proc:
                busy = await RawClient.connect(proc.url)
                busy.send(b"GET /never HTTP/1.1\r\nHost: t\r\n\r\n")
                deadline = time.monotonic() + 5
                while not up.requests:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                signalled = time.monotonic()
                proc.signal(signal.SIGTERM)
                # The client sees the connection closed, not a made-up response.
                assert await busy.at_eof(5.0)
                assert await wait_for_exit(proc, 5.0) == 0
                assert time.monotonic() - signalled < 4.0
                busy.close()
                assert up.open_connections == 0 or await _eventually_closed(up)

    run(scenario(), 30)


async def _eventually_closed(up: RecordingUpstream, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while up.open_connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return up.open_connections == 0


# -- the status endpoint ---------------------------------------------------------------

def test_status_reports_version_uptime_config_and_counters():
    async def scenario():
        async with RecordingUpstream(echo) as up:
            async with in_process(up.url, max_upstream_connections=7,
                                  shutdown_grace=1.0) as proxy:
                client = await RawClient.connect(proxy.url)
                for k in range(3):
                    assert (await client.request("GET", f"/p/{k}")).status == 200
                res = await client.request("GET", "/_selproxy/status")
                assert res.status == 200
                assert res.header("Content-Type") == "application/json"
                doc = res.json()
                assert doc["version"] == selproxy.__version__
                assert isinstance(doc["uptime_seconds"], (int, float))
                assert 0 <= doc["uptime_seconds"] < 60
                assert doc["pid"] == os.getpid()

                config = doc["config"]
                assert config["upstream"] == up.url
                assert config["max_upstream_connections"] == 7
                assert set(config) == {f.name for f in dataclasses.fields(Config)}
                json.dumps(config)   # plain JSON values only

                counters = doc["proxy"]
                assert counters["requests_passed"] == 3
                assert counters["requests_claimed"] == 1    # this status request
                assert counters["client_connections"] == 1
                assert counters["upstream_connects"] == 1
                assert counters["errors"] == {}

                # A malformed request is counted as an error of its kind.
                bad = await RawClient.connect(proxy.url)
                bad.send(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
                         b"Content-Length: 2\r\n\r\nab")
                assert (await bad.read_response()).status == 400
                bad.close()
                later = (await client.request("GET", "/_selproxy/status")).json()
                assert later["uptime_seconds"] >= doc["uptime_seconds"]
                assert later["proxy"]["requests_claimed"] == counters["requests_claimed"] + 1
                assert sum(later["proxy"]["errors"].values()) == 1
                client.close()

    run(scenario(), 20)


def test_status_counts_upstream_failures():
    async def scenario():
        # A port nothing listens on: bind one, note it, close it.
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        async with in_process(f"http://127.0.0.1:{port}", shutdown_grace=1.0) as proxy:
            client = await RawClient.connect(proxy.url)
            res = await client.request("GET", "/index/_doc/1")
            assert res.status == 502
            error = res.json()
            assert error["status"] == 502 and error["error"]["type"]
            doc = (await client.request("GET", "/_selproxy/status")).json()
            assert sum(doc["proxy"]["errors"].values()) == 1, doc["proxy"]
            client.close()

    run(scenario(), 20)
