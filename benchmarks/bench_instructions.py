#!/usr/bin/env python3
"""User-space instructions per passthrough request, selproxy and nginx, under callgrind.

Wall-clock figures on a shared VM move by 20-50 % from one minute to the next; the number of
instructions a proxy executes per request hardly moves at all.  So this is the figure to watch
when a change to the core is meant to save CPU: it is exact to a few per cent with a few
thousand requests, and it compares with nginx on the same responses in the same run.

It counts user space only (callgrind sees no kernel time, which is about the same for both
proxies: the same syscalls per request), and the proxy runs some 50x slower under valgrind,
so its figures say nothing about latency.  One more bias: valgrind counts a ``rep movsb`` copy
byte by byte, so a large memcpy weighs far more here than on the CPU.  selproxy copies each
response body once (httptools hands it over as ``bytes``) and nginx does not, which is most
of the gap on the 20 KB search response.

    python benchmarks/bench_instructions.py                 # small and search, ~2 min
    python benchmarks/bench_instructions.py --cases small --setups selproxy

Needs valgrind (Debian: apt-get install valgrind), nginx and wrk.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_passthrough import (  # noqa: E402
    CASES, PROXY_SERVER, SEARCH_REQUEST_BODY, UPSTREAM_SERVER, WRK_LUA, Service,
    free_port, log, nginx_config, run_wrk, write_upstream_files,
)


def callgrind_total(path: Path) -> int:
    """The ``totals:`` line of a callgrind dump: instructions executed."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def passed_requests(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_selproxy/status", timeout=30) as reply:
        return int(json.load(reply)["proxy"]["requests_passed"])


def worker_pid(port: int) -> int:
    """The worker that serves (selproxy's master forks it; callgrind follows
    the fork and counts each process apart)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_selproxy/status", timeout=30) as reply:
        return int(json.load(reply)["pid"])


def measure(setup: str, case_name: str, upstream_port: int, tmp: Path, logdir: Path,
            args: argparse.Namespace) -> Dict[str, float]:
    case = CASES[case_name]
    port = free_port()
    out = tmp / f"cg-{setup}-{case_name}"
    out.mkdir()
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p"]
    if setup == "selproxy":
        argv = [*valgrind, sys.executable, *shlex.split(args.selproxy)[-1:], "--listen",
                f"127.0.0.1:{port}", "--upstream", f"http://127.0.0.1:{upstream_port}",
                "--workers", "1", "--log-level", "WARNING", "--ranker", "none"]
    else:
        workdir = tmp / f"nginx-{case_name}"
        workdir.mkdir()
        conf = nginx_config(workdir, PROXY_SERVER, PORT=port, UPSTREAM_PORT=upstream_port)
        # One process, so that callgrind sees the worker itself.
        conf.write_text(conf.read_text().replace("master_process on;", "master_process off;"))
        argv = [*valgrind, "nginx", "-c", str(conf)]
    service = Service(f"{setup}-{case_name}", argv, logdir)
    try:
        service.wait_listening(port, timeout=180)
        run_wrk(port, case, args.conns, 3, None, tmp)          # warm-up, not counted
        before = passed_requests(port) if setup == "selproxy" else 0
        pid = worker_pid(port) if setup == "selproxy" else service.pid
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True,
                       capture_output=True, timeout=60)
        result = run_wrk(port, case, args.conns, args.duration, None, tmp)
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True,
                       capture_output=True, timeout=60)
        # selproxy counts what it passed (the status request is not counted, and
        # comes after the dump); nginx is taken at wrk's word.
        requests = (passed_requests(port) - before) if setup == "selproxy" else result["requests"]
        time.sleep(0.5)
        dumps = sorted(out.glob(f"cg.{pid}.*"))
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump for {setup} in {out}")
        total = callgrind_total(dumps[-1])
    finally:
        service.stop()
    return {"requests": requests, "instructions": total, "per_request": total / max(requests, 1)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="small,search", help="small,big,search")
    parser.add_argument("--setups", default="selproxy,nginx", help="selproxy,nginx")
    parser.add_argument("--conns", type=int, default=8, help="wrk connections")
    parser.add_argument("--duration", type=int, default=8, help="seconds of counted load")
    parser.add_argument("--selproxy", default=str(Path(__file__).resolve().parent / "serve_one_worker.py"),
                        metavar="CMD",
                        help="the script that serves (run under this Python and valgrind); by default "
                             "serve_one_worker.py, a worker without its master, which callgrind_control "
                             "could not reach")
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "nginx", "wrk"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="selproxy-instr-"))
    logdir = tmp / "logs"
    logdir.mkdir()
    (tmp / "bench.lua").write_text(WRK_LUA)
    (tmp / "request-body.json").write_bytes(SEARCH_REQUEST_BODY)
    write_upstream_files(tmp / "www")
    upstream_port = free_port()
    (tmp / "upstream").mkdir()
    conf = nginx_config(tmp / "upstream", UPSTREAM_SERVER, PORT=upstream_port, WWW=tmp / "www")
    upstream = Service("upstream", ["nginx", "-c", str(conf)], logdir)
    rows: List[str] = []
    try:
        upstream.wait_listening(upstream_port)
        for case_name in args.cases.split(","):
            figures = {}
            for setup in args.setups.split(","):
                log(f"{case_name}: {setup} under callgrind")
                figures[setup] = measure(setup, case_name, upstream_port, tmp, logdir, args)
            ratio = (f"{figures['selproxy']['per_request'] / figures['nginx']['per_request']:.2f}"
                     if {"selproxy", "nginx"} <= figures.keys() else "–")
            for setup, got in figures.items():
                rows.append(f"| {case_name} | {setup} | {got['requests']:,} | "
                            f"{got['per_request']:,.0f} | {ratio if setup == 'selproxy' else ''} |")
    finally:
        upstream.stop()
    print(f"wrk -c{args.conns}, {args.duration} s counted; selproxy command: {args.selproxy}\n")
    print("| response | proxy | requests | user-space instructions per request | selproxy / nginx |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(rows))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
