"""The master process: it holds the listening socket, forks the workers that
accept on it, restarts a worker that dies, reloads on SIGHUP and stops them
on SIGTERM/SIGINT.  :meth:`selproxy.Proxy.run` always runs one, as nginx
does, with any number of workers: a reload and a restart need it.

Signals to the master:

* SIGHUP -- reload, as nginx does: the configuration is read again (the
  command's ``Proxy.reloader``: file and environment; the flags stay),
  checked (parsed, ranker named and built with its options, listening
  address claimed if it changed), and a new generation of workers is forked
  with it.  Once every new worker listens, the old ones get SIGQUIT and
  drain; until then they serve.  A configuration that fails any step is
  refused in one log line, and the old workers go on as they were.  A new
  ``listen`` is bound beside the old one and the old one is closed when the
  new workers serve (clients of the old address are then refused).  A
  SIGHUP while workers start (the first ones, or a reload's) is kept and
  runs once they listen.
* SIGTERM, SIGINT -- passed to every worker (see ``Proxy._on_signal``:
  SIGTERM waits ``shutdown_delay`` first, SIGINT does not); the master
  closes its copy of the socket at once and exits when the workers have.
  A second one is passed on too (a worker then skips what is left of its
  delay).

Workers: a worker that dies is forked again after a backoff, from
:data:`RESPAWN_FIRST` seconds doubling up to :data:`RESPAWN_MAX` while it
keeps dying within :data:`HEALTHY_AFTER` seconds of its start, each time
logged.  At the first start, though, a worker that cannot start (a ranker
that does not build, a model that does not load) stops the proxy with that
one line, as before: nothing has served yet, and a loop of failing workers
would only hide the mistake.

Worker indices (``Proxy.worker_index``): the first workers are 0 to
workers-1; a restarted worker keeps its index; a reload's workers take the
lowest indices no live (or restarting) worker holds, so no two live workers
share one, and indices stay below twice the largest worker count.  An index
is a slot of the shared stats block (:mod:`selproxy.shared_stats`), made
here before the first fork: a worker that takes over a slot goes on from
its counts, so the group's counters never go backwards.

Workers tell the master how they start through a pipe, one line each
(``PID<TAB>KIND<TAB>MESSAGE``, shorter than PIPE_BUF, so lines never mix):
``up`` once listening, or the kind of failure.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Dict, List, Optional, Set, Tuple, Type

from .config import Config
from .rankers.registry import RankerSpecError, RankerUnavailable
from .shared_stats import SharedStats
from .server import (STOP_SIGNALS, ListenError, Proxy, StartFailed, _claim_listen_socket,
                     _warn_unreachable, check_upstream, run_bounded)

__all__ = ("Supervisor", "RESPAWN_FIRST", "RESPAWN_MAX", "HEALTHY_AFTER")

log = logging.getLogger("selproxy")

#: The first restart of a worker that died waits this long; each quick death
#: after it doubles the wait, up to RESPAWN_MAX.
RESPAWN_FIRST = 0.1
RESPAWN_MAX = 30.0
#: A worker that lived this long before dying starts the backoff afresh.
HEALTHY_AFTER = 10.0

#: A worker that cannot start reports its kind; the master raises it again
#: as that class, so the command prints it once with the kind's exit status.
_START_FAILURE_KINDS: Dict[str, Type[Exception]] = {
    "spec": RankerSpecError, "build": RankerUnavailable, "listen": StartFailed}

_MASTER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}


@dataclasses.dataclass
class _Generation:
    """Workers forked from one configuration."""

    number: int
    proxy: Proxy
    sock: socket.socket
    listen: str                         # as configured (port 0 stays 0)
    indices: List[int]
    up: Set[int] = dataclasses.field(default_factory=set)     # indices listening


@dataclasses.dataclass
class _Worker:
    pid: int
    index: int
    generation: _Generation
    started_at: float
    up: bool = False
    stopping: bool = False
    failure: Optional[Tuple[str, str]] = None


class Supervisor:
    """Runs ``proxy`` as a master and its workers; :meth:`run` returns when
    they have all stopped (or raises why the first ones could not start)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        # The figures of all workers (metrics, status, readiness): made
        # before the first fork, so that every worker inherits the block.
        self.shared = SharedStats.for_workers(proxy.config.workers)
        self.workers: Dict[int, _Worker] = {}
        self.current: Optional[_Generation] = None
        self.next: Optional[_Generation] = None      # a reload's, until it serves
        self.generations = 0
        self.started = False                        # every first worker has listened
        self.reload_pending = False                 # a SIGHUP came while workers started
        self.stopping: Optional[int] = None         # the signal passed on to the workers
        self.fatal: Optional[Tuple[str, str]] = None
        self.failed = False
        self.respawns: List[Tuple[float, int, _Generation]] = []
        self.deaths: Dict[int, int] = {}            # quick deaths in a row, per index
        self.signals: List[int] = []
        self.events_read, self.events_write = os.pipe()
        self.wake_read, self.wake_write = os.pipe()
        self.partial = b""

    # -- the master's loop -------------------------------------------------

    def run(self) -> None:
        proxy = self.proxy
        sock = _claim_listen_socket(proxy.config)
        _warn_unreachable(proxy.config, check_upstream(proxy.config))
        first = self._generation(proxy, sock, proxy.config.listen)
        self._install_signals()
        try:
            self.current = first
            for index in first.indices:
                self._fork(first, index)
            self._loop()
        finally:
            self._close_sockets()
            signal.set_wakeup_fd(-1)
            for fd in (self.events_read, self.events_write, self.wake_read, self.wake_write):
                os.close(fd)
        if self.fatal is not None:
            kind, message = self.fatal
            raise _START_FAILURE_KINDS.get(kind, StartFailed)(message)
        if self.failed:
            sys.exit(1)

    def _loop(self) -> None:
        while True:
            self._take_signals()
            self._read_events()
            self._reap()
            if self.stopping is not None and not self.workers:
                return
            timeout = self._respawn_due()
            try:
                select.select([self.events_read, self.wake_read], [], [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries it
                pass

    def _install_signals(self) -> None:
        os.set_blocking(self.wake_write, False)
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.events_read, False)
        signal.set_wakeup_fd(self.wake_write)
        for signum in _MASTER_SIGNALS:
            signal.signal(signum, self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _MASTER_SIGNALS | STOP_SIGNALS)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    def _take_signals(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except BlockingIOError:
            pass
        while self.signals:
            signum = self.signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stop(signum)
            elif signum == signal.SIGHUP:
                self._reload()

    # -- workers -----------------------------------------------------------

    def _generation(self, proxy: Proxy, sock: socket.socket, listen: str) -> _Generation:
        host, port = sock.getsockname()[:2]
        # Every worker serves the port the claim got (port 0 picks one now).
        proxy.config = _replace_listen(proxy.config, host, port)
        count = proxy.config.workers
        held = {w.index for w in self.workers.values()} | {r[1] for r in self.respawns}
        indices = [i for i in range(count + len(held)) if i not in held][:count]
        if indices[-1] >= self.shared.capacity:
            raise ValueError(f"{count} workers beside the {len(held)} running do not fit the "
                             f"{self.shared.capacity} slots of the stats block; restart selproxy")
        proxy.shared_stats = self.shared
        generation = _Generation(self.generations, proxy, sock, listen, indices)
        self.generations += 1
        return generation

    def _fork(self, generation: _Generation, index: int) -> None:
        # The master's own handlers must not run in the child before it has
        # put its own in place: blocked across the fork.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _MASTER_SIGNALS | STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            self._child(generation, index)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self.workers[pid] = _Worker(pid, index, generation, time.monotonic())

    def _child(self, generation: _Generation, index: int) -> None:
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            for signum in STOP_SIGNALS | {signal.SIGCHLD}:
                signal.signal(signum, signal.SIG_DFL)
            # The master reloads; a terminal's hangup reaches the workers too.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            for fd in (self.events_read, self.wake_read, self.wake_write):
                os.close(fd)
            for other in self._sockets():
                if other is not generation.sock:
                    other.close()
            # Stop signals stay blocked until serve() has its handlers.
            signal.pthread_sigmask(signal.SIG_SETMASK, STOP_SIGNALS)
            proxy = generation.proxy
            proxy.worker_index = index
            if proxy.setup_logging is not None:
                proxy.setup_logging()
            run_bounded(_serve(proxy, generation.sock, self._report))
        except (RankerSpecError, RankerUnavailable, ListenError) as exc:
            kind = ("spec" if isinstance(exc, RankerSpecError)
                    else "listen" if isinstance(exc, ListenError) else "build")
            self._report(kind, str(exc))
            code = 1
        except BaseException:
            log.exception("worker failed")
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _report(self, kind: str, message: str) -> None:
        line = f"{os.getpid()}\t{kind}\t{' '.join(message.split())}"
        data = line.encode(errors="replace")[:select.PIPE_BUF - 1] + b"\n"
        os.write(self.events_write, data)

    def _read_events(self) -> None:
        try:
            while True:
                data = os.read(self.events_read, 65536)
                if not data:
                    break
                self.partial += data
        except BlockingIOError:
            pass
        *lines, self.partial = self.partial.split(b"\n")
        for line in lines:
            pid_text, _, rest = line.decode(errors="replace").partition("\t")
            kind, _, message = rest.partition("\t")
            worker = self.workers.get(int(pid_text)) if pid_text.isdigit() else None
            if worker is None:
                continue
            if kind == "up":
                self._worker_up(worker)
            else:
                worker.failure = (kind, message)

    def _worker_up(self, worker: _Worker) -> None:
        worker.up = True
        generation = worker.generation
        generation.up.add(worker.index)
        if generation is self.current and not self.started and \
                generation.up.issuperset(generation.indices):
            self.started = True
            self._pending_reload()
        if generation is self.next and generation.up.issuperset(generation.indices):
            self._reloaded()
            self._pending_reload()

    def _pending_reload(self) -> None:
        if self.reload_pending:
            self.reload_pending = False
            self._reload()

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            # What it wrote before it exited is in the pipe now.
            self._read_events()
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._exited(worker, status)

    def _exited(self, worker: _Worker, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        generation = worker.generation
        generation.up.discard(worker.index)
        if worker.stopping or self.stopping is not None:
            if code != 0 and generation is self.current and self.fatal is None:
                self.failed = True
            return
        how = _how_it_ended(code)
        if worker.failure is not None:
            how = f"could not start: {worker.failure[1]}"
        if generation is self.next:
            self._refuse_next(f"a new worker {how}")
            return
        if generation is not self.current:
            return                          # an old worker, replaced: gone
        if not self.started:
            # The first start: one line, and the proxy stops.
            self.fatal = worker.failure or ("", f"a worker {how}")
            if worker.failure is None:
                self.failed = True
            self._stop(signal.SIGQUIT)
            return
        quick = time.monotonic() - worker.started_at < HEALTHY_AFTER
        deaths = self.deaths.get(worker.index, 0) + 1 if quick else 1
        self.deaths[worker.index] = deaths
        delay = min(RESPAWN_MAX, RESPAWN_FIRST * 2 ** (deaths - 1))
        log.warning("worker %d (pid %d) %s; starting it again in %.1fs",
                    worker.index, worker.pid, how, delay)
        self.respawns.append((time.monotonic() + delay, worker.index, generation))

    def _respawn_due(self) -> Optional[float]:
        """Fork the workers whose backoff is over; seconds to the next one."""
        now = time.monotonic()
        waiting = []
        for when, index, generation in self.respawns:
            if generation is not self.current or self.stopping is not None:
                continue
            if when <= now:
                self._fork(generation, index)
            else:
                waiting.append((when, index, generation))
        self.respawns = waiting
        return max(0.0, min(when for when, _i, _g in waiting) - now) if waiting else None

    def _signal(self, worker: _Worker, signum: int) -> None:
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass

    # -- stop --------------------------------------------------------------

    def _stop(self, signum: int) -> None:
        """Pass ``signum`` to every worker (SIGQUIT: drain now), close the
        listening sockets, restart nothing more."""
        if self.stopping is None:
            self.stopping = signum
            self._close_sockets()
            self.respawns = []
        for worker in self.workers.values():
            worker.stopping = True
            self._signal(worker, signum)

    def _sockets(self) -> List[socket.socket]:
        return [g.sock for g in (self.current, self.next) if g is not None]

    def _close_sockets(self) -> None:
        for sock in self._sockets():
            sock.close()

    # -- reload ------------------------------------------------------------

    def _reload(self) -> None:
        current = self.current
        if self.stopping is not None or current is None:
            return
        if not self.started or self.next is not None:
            # Once they listen (a SIGHUP is never lost, and the file is read
            # when the reload runs: the last one written wins).
            if not self.reload_pending:
                log.info("SIGHUP: the reload waits for the workers that are starting")
            self.reload_pending = True
            return
        reloader = current.proxy.reloader
        try:
            proxy = reloader() if reloader is not None else current.proxy
        except SystemExit as exc:
            log.error("SIGHUP: reload refused (exit %s); the workers keep the configuration they have",
                      exc.code)
            return
        except Exception as exc:
            log.error("SIGHUP: reload refused: %s; the workers keep the configuration they have",
                      " ".join(str(exc).split()) or type(exc).__name__)
            return
        if proxy is not current.proxy and proxy.reloader is None:
            proxy.reloader = reloader
        sock, listen = current.sock, current.listen
        # The same Proxy (no reloader) has the port its claim got in place
        # of the one configured: the same address.
        if proxy is not current.proxy and proxy.config.listen != current.listen:
            listen = proxy.config.listen
            try:
                sock = _claim_listen_socket(proxy.config)
            except ListenError as exc:
                log.error("SIGHUP: reload refused: %s; the workers keep the configuration they have", exc)
                return
        try:
            self.next = self._generation(proxy, sock, listen)
        except ValueError as exc:
            log.error("SIGHUP: reload refused: %s; the workers keep the configuration they have", exc)
            if sock is not current.sock:
                sock.close()
            return
        log.info("SIGHUP: reloading: starting %d workers with the configuration read again",
                 len(self.next.indices))
        for index in self.next.indices:
            self._fork(self.next, index)

    def _reloaded(self) -> None:
        """Every new worker listens: the old ones drain."""
        old, new = self.current, self.next
        assert old is not None and new is not None
        self.current, self.next = new, None
        self.shared.expected_workers = len(new.indices)   # what readiness waits for
        self.respawns = [r for r in self.respawns if r[2] is new]
        self.deaths = {}
        for worker in self.workers.values():
            if worker.generation is old:
                worker.stopping = True
                if worker.up:
                    self._signal(worker, signal.SIGQUIT)
                else:
                    self._signal(worker, signal.SIGKILL)   # never served: nothing to drain
        if old.sock is not new.sock:
            old.sock.close()
        if new.proxy.setup_logging is not None and new.proxy is not old.proxy:
            new.proxy.setup_logging()
        pids = sorted(w.pid for w in self.workers.values() if w.generation is new)
        log.info("SIGHUP: reloaded: workers %s serve the new configuration; the old ones drain",
                 ", ".join(map(str, pids)))

    def _refuse_next(self, why: str) -> None:
        new = self.next
        assert new is not None and self.current is not None
        self.next = None
        for worker in self.workers.values():
            if worker.generation is new:
                worker.stopping = True
                self._signal(worker, signal.SIGQUIT if worker.up else signal.SIGKILL)
        if new.sock is not self.current.sock:
            new.sock.close()
        log.error("SIGHUP: reload failed: %s; the old workers keep serving", why)
        self._pending_reload()


async def _serve(proxy: Proxy, sock: socket.socket, report: Any) -> None:
    await proxy.start(sock=sock)
    report("up", "")
    await proxy.serve()


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _replace_listen(config: Config, host: str, port: int) -> Config:
    shown = f"[{host}]" if ":" in host else host
    return dataclasses.replace(config, listen=f"{shown}:{port}")
