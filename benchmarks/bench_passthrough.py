"""Passthrough benchmark: selproxy (1 worker) against the upstream hit directly and against
nginx as a reverse proxy with an upstream keep-alive pool, all in one run.

An nginx upstream on 127.0.0.1 serves three responses:

* ``small``:  ``GET /small``, about 200 bytes of JSON;
* ``big``:    ``GET /big``, 1 MiB;
* ``search``: ``POST /idx/_search``, an Elasticsearch-shaped response with 50 hits (~20 KB).

wrk loads each (response, connections) cell for ``--duration`` seconds, once per round, the
setups taking turns within a cell so that a burst of background load hits all of them alike;
each figure is the median over ``--rounds``. Before measuring, every setup's responses are
checked against the upstream's (status, body, and that the connection is kept alive).
Then a fresh selproxy holds ``--idle-conns`` idle keep-alive connections while its RSS is read,
and (when perf is installed) ``perf record`` samples selproxy at 64 connections.

    python benchmarks/bench_passthrough.py                 # markdown table and targets
    python benchmarks/bench_passthrough.py --json out.json # also the raw numbers
    python benchmarks/bench_passthrough.py --cases small --conns 64 --rounds 1 --duration 2

Only 127.0.0.1 is contacted. Every process is started in its own session and stopped by its
PID; every wrk run is bounded by ``-d`` and a subprocess timeout.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
NGINX_TEMPLATE = HERE / "nginx.conf.in"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SETUPS = ("direct", "selproxy", "nginx")
MiB = 1 << 20

# ---------------------------------------------------------------------------------------------
# What the upstream serves
# ---------------------------------------------------------------------------------------------

# The body of Elasticsearch's `GET /`, trimmed to about 200 bytes.
SMALL_BODY = (
    b'{"name":"es-bench-1","cluster_name":"selproxy-bench","cluster_uuid":"q1Wc8Zk3Tn2yYH0vR7u5aA",'
    b'"version":{"number":"8.15.0","lucene_version":"9.11.1"},"tagline":"You Know, for Search"}'
)
SEARCH_REQUEST_BODY = b'{"size":50,"query":{"match":{"body":"boundary layer transition"}}}'
_VOCABULARY = (
    "boundary layer flow pressure gradient laminar turbulent transition wing surface heat "
    "transfer shock wave supersonic subsonic nozzle jet compressible viscous separation "
    "airfoil lift drag velocity profile measurement theory experiment model reynolds number"
).split()


def search_response_body(hits: int = 50, seed: int = 2) -> bytes:
    """An Elasticsearch 8 `_search` response with `hits` hits of about 400 bytes each."""
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(_VOCABULARY) for _ in range(n))

    documents = []
    score = 31.5
    for rank in range(hits):
        score -= rng.uniform(0.05, 0.5)
        documents.append({
            "_index": "idx", "_id": str(rng.randrange(1, 10**7)), "_score": round(score, 5),
            "_source": {"title": words(7), "body": words(40), "year": 1950 + rank % 20,
                        "url": f"https://docs.example.org/cran/{rng.randrange(10**5)}"},
        })
    response = {
        "took": 4, "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {"total": {"value": 1400, "relation": "eq"}, "max_score": documents[0]["_score"],
                 "hits": documents},
    }
    return json.dumps(response, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    request_body: Optional[bytes] = None


CASES = {
    "small": Case("small", "GET", "/small"),
    "big": Case("big", "GET", "/big"),
    "search": Case("search", "POST", "/idx/_search", SEARCH_REQUEST_BODY),
}

# nginx answers a POST to a static file with 405; the error_page turns that into an internal
# GET of the canned search response, which also discards the request body properly.
UPSTREAM_SERVER = """
    sendfile on;
    server {
        listen 127.0.0.1:@PORT@ backlog=4096;
        root @WWW@;
        location = /small { default_type application/json; alias @WWW@/small.json; }
        location = /big { default_type application/octet-stream; alias @WWW@/big.bin; }
        location ~ ^/[^/_][^/]*/_search$ { error_page 405 =200 /search.json; return 405; }
        location = /search.json { internal; default_type application/json; }
    }
