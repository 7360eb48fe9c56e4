"""The master process: SIGHUP reloads (a good configuration replaces the
workers with no request lost; a bad one is refused and the old workers go on),
a killed worker is started again, and SIGTERM keeps accepting for
--shutdown-delay before it drains.  Real processes, real loopback sockets."""
import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Tuple
from urllib.parse import urlsplit

from support.aio import run
from support.proxy import LoggedProxy, in_process
from support.rawhttp import RawClient
from support.thread_upstream import echo_upstream
from support.upstream import RecordingUpstream, echo


def get(url: str, target: str = "/", timeout: float = 10.0) -> Tuple[int, bytes]:
    """One request on a new connection (so each one goes through accept)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", target, headers={"Connection": "close"})
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def status(url: str) -> dict:
    code, body = get(url, "/_selproxy/status")
    assert code == 200
    return json.loads(body)


class Traffic:
    """A client looping requests through the proxy in a thread, each on a
    new connection, until stopped (at most ``limit`` requests)."""

    def __init__(self, url: str, limit: int = 5000) -> None:
        self.url = url
        self.limit = limit
        self.ok = 0
        self.failures: List[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        for n in range(self.limit):
            if self.stopped.is_set():
                return
            try:
                code, body = get(self.url, f"/loop/{n}")
                if code == 200 and json.loads(body)["target"] == f"/loop/{n}":
                    self.ok += 1
                else:
                    self.failures.append(f"{n}: {code} {body[:80]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{n}: {exc!r}")

    def __enter__(self) -> "Traffic":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(30)

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.ok
        while self.ok < start + count:
            assert time.monotonic() < deadline, f"only {self.ok - start} requests in {timeout}s"
            assert not self.failures, self.failures
            time.sleep(0.01)


@contextlib.contextmanager
def two_workers_from_a_file(tmp_path: Path, text: str, **options: Any) -> Iterator[Tuple[LoggedProxy, Path]]:
    """The proxy as a process over an echo upstream, configured by the file
    it yields with it (``text``, for two workers), which a test rewrites
    before a SIGHUP; yields once both workers listen."""
    config = tmp_path / "selproxy.toml"
    config.write_text(text)
    with echo_upstream() as up:
        with LoggedProxy(["--upstream", up.url, "--config", str(config)], tmp_path, **options) as proxy:
            proxy.wait_for("selproxy listening on", count=2)
            yield proxy, config


def test_sighup_reloads_a_new_configuration_with_no_request_lost(tmp_path):
    with two_workers_from_a_file(tmp_path, "workers = 2\nheader-timeout = 9.0\n") as (proxy, config):
        old = sorted(proxy.worker_pids())
        assert len(old) == 2
        with Traffic(proxy.url) as traffic:
            traffic.wait_for(20)
            config.write_text("workers = 2\nheader-timeout = 7.0\n")
            proxy.signal(signal.SIGHUP)
            proxy.wait_for(r"SIGHUP: reloaded: workers (\d+), (\d+) serve the new configuration")
            # The client goes on through the new workers, with nothing lost.
            traffic.wait_for(20)
        assert traffic.failures == [], traffic.failures
        new = sorted(int(pid) for pid in proxy.wait_for(
            r"SIGHUP: reloaded: workers (\d+), (\d+)").groups())
        assert not set(new) & set(old)
        # The old workers drain and exit; the new ones have the new values.
        deadline = time.monotonic() + 15
        while set(proxy.worker_pids()) & set(old):
            assert time.monotonic() < deadline, proxy.log
            time.sleep(0.05)
        assert sorted(proxy.worker_pids()) == new
        for _ in range(4):
            page = status(proxy.url)
            assert page["pid"] in new and page["config"]["header_timeout"] == 7.0
        proxy.signal(signal.SIGTERM)
        assert proxy.wait() == 0, proxy.log


def test_readiness_stays_200_through_a_reload_while_a_replaced_worker_drains(tmp_path):
    # A worker a reload replaced retires: its drain is not the group's, so a
    # load balancer never takes the proxy out for a configuration change.
    text = "workers = 2\nshutdown-grace = 20.0\nbody-timeout = 30.0\n"
    with two_workers_from_a_file(tmp_path, text) as (proxy, config):
        deadline = time.monotonic() + 20
        while get(proxy.url, "/_selproxy/readyz")[0] != 200:
            assert time.monotonic() < deadline, proxy.log
            time.sleep(0.05)
        parts = urlsplit(proxy.url)
        # A request an old worker holds (half its body sent): that
        # worker drains until it ends.
        held = socket.create_connection((parts.hostname, parts.port), timeout=30)
        held.sendall(b"POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        page = status(proxy.url)
        deadline = time.monotonic() + 10
        while sum(w["proxy"]["requests_passed"] for w in page["workers"]["each"]) < 1:
            assert time.monotonic() < deadline, page
            time.sleep(0.05)
            page = status(proxy.url)
        proxy.signal(signal.SIGHUP)
        proxy.wait_for(r"SIGHUP: reloaded: workers (\d+), (\d+)")
        retiring = []
        deadline = time.monotonic() + 10
        while not retiring:
            assert time.monotonic() < deadline, status(proxy.url)
            retiring = [w for w in status(proxy.url)["workers"]["each"]
                        if w["state"] == "retiring" and w["alive"]]
        answers = [get(proxy.url, "/_selproxy/readyz") for _ in range(10)]
        assert [code for code, _ in answers] == [200] * 10, answers
        held.sendall(b"67890")
        try:
            reply = held.recv(65536)
        except OSError as exc:
            raise AssertionError(proxy.log) from exc
        assert reply.startswith(b"HTTP/1.1 200"), reply
        held.close()
        proxy.signal(signal.SIGTERM)
        assert proxy.wait() == 0, proxy.log


def test_sighup_with_a_bad_configuration_is_refused_and_the_old_workers_serve_on(tmp_path):
    with two_workers_from_a_file(tmp_path, 'workers = 2\nranker = "none"\n',
                                 passthrough_only=False) as (proxy, config):
        old = sorted(proxy.worker_pids())
        with Traffic(proxy.url) as traffic:
            traffic.wait_for(10)
            # A key that is not one: refused in the master, nothing forked.
            config.write_text("workers = 2\nheder-timeout = 7.0\n")
            proxy.signal(signal.SIGHUP)
            line = proxy.wait_for(r".*SIGHUP: reload refused.*").group(0)
            assert (f"SIGHUP: reload refused: {config}: unknown key 'heder-timeout' "
                    "(did you mean 'header-timeout'?); the workers keep the configuration "
                    "they have") in line
            traffic.wait_for(10)
            # A ranker that cannot be built: the new workers fail as they
            # start, and the old ones are not touched.
            missing = tmp_path / "no-model"
            config.write_text(f'workers = 2\nranker = "cross-encoder"\nmodel-dir = "{missing}"\n')
            proxy.signal(signal.SIGHUP)
            line = proxy.wait_for(r".*SIGHUP: reload failed.*", timeout=60).group(0)
            assert (f"a new worker could not start: cannot build the ranker 'cross-encoder': "
                    f"no model directory at {missing}") in line
            assert line.endswith("the old workers keep serving")
            traffic.wait_for(10)
        assert traffic.failures == [], traffic.failures
        assert sorted(proxy.worker_pids()) == old
        assert "Traceback" not in proxy.log


def test_a_killed_worker_is_started_again(tmp_path):
    with echo_upstream() as up:
        with LoggedProxy(["--upstream", up.url, "--workers", "2"], tmp_path) as proxy:
            proxy.wait_for("selproxy listening on", count=2)
            first, second = sorted(proxy.worker_pids())
            os.kill(first, signal.SIGKILL)
            proxy.wait_for(rf"worker \d \(pid {first}\) was killed by SIGKILL; starting it again in 0.1s")
            proxy.wait_for("selproxy listening on", count=3)
            pids = proxy.worker_pids()
            assert len(pids) == 2 and second in pids and first not in pids
            for _ in range(6):
                assert get(proxy.url, "/after")[0] == 200


def test_sigterm_accepts_during_the_delay_then_drains(tmp_path):
    with echo_upstream() as up:
        with LoggedProxy(["--upstream", up.url, "--shutdown-delay", "3"], tmp_path) as proxy:
            assert get(proxy.url)[0] == 200
            signalled = time.monotonic()
            proxy.signal(signal.SIGTERM)
            proxy.wait_for("SIGTERM: not ready; still accepting for 3.0s, then draining")
            # New connections are still taken during the delay ...
            served = 0
            while time.monotonic() - signalled < 1.0:
                assert get(proxy.url, "/during")[0] == 200
                served += 1
            assert served >= 1
            # ... then the proxy drains and exits, and refuses connections.
            assert proxy.wait(15) == 0, proxy.log
            assert time.monotonic() - signalled >= 3.0
            try:
                get(proxy.url, timeout=2)
                raise AssertionError("still accepting after the exit")
            except OSError:
                pass


def test_sigint_and_a_second_sigterm_skip_the_delay(tmp_path):
    with echo_upstream() as up:
        for signals in ([signal.SIGINT], [signal.SIGTERM, signal.SIGTERM]):
            with LoggedProxy(["--upstream", up.url, "--shutdown-delay", "30"], tmp_path) as proxy:
                signalled = time.monotonic()
                for n, signum in enumerate(signals):
                    if n:
                        proxy.wait_for("still accepting for 30.0s")
                    proxy.signal(signum)
                assert proxy.wait(15) == 0, proxy.log
                assert time.monotonic() - signalled < 10


def test_draining_is_set_when_the_delay_starts(tmp_path):
    """``Proxy.draining`` (readiness reads it) turns on with the signal,
    while the proxy still serves; a library proxy takes the same signals."""
    async def scenario():
        async with RecordingUpstream(echo) as up:
            proxy = in_process(up.url, shutdown_delay=0.6)
            serving = asyncio.ensure_future(proxy.serve())
            # Listening: serve() has then put its signal handlers in place in
            # the same step (a SIGTERM before would end the test process).
            while proxy._address is None:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert proxy.draining is False
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not proxy.draining:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            client = await RawClient.connect(proxy.url)
            assert (await client.request("GET", "/still")).status == 200
            client.close()
            await asyncio.wait_for(serving, 10)

    run(scenario(), 30)


WORKER_INDEX_SCRIPT = '''
import logging
import os
import sys

from selproxy import Proxy, Response, Route


async def whoami(request, upstream):
    return Response(200, [("Content-Type", "application/json")],
                    ('{"pid": %d, "index": %d}' % (os.getpid(), proxy.worker_index)).encode())

logging.basicConfig(level=logging.INFO)
proxy = Proxy(upstream=sys.argv[1], listen="127.0.0.1:0", workers=2,
              routes=[Route(("GET",), "/whoami", whoami)])
proxy.run()
'''


def test_worker_indices_survive_a_restart_and_a_reload_takes_fresh_ones(tmp_path):
    """The contract the status and metrics rely on: workers 0..N-1, a
    restarted worker keeps its index, a reload's workers take new ones.  A
    library Proxy.run() without a reloader reloads the same configuration."""
    script = tmp_path / "indexed.py"
    script.write_text(WORKER_INDEX_SCRIPT)

    def indices(url: str, want: int) -> dict:
        seen: dict = {}
        deadline = time.monotonic() + 20
        while len(seen) < want:
            assert time.monotonic() < deadline, seen
            who = json.loads(get(url, "/whoami")[1])
            seen[who["pid"]] = who["index"]
        return seen

    with echo_upstream() as up:
        with LoggedProxy([up.url], tmp_path, script=str(script)) as proxy:
            proxy.wait_for("selproxy listening on", count=2)
            first = indices(proxy.url, 2)
            assert sorted(first.values()) == [0, 1]
            killed = next(pid for pid, index in first.items() if index == 1)
            os.kill(killed, signal.SIGKILL)
            proxy.wait_for(rf"worker 1 \(pid {killed}\) was killed by SIGKILL")
            proxy.wait_for("selproxy listening on", count=3)
            after = indices(proxy.url, 2)   # the killed one answers no more
            assert sorted(after.values()) == [0, 1] and killed not in after
            assert sorted(after) == sorted(proxy.worker_pids())
            proxy.signal(signal.SIGHUP)
            proxy.wait_for("SIGHUP: reloaded")
            deadline = time.monotonic() + 15
            while set(proxy.worker_pids()) & set(after):
                assert time.monotonic() < deadline, proxy.log
                time.sleep(0.05)
            assert sorted(indices(proxy.url, 2).values()) == [2, 3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_reload_moves_to_a_new_listening_address(tmp_path):
    first, second = _free_port(), _free_port()
    config = tmp_path / "selproxy.toml"
    config.write_text(f'listen = "127.0.0.1:{first}"\n')
    with echo_upstream() as up:
        with LoggedProxy(["--upstream", up.url, "--config", str(config)], tmp_path,
                         listen_flag=False) as proxy:
            assert proxy.url == f"http://127.0.0.1:{first}"
            old = proxy.worker_pids()
            config.write_text(f'listen = "127.0.0.1:{second}"\n')
            proxy.signal(signal.SIGHUP)
            proxy.wait_for("SIGHUP: reloaded")
            assert get(f"http://127.0.0.1:{second}", "/moved")[0] == 200
            deadline = time.monotonic() + 15
            while set(proxy.worker_pids()) & set(old):
                assert time.monotonic() < deadline, proxy.log
                time.sleep(0.05)
            try:
                get(f"http://127.0.0.1:{first}", timeout=2)
                raise AssertionError("the old address still accepts")
            except ConnectionRefusedError:
                pass
