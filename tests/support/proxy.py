"""Start selproxy for a test: in-process on the test's loop, or as a
subprocess running the real command line (for the CLI, workers and signals)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import List, Optional

import selproxy

LISTENING = re.compile(r"selproxy listening on (http://\S+?),.*\(pid (\d+)\)")


def in_process(upstream: str, **options) -> selproxy.Proxy:
    """``async with in_process(up.url) as proxy: proxy.url``"""
    options.setdefault("listen", "127.0.0.1:0")
    return selproxy.Proxy(upstream=upstream, **options)


class ProxyProcess:
    """``with ProxyProcess(["--upstream", url]) as p: p.url``: runs
    ``python -m selproxy`` and waits for its "listening" line."""

    def __init__(self, args: List[str], timeout: float = 20.0, *,
                 passthrough_only: bool = True) -> None:
        self.args = args
        self.passthrough_only = passthrough_only
        self.timeout = timeout
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""
        #: The worker that said it listens first (the process that serves,
        #: under the master that proc.pid is).
        self.worker_pid = 0
        self.lines: List[str] = []

    def __enter__(self) -> "ProxyProcess":
        argv = [sys.executable, "-m", "selproxy", *self.args]
        # The core's tests run passthrough only unless they name a ranker:
        # the default neural ranker would load a model in every worker.
        if self.passthrough_only and "--ranker" not in self.args:
            argv += ["--ranker", "none"]
        if "--listen" not in self.args:
            argv += ["--listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.timeout
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("selproxy exited early:\n" + "".join(self.lines))
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.url = match.group(1)
                self.worker_pid = int(match.group(2))
                return self
        self.stop()
        raise RuntimeError("selproxy did not start:\n" + "".join(self.lines))

    def wait_for_workers(self, workers: int, timeout: float = 10.0) -> None:
        """Read the log until every worker has said it listens (the first
        one already has when the ``with`` block starts)."""
        assert self.proc is not None and self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while sum("selproxy listening on" in line for line in self.lines) < workers:
            assert time.monotonic() < deadline, "".join(self.lines)
            line = self.proc.stderr.readline()
            assert line, "selproxy exited:\n" + "".join(self.lines)
            self.lines.append(line)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self.proc.stderr is not None:
            self.lines.extend(self.proc.stderr.readlines())
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class LoggedProxy:
    """``python -m selproxy`` with its stderr (and stdout) in files, for the
    tests of a long-running master: reload, restart, shutdown and logs.
    :meth:`wait_for` polls the log, so a wait is bounded however quiet the
    process is.  ``env`` is added to the environment."""

    def __init__(self, args: List[str], tmp_path, env: Optional[dict] = None,
                 timeout: float = 30.0, passthrough_only: bool = True,
                 script: Optional[str] = None, listen_flag: bool = True) -> None:
        self.args = list(args)
        #: A Python file to run instead of ``-m selproxy`` (args go to it as they are).
        self.script = script
        if script is None and passthrough_only and "--ranker" not in self.args:
            self.args += ["--ranker", "none"]
        if script is None and listen_flag and "--listen" not in self.args:
            self.args += ["--listen", "127.0.0.1:0"]
        self.err_path = tmp_path / f"selproxy-{id(self)}.err"
        self.out_path = tmp_path / f"selproxy-{id(self)}.out"
        self.env = dict(os.environ, **(env or {}))
        self.timeout = timeout
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""

    def __enter__(self) -> "LoggedProxy":
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            command = [self.script] if self.script else ["-m", "selproxy"]
            self.proc = subprocess.Popen([sys.executable, *command, *self.args], stdout=out,
                                         stderr=err, stdin=subprocess.DEVNULL, env=self.env)
        match = self.wait_for(LISTENING.pattern, self.timeout)
        self.url = match.group(1)
        return self

    @property
    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20.0, count: int = 1, stream: str = "err"):
        """The ``count``-th match of ``pattern`` in the log, once it is there."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log if stream == "err" else self.out
            found = list(re.finditer(pattern, text))
            if len(found) >= count:
                return found[count - 1]
            assert self.proc is not None
            if self.proc.poll() is not None:
                text = self.log if stream == "err" else self.out
                found = list(re.finditer(pattern, text))
                if len(found) >= count:
                    return found[count - 1]
                raise AssertionError(f"selproxy exited ({self.proc.returncode}) before "
                                     f"{pattern!r}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.log}")
            time.sleep(0.02)

    def worker_pids(self) -> List[int]:
        """The live children of the master."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as children:
            return [int(pid) for pid in children.read().split()]

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