"""
# The reference: nginx's usual keep-alive reverse proxy. proxy_max_temp_file_size 0 makes it
# stream a 1 MiB response through its buffers instead of spooling it to disk.
PROXY_SERVER = """
    upstream engine {
        server 127.0.0.1:@UPSTREAM_PORT@;
        keepalive 128;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:@PORT@ backlog=4096;
        location / {
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }
    }
"""

# wrk script: the request comes from the environment; done() prints one JSON line to parse.
WRK_LUA = r"""
wrk.method = os.getenv("BENCH_METHOD") or "GET"
local body_path = os.getenv("BENCH_BODY")
if body_path and body_path ~= "" then
  local f = assert(io.open(body_path, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"errors":%d,"status_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def write_upstream_files(www: Path) -> Dict[str, bytes]:
    """The upstream's documents; returns each case's expected response body."""
    www.mkdir(parents=True)
    bodies = {"small": SMALL_BODY, "big": random.Random(1).randbytes(MiB),
              "search": search_response_body()}
    (www / "small.json").write_bytes(bodies["small"])
    (www / "big.bin").write_bytes(bodies["big"])
    (www / "search.json").write_bytes(bodies["search"])
    return bodies


def nginx_config(workdir: Path, server_block: str, **values: Any) -> Path:
    """Fill nginx.conf.in for one instance whose files all live in `workdir`."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    for key, value in values.items():
        server_block = server_block.replace(f"@{key}@", str(value))
    # nginx started as root drops its workers to `nobody`, who cannot read a 0700 temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    text = (NGINX_TEMPLATE.read_text().replace("@USER@", user)
            .replace("@SERVER@", server_block).replace("@DIR@", str(workdir)))
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Processes and /proc
# ---------------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pinned(cpu: Optional[int], argv: Sequence[str]) -> List[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)


class Service:
    """A server process started in its own session, so that stopping it by PID also reaches
    the children it forked (nginx's worker, selproxy's workers)."""

    def __init__(self, name: str, argv: Sequence[str], logdir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = logdir / f"{name}.log"
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid

    def pids(self) -> List[int]:
        return process_tree(self.pid)

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is not None:
            return
        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(grace)

    def wait_listening(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see "
                                   f"{self.log_path}: {self.log_path.read_text()[-800:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {port} within {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name, which may itself hold spaces.
    return text[text.rindex(")") + 2:].split()


def process_tree(root: int) -> List[int]:
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def _status_kib(pid: int, key: str) -> int:
    try:
        match = re.search(rf"^{key}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def rss_bytes(pids: Iterable[int]) -> int:
    return sum(_status_kib(pid, "VmRSS") for pid in pids) * 1024


def peak_rss_bytes(pids: Iterable[int]) -> int:
    return sum(_status_kib(pid, "VmHWM") for pid in pids) * 1024


def user_cpu_by_pid() -> Dict[int, float]:
    """CPU seconds of every user-space process (kernel threads, children of kthreadd, are left
    out: softirq work for our own loopback traffic is not background load)."""
    usage = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(entry) != 2 and int(fields[1]) != 2:
                usage[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return usage


def foreign_load(before: Dict[int, float], after: Dict[int, float], ours: Iterable[int],
                 seconds: float) -> float:
    """CPU used by processes other than `ours`, in % of one core."""
    mine = set(ours) | {os.getpid()}
    used = sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items()
               if pid not in mine)
    return 100.0 * used / max(seconds, 1e-6)


class QuietGate:
    """Waits, before each measurement, until other engineers' processes leave the machine
    nearly idle; each wait and the run's total waiting are bounded."""

    def __init__(self, threshold_pct: float, max_wait: float, budget: float) -> None:
        self.threshold_pct, self.max_wait, self.budget = threshold_pct, max_wait, budget
        self.waited = 0.0

    def wait(self, ours: Iterable[int]) -> float:
        ours = list(ours)
        started = time.monotonic()
        while True:
            before, t0 = user_cpu_by_pid(), time.monotonic()
            time.sleep(0.4)
            load = foreign_load(before, user_cpu_by_pid(), ours, time.monotonic() - t0)
            spent = time.monotonic() - started
            if (load <= self.threshold_pct or spent >= self.max_wait
                    or self.waited + spent >= self.budget):
                self.waited += spent
                return load
            time.sleep(0.6)


# ---------------------------------------------------------------------------------------------
# Checks and load
# ---------------------------------------------------------------------------------------------

def exchange(connection: http.client.HTTPConnection, case: Case) -> Tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if case.request_body else {}
    connection.request(case.method, case.path, body=case.request_body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


def verify(port: int, expected: Dict[str, Tuple[int, bytes]], cases: Iterable[str]) -> List[str]:
    """Problems with a setup's responses (status, body, keep-alive); empty when it is right."""
    problems = []
    for name in cases:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            first = exchange(connection, CASES[name])
            sock = connection.sock
            second = exchange(connection, CASES[name])
            for got in (first, second):
                if got != expected[name]:
                    problems.append(f"{name}: got status {got[0]} and {len(got[1])} body bytes, "
                                    f"want {expected[name][0]} and {len(expected[name][1])}")
            if sock is None or connection.sock is not sock:
                problems.append(f"{name}: the connection was not kept alive")
        except (OSError, http.client.HTTPException) as exc:
            problems.append(f"{name}: {exc!r}")
        finally:
            connection.close()
    return problems


def run_wrk(port: int, case: Case, conns: int, duration: int, cpu: Optional[int],
            tmp: Path) -> Dict[str, Any]:
    env = dict(os.environ, BENCH_METHOD=case.method,
               BENCH_BODY=str(tmp / "request-body.json") if case.request_body else "")
    argv = pinned(cpu, ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "5s",
                        "-s", str(tmp / "bench.lua"), f"http://127.0.0.1:{port}{case.path}"])
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 30)
    match = re.search(r"^BENCH_RESULT (\{.*\})$", done.stdout, re.M)
    if not match:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    result: Dict[str, Any] = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def measure_cell(setup: str, port: int, case: Case, conns: int, args: argparse.Namespace,
                 tmp: Path, proxy: Optional[Service], ours: List[int]) -> Dict[str, Any]:
    proxy_pids = proxy.pids() if proxy else []
    cpu_before = cpu_seconds(proxy_pids)
    load_before, t0 = user_cpu_by_pid(), time.monotonic()
    result = run_wrk(port, case, conns, args.duration, args.cpu_load, tmp)
    elapsed = time.monotonic() - t0
    # Only processes alive before and after count: wrk itself has come and gone in between.
    after = user_cpu_by_pid()
    result["background_pct"] = round(foreign_load(
        load_before, {p: c for p, c in after.items() if p in load_before}, ours, elapsed), 1)
    if proxy:
        used = cpu_seconds(proxy_pids) - cpu_before
        result["proxy_cpu_s"] = round(used, 3)
        result["cpu_s_per_10k"] = round(used / max(result["requests"], 1) * 1e4, 4)
    return result


# ---------------------------------------------------------------------------------------------
# Idle keep-alive connections, and the profile
# ---------------------------------------------------------------------------------------------

def read_one_response(sock: socket.socket) -> int:
    """Reads one Content-Length response; returns its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length_header = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if length_header is None:
        raise ConnectionError("response without Content-Length")
    length = int(length_header.group(1))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    return int(head.split(b" ", 2)[1])


def idle_connections_rss(service: Service, port: int, count: int,
                         timeout: float) -> Dict[str, Any]:
    """Opens `count` keep-alive connections to `port`, each after one request, and reads the
    proxy's RSS while they sit idle."""
    deadline = time.monotonic() + timeout
    baseline = rss_bytes(service.pids())
    request = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    socks: List[socket.socket] = []
    failures = 0
    try:
        while len(socks) + failures < count and time.monotonic() < deadline:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                sock.sendall(request)
                if read_one_response(sock) != 200:
                    raise ConnectionError("non-200")
                socks.append(sock)
            except OSError:
                failures += 1
                sock.close()
        time.sleep(1.0)
        held = rss_bytes(service.pids())
        still_open = 0
        for sock in socks:
            sock.setblocking(False)
            try:
                still_open += sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
        return {"connections": len(socks), "failed": failures, "still_open": still_open,
                "rss_before_mib": round(baseline / MiB, 1), "rss_idle_mib": round(held / MiB, 1),
                "kib_per_connection": round((held - baseline) / 1024 / max(len(socks), 1), 2),
                "peak_rss_mib": round(peak_rss_bytes(service.pids()) / MiB, 1)}
    finally:
        for sock in socks:
            sock.close()


def profile(service: Service, port: int, case: Case, args: argparse.Namespace,
            tmp: Path) -> Dict[str, Any]:
    """perf samples selproxy while wrk loads it at 64 connections; returns the top symbols."""
    data = tmp / "perf.data"
    seconds = args.perf
    result: Dict[str, Any] = {}
    load = threading.Thread(target=lambda: result.update(
        wrk=run_wrk(port, case, 64, seconds + 2, args.cpu_load, tmp)))
    load.start()
    time.sleep(0.5)
    # Every process of the tree: selproxy's workers are children of its master.
    subprocess.run(["perf", "record", "-q", "-g", "-F", "1999", "-o", str(data), "-p",
                    ",".join(map(str, service.pids())), "--", "sleep", str(seconds)],
                   capture_output=True, timeout=seconds + 30)
    load.join(seconds + 40)
    report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                             "-g", "none", "--sort", "dso,sym", "--percent-limit", "0.5"],
                            capture_output=True, text=True, timeout=120).stdout
    rows: List[Dict[str, Any]] = []
    for line in report.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
        if match:
            rows.append({"pct": float(match.group(1)), "dso": match.group(2),
                         "symbol": match.group(3).strip()})
    by_dso = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                             "-g", "none", "--sort", "dso", "--percent-limit", "0.5"],
                            capture_output=True, text=True, timeout=120).stdout
    shares = {}
    for line in by_dso.splitlines():
        # A module rebuilt while the proxy runs shows as "<name>.so (deleted)".
        match = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s*$", line)
        if match:
            shares[match.group(2)] = float(match.group(1))
    return {"case": case.name, "seconds": seconds, "by_dso": shares, "top": rows[:40],
            "user_top": [r for r in rows if not r["dso"].startswith("[")][:20]}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def median_of(samples: List[Dict[str, Any]], key: str) -> Optional[float]:
    values = [s[key] for s in samples if key in s]
    return statistics.median(values) if values else None


def summarise(samples: Dict[Tuple[str, str, int], List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    rows = []
    for (setup, case, conns), runs in samples.items():
        rows.append({"setup": setup, "case": case, "conns": conns, "rounds": len(runs),
                     **{key: median_of(runs, key) for key in
                        ("rps", "p50_us", "p99_us", "cpu_s_per_10k", "background_pct")},
                     "errors": sum(r["errors"] + r["status_errors"] for r in runs),
                     "rps_spread": [round(r["rps"]) for r in runs]})
    by_key = {(r["setup"], r["case"], r["conns"]): r for r in rows}
    for row in rows:
        direct = by_key.get(("direct", row["case"], row["conns"]))
        nginx = by_key.get(("nginx", row["case"], row["conns"]))
        row["vs_direct"] = row["rps"] / direct["rps"] if direct else None
        row["vs_nginx"] = row["rps"] / nginx["rps"] if nginx else None
        row["added_p50_us"] = row["p50_us"] - direct["p50_us"] if direct else None
    return rows


def _fmt(value: Optional[float], spec: str) -> str:
    return "–" if value is None else format(value, spec)


def render_table(rows: List[Dict[str, Any]], cases: Sequence[str], conns: Sequence[int]) -> str:
    lines = ["| response | conns | setup | req/s | p50 µs | p99 µs | vs direct | vs nginx "
             "| +p50 µs | proxy CPU s/10k req | bg load % | errors |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {name: i for i, name in enumerate(SETUPS)}
    for row in sorted(rows, key=lambda r: (cases.index(r["case"]), conns.index(r["conns"]),
                                           order[r["setup"]])):
        lines.append(
            f"| {row['case']} | {row['conns']} | {row['setup']} | {_fmt(row['rps'], ',.0f')} "
            f"| {_fmt(row['p50_us'], '.0f')} | {_fmt(row['p99_us'], '.0f')} "
            f"| {_fmt(row['vs_direct'], '.2f')} | {_fmt(row['vs_nginx'], '.2f')} "
            f"| {_fmt(row['added_p50_us'] if row['setup'] != 'direct' else None, '+.0f')} "
            f"| {_fmt(row['cpu_s_per_10k'], '.3f')} | {_fmt(row['background_pct'], '.0f')} "
            f"| {row['errors']} |")
    return "\n".join(lines)


def judge_targets(rows: List[Dict[str, Any]], idle: Optional[Dict[str, Any]],
                  idle_wanted: int) -> List[str]:
    by_key = {(r["setup"], r["case"], r["conns"]): r for r in rows}
    verdicts = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    small = by_key.get(("selproxy", "small", 64))
    if small and small["vs_nginx"] is not None:
        verdicts.append(f"small-response req/s at 64 conns >= 80% of nginx: {small['vs_nginx']:.0%} "
                        f"-> {verdict(small['vs_nginx'] >= 0.8)}")
    big = by_key.get(("selproxy", "big", 64))
    if big and big["vs_nginx"] is not None:
        verdicts.append(f"1 MiB req/s at 64 conns >= nginx: {big['vs_nginx']:.0%} "
                        f"-> {verdict(big['vs_nginx'] >= 1.0)}")
    for case in ("small", "search"):
        one = by_key.get(("selproxy", case, 1))
        if one and one["added_p50_us"] is not None:
            verdicts.append(f"added p50 over direct at 1 conn < 100 µs ({case}): "
                            f"{one['added_p50_us']:+.0f} µs -> {verdict(one['added_p50_us'] < 100)}")
    if idle:
        ok = idle["still_open"] >= max(idle_wanted, 1000) and idle["rss_idle_mib"] < 64
        verdicts.append(f"RSS < 64 MiB with 1,000 idle keep-alive conns: {idle['rss_idle_mib']} MiB "
                        f"with {idle['still_open']} of {idle_wanted} still open -> {verdict(ok)}")
    return verdicts


def default_selproxy() -> str:
    """The selproxy script of the interpreter running this benchmark: a
    bare ``selproxy`` would be whichever PATH finds first, which on a
    machine with several environments measured an older build here."""
    beside = Path(sys.executable).parent / "selproxy"
    return shlex.quote(str(beside)) if beside.exists() else "selproxy"


def versions() -> Dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("selproxy", "Cython", "uvloop", "httptools"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "absent"
    for tool, argv in (("nginx", ["nginx", "-v"]), ("wrk", ["wrk", "-v"])):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        found[tool] = (out.stdout + out.stderr).splitlines()[0].strip() if out.stdout + out.stderr else "?"
    cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    found["cpu"] = cpu.group(1) if cpu else platform.processor()
    found["nproc"] = str(os.cpu_count())
    commit = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, timeout=10)
    found["commit"] = commit.stdout.strip() if commit.returncode == 0 else "uncommitted"
    return found


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def ensure_tools(need_pinning: bool) -> None:
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    packages = {"nginx": "nginx-light", "wrk": "wrk"}
    if need_pinning and shutil.which("taskset") is None:
        missing.append("taskset")
        packages["taskset"] = "util-linux"
    if not missing:
        return
    log(f"installing {', '.join(missing)} from Debian")
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*prefix, "apt-get", "update", "-q"], check=True, env=env, timeout=600)
    subprocess.run([*prefix, "apt-get", "install", "-y", "-q", *(packages[t] for t in missing)],
                   check=True, env=env, timeout=900)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell; the median is kept")
    parser.add_argument("--cases", default="small,big,search", help="responses: small,big,search")
    parser.add_argument("--conns", default="1,64", help="wrk connection counts")
    parser.add_argument("--setups", default=",".join(SETUPS), help="direct,selproxy,nginx")
    parser.add_argument("--selproxy", default=default_selproxy(), metavar="CMD",
                        help="the selproxy command (given --listen, --upstream, --workers); by "
                        "default the one installed beside this Python, not whichever is first on PATH")
    parser.add_argument("--workers", type=int, default=1, help="selproxy --workers")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk per setup and "
                        "response before measuring (0: none)")
    parser.add_argument("--pin", choices=("split", "same", "none"), default="split",
                        help="split: the proxy on core 1, wrk and the upstream on core 0 (the "
                        "default; throughput); same: all on core 0, so no request crosses cores "
                        "(the proxy's own added latency); none: no pinning")
    parser.add_argument("--no-pin", dest="pin", action="store_const", const="none",
                        help="the same as --pin none")
    parser.add_argument("--quiet-threshold", type=float, default=20.0, metavar="PCT",
                        help="background load (%% of a core) under which the machine is quiet")
    parser.add_argument("--quiet-wait", type=float, default=15.0, metavar="S",
                        help="longest wait for quiet before one measurement")
    parser.add_argument("--quiet-budget", type=float, default=180.0, metavar="S",
                        help="longest total wait for quiet in the run")
    parser.add_argument("--idle-conns", type=int, default=1000,
                        help="idle keep-alive connections for the RSS check (0: skip)")
    parser.add_argument("--perf", type=int, default=4, metavar="S",
                        help="seconds of perf record on selproxy at 64 conns (0: skip)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw numbers as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = parser.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    args.conns = [int(c) for c in args.conns.split(",") if c]
    args.setups = [s for s in args.setups.split(",") if s]
    for name in args.cases:
        if name not in CASES:
            parser.error(f"unknown case {name!r}")
    for name in args.setups:
        if name not in SETUPS:
            parser.error(f"unknown setup {name!r}")
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    args.cpu_load = None if args.pin == "none" else 0
    args.cpu_proxy = {"split": 1, "same": 0, "none": None}[args.pin]
    args.pin = args.pin != "none"
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    ensure_tools(args.pin)
    if args.pin:
        if not {0, 1} <= os.sched_getaffinity(0):
            sys.exit("pinning needs cores 0 and 1; use --no-pin")
        os.sched_setaffinity(0, {args.cpu_load})  # the driver shares wrk's core, not the proxy's
    tmp = Path(tempfile.mkdtemp(prefix="selproxy-bench-"))
    logdir = tmp / "logs"
    logdir.mkdir()
    (tmp / "bench.lua").write_text(WRK_LUA)
    (tmp / "request-body.json").write_bytes(SEARCH_REQUEST_BODY)
    bodies = write_upstream_files(tmp / "www")
    started = dt.datetime.now(dt.timezone.utc)
    services: List[Service] = []
    meta: Dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "argv": sys.argv,
                            **versions(), "tmp": str(tmp)}
    log(f"work dir {tmp}")
    try:
        upstream_port = free_port()
        upstream_dir = tmp / "upstream"
        upstream_dir.mkdir()
        conf = nginx_config(upstream_dir, UPSTREAM_SERVER, PORT=upstream_port, WWW=tmp / "www")
        upstream = Service("upstream", pinned(args.cpu_load, ["nginx", "-c", str(conf)]), logdir)
        services.append(upstream)
        upstream.wait_listening(upstream_port)
        expected = {name: (200, bodies[name]) for name in CASES}
        problems = verify(upstream_port, expected, CASES)
        if problems:
            raise RuntimeError(f"the upstream itself is wrong: {problems}")

        ports: Dict[str, int] = {"direct": upstream_port}
        proxies: Dict[str, Service] = {}
        for setup in args.setups:
            if setup == "direct":
                continue
            port = free_port()
            if setup == "selproxy":
                argv = [*shlex.split(args.selproxy), "--listen", f"127.0.0.1:{port}",
                        "--upstream", f"http://127.0.0.1:{upstream_port}",
                        "--workers", str(args.workers),
                        # The core against nginx: the search case passes through too.
                        "--ranker", "none"]
            else:
                workdir = tmp / "nginx-proxy"
                workdir.mkdir()
                conf = nginx_config(workdir, PROXY_SERVER, PORT=port, UPSTREAM_PORT=upstream_port)
                argv = ["nginx", "-c", str(conf)]
            service = Service(setup, pinned(args.cpu_proxy, argv), logdir)
            services.append(service)
            service.wait_listening(port)
            ports[setup], proxies[setup] = port, service

        setups = []
        for setup in args.setups:
            problems = verify(ports[setup], expected, args.cases)
            if problems:
                log(f"{setup} answers wrongly, not measured: {problems}")
                meta.setdefault("verify_failures", {})[setup] = problems
            else:
                setups.append(setup)
        ours = [pid for service in services for pid in service.pids()]

        if args.warmup:
            for setup in setups:
                for name in args.cases:
                    run_wrk(ports[setup], CASES[name], 64, args.warmup, args.cpu_load, tmp)

        gate = QuietGate(args.quiet_threshold, args.quiet_wait, args.quiet_budget)
        samples: Dict[Tuple[str, str, int], List[Dict[str, Any]]] = {}
        for round_no in range(args.rounds):
            # Each round starts with a different setup, so none always follows the heaviest one.
            order = setups[round_no % len(setups):] + setups[:round_no % len(setups)]
            for name in args.cases:
                for conns in args.conns:
                    for setup in order:
                        quiet = gate.wait(ours)
                        result = measure_cell(setup, ports[setup], CASES[name], conns, args, tmp,
                                              proxies.get(setup), ours)
                        result["load_before_pct"] = round(quiet, 1)
                        samples.setdefault((setup, name, conns), []).append(result)
                        log(f"round {round_no + 1}/{args.rounds} {name:6} c={conns:<3} {setup:8} "
                            f"{result['rps']:>10,.0f} req/s  p50 {result['p50_us']} µs  "
                            f"bg {result['background_pct']:.0f}%")
        meta["quiet_wait_total_s"] = round(gate.waited, 1)
        peaks = {setup: round(peak_rss_bytes(service.pids()) / MiB, 1)
                 for setup, service in proxies.items()}

        idle = None
        if args.idle_conns and "selproxy" in args.setups:
            port = free_port()
            fresh = Service("selproxy-idle", pinned(args.cpu_proxy, [
                *shlex.split(args.selproxy), "--listen", f"127.0.0.1:{port}",
                "--upstream", f"http://127.0.0.1:{upstream_port}", "--workers", "1",
                # Passthrough only, as the measured proxy: the default ranker's
                # model, loading in the background, was counted as connections.
                "--ranker", "none"]), logdir)
            services.append(fresh)
            fresh.wait_listening(port)
            idle = idle_connections_rss(fresh, port, args.idle_conns, timeout=120)
            fresh.stop()

        perf = None
        if args.perf and "selproxy" in proxies and shutil.which("perf"):
            perf_case = CASES["small" if "small" in args.cases else args.cases[0]]
            try:
                perf = profile(proxies["selproxy"], ports["selproxy"], perf_case, args, tmp)
            except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
                perf = {"error": repr(exc)}
    finally:
        for service in reversed(services):
            service.stop()

    rows = summarise(samples)
    targets = judge_targets(rows, idle, args.idle_conns)
    print(f"## {started:%Y-%m-%d %H:%M} UTC, {meta['nproc']} x {meta['cpu']}, Python {meta['python']}, "
          f"Cython {meta['Cython']}, uvloop {meta['uvloop']}, httptools {meta['httptools']}, "
          f"{meta['nginx']}, {meta['wrk'].split(' Copyright')[0]}, commit {meta['commit']}; "
          f"selproxy command: {args.selproxy}\n")
    print(f"Median of {args.rounds} rounds of {args.duration} s; proxy pinned to core "
          f"{args.cpu_proxy}, wrk and upstream to core {args.cpu_load}; waited "
          f"{meta['quiet_wait_total_s']} s for quiet.\n")
    print(render_table(rows, args.cases, args.conns))
    print("\nPeak RSS under load (VmHWM): " + ", ".join(f"{k} {v} MiB" for k, v in peaks.items()))
    if idle:
        print(f"Idle keep-alive: {idle['connections']} connections (failed {idle['failed']}, still "
              f"open {idle['still_open']}): selproxy RSS {idle['rss_before_mib']} -> "
              f"{idle['rss_idle_mib']} MiB ({idle['kib_per_connection']} KiB per connection)")
    if meta.get("verify_failures"):
        print(f"Not measured (wrong responses): {meta['verify_failures']}")
    print("\nTargets (selproxy, 1 worker, this run):")
    for line in targets:
        print(f"- {line}")
    if perf and "top" in perf:
        print(f"\nperf, selproxy at 64 conns ({perf['case']}), self % of its samples. By module: "
              + ", ".join(f"{dso} {pct:.1f}%" for dso, pct in perf["by_dso"].items()))
        print("Top symbols overall, then in user space:")
        for row in perf["top"][:10] + [{"pct": 0, "dso": "--", "symbol": ""}] + perf["user_top"]:
            print(f"  {row['pct']:5.1f}%  {row['dso']:<40} {row['symbol']}")
    elif perf:
        print(f"\nperf failed: {perf['error']}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"meta": meta, "rows": rows, "peak_rss_mib": peaks, "idle": idle, "perf": perf,
             "targets": targets, "samples": {"|".join(map(str, k)): v for k, v in samples.items()}},
            indent=1))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
