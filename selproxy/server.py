"""Running the proxy: ``Proxy.run()``, the awaitable ``serve()``, workers,
signals and graceful shutdown."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Dict, List, Optional, Sequence, Tuple, Union

import uvloop

from . import _core
from ._logs import ACCESS_LOGGER, AccessLog
from ._redact import excerpt, redact_url
from ._threads import DaemonThreadPool
from .config import Config
from .errors import HandlerError, ProxyError
from .handler import Request, Response, Route
from .rankers.adapter import call_guarded, warmup_method
from .rankers.base import Ranker
from .rankers.registry import RankerSpecError, RankerUnavailable
from .metrics import worker_figures
from .shared_stats import PUBLISH_INTERVAL, RETIRING, SERVING, STOPPED, SharedStats
from .status import StatusPage

if TYPE_CHECKING:  # the search layer loads in the worker that serves (see _start_search)
    from .search import SearchConfig, SearchService

__all__ = ("Proxy", "serve", "ListenError", "StartFailed", "check_upstream")

log = logging.getLogger("selproxy")

#: Each stops a proxy gracefully (see Proxy._on_signal); they are blocked
#: while a process starts, so that none kills it half-started.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}

#: How long a stopping proxy waits, past its grace, for code it does not
#: control: a ranker's close, then (all together) the tasks left on the loop,
#: async generators and the default executor.
TEARDOWN_SECONDS = 0.5

#: Longest wait for the upstream's TCP handshake when checking that it is
#: reachable (at start and for the status page's ``ready``).
UPSTREAM_CHECK_TIMEOUT = 1.0
#: How long the status page reuses its last reachability check, so a busy
#: health checker costs the upstream at most one connection a second.
UPSTREAM_CHECK_REUSE = 1.0


class ListenError(OSError):
    """The listening address cannot be had: in use, not an address of this
    host, or not permitted.  ``str()`` is one line that says which."""

    def __init__(self, listen: str, cause: OSError) -> None:
        if cause.errno and cause.errno > 0:
            # uvloop's strerror repeats the address: the system's words only.
            reason = os.strerror(cause.errno).lower()
        else:  # getaddrinfo's errors are negative: its own text
            reason = (cause.strerror or str(cause)).lower()
        if cause.errno == errno.EADDRINUSE:
            reason = "address already in use (another process holds the port)"
        super().__init__(cause.errno, f"cannot listen on {listen}: {reason}")

    def __str__(self) -> str:
        return str(self.strerror)


class StartFailed(RuntimeError):
    """A worker could not start (its message says why, in one line)."""


def check_upstream(config: Config, timeout: float = UPSTREAM_CHECK_TIMEOUT) -> Optional[str]:
    """None if the upstream accepts a TCP connection within ``timeout``, else
    why not, in a few words.  Blocking: for start-up, before any loop runs."""
    _scheme, host, port = config.upstream_address
    try:
        socket.create_connection((host, port), timeout=min(timeout, config.connect_timeout)).close()
    except OSError as exc:
        return _unreachable_reason(exc)
    return None


async def _check_upstream_async(config: Config) -> Optional[str]:
    _scheme, host, port = config.upstream_address
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), min(UPSTREAM_CHECK_TIMEOUT, config.connect_timeout))
    except (OSError, asyncio.TimeoutError) as exc:
        return _unreachable_reason(exc)
    writer.close()
    return None


class _UpstreamCheck:
    """The status page's check that the upstream accepts connections: one
    TCP connect, its answer reused for :data:`UPSTREAM_CHECK_REUSE` seconds
    and shared by the status requests that come while it runs."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.checked_at = -UPSTREAM_CHECK_REUSE - 1.0
        self.reason: Optional[str] = None
        self.running: Optional["asyncio.Future[Optional[str]]"] = None

    async def __call__(self) -> Optional[str]:
        if self.running is None and time.monotonic() - self.checked_at >= UPSTREAM_CHECK_REUSE:
            self.running = asyncio.ensure_future(_check_upstream_async(self.config))
            try:
                self.reason = await asyncio.shield(self.running)
            finally:
                self.running, self.checked_at = None, time.monotonic()
            return self.reason
        if self.running is not None:
            return await asyncio.shield(self.running)
        return self.reason


def _unreachable_reason(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, socket.timeout)):
        return "no answer to connect within the timeout"
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0:
        return os.strerror(exc.errno).lower()   # the same words from any loop
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def _warn_unreachable(config: Config, reason: Optional[str]) -> None:
    if reason is not None:
        scheme, host, port = config.upstream_address
        shown = f"[{host}]" if ":" in host else host
        log.warning("upstream %s://%s:%d is not reachable (%s); requests get 502 until it is, "
                    "and the status page says ready: false", scheme, shown, port, reason)


class Proxy:
    """A selproxy instance: one upstream, a listening address, routes.

    >>> proxy = Proxy(upstream="http://127.0.0.1:9200", listen="127.0.0.1:9201")
    >>> proxy.run()                       # blocks; SIGTERM or Ctrl-C stops it

    From async code, ``async with Proxy(...) as proxy:`` starts it on the
    running loop (``proxy.url`` says where) and drains it on exit; ``await
    proxy.serve()`` runs until :meth:`stop` or a signal.

    ``ranker`` turns on reranked search: a ranker object (anything with
    ``rank(query, docs)``, see :mod:`selproxy.rankers.base`), or a name the
    ``--ranker`` flag takes (``"identity"``, ``"bm25"``, ``"pkg.mod:Class"``)
    with ``ranker_options`` as its keyword arguments.  ``search`` is a
    :class:`selproxy.search.SearchConfig` (topn, deadline, text fields,
    routes).  Without either, the proxy claims nothing but its status page.

    Keyword options are the fields of :class:`selproxy.config.Config`
    (``header_timeout=5.0``, ``max_buffered_body=...``), or pass ``config=``.
    ``routes`` are more :class:`selproxy.Route`\\ s to claim, tried before
    the search routes and the built-in ``GET /_selproxy/status``.
    """

    def __init__(self, upstream: Optional[str] = None, listen: Optional[str] = None, *,
                 routes: Sequence[Route] = (), config: Optional[Config] = None,
                 ranker: Union[Ranker, str, None] = None, ranker_options: Optional[Dict[str, Any]] = None,
                 search: Optional["SearchConfig"] = None, **options: Any) -> None:
        if config is None:
            if upstream is None:
                raise TypeError("Proxy() needs an upstream URL or a config")
            if listen is not None:
                options["listen"] = listen
            config = Config(upstream=upstream, **options)
        elif upstream is not None or listen is not None or options:
            raise TypeError("pass either config= or the options, not both")
        self.config = config
        self.routes: List[Route] = list(routes)
        self.core: Optional[Any] = None
        self.status: Optional[StatusPage] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._stopping: Optional[asyncio.Event] = None
        self._address: Optional[Tuple[Any, ...]] = None
        self._handler_upstream: Any = None  # the core's pool, as every route handler gets it
        self.status_sections: Dict[str, Any] = {}
        self.search_service: Optional["SearchService"] = None
        self._warmup: Optional["asyncio.Future[Any]"] = None
        self._search: Optional[Tuple[Union[Ranker, str, None], Optional[Dict[str, Any]],
                                     Optional["SearchConfig"]]] = None
        self._write_log: Any = None
        #: Which worker of the master this process is, and so which slot of
        #: the group's shared stats it writes (0..workers-1; a respawned
        #: worker keeps its index, a reload's new workers take fresh ones:
        #: see :mod:`selproxy._supervisor`); 0 without a master.
        self.worker_index = 0
        #: The block of figures the workers share; made by the master before
        #: it forks, or by start() for a proxy that runs alone.
        self.shared_stats: Optional[SharedStats] = None
        #: See the ``draining`` property: readiness says 503 from then on.
        self._draining = False
        self._publish_timer: Optional[asyncio.TimerHandle] = None
        self._admin: Optional[asyncio.Server] = None
        #: Set by the command: builds the Proxy of the configuration as it
        #: is now (file and environment read again), or raises why it
        #: cannot.  SIGHUP uses it; without it a reload restarts the workers
        #: with the same configuration.
        self.reloader: Optional[Callable[[], "Proxy"]] = None
        #: Set by the command: sets up this configuration's logging, in a
        #: new worker and, once a reload is done, in the master.
        self.setup_logging: Optional[Callable[[], None]] = None
        self._stop_task: Optional["asyncio.Task[None]"] = None
        self._skip_delay: Optional[asyncio.Event] = None
        if ranker is not None or search is not None:
            if isinstance(ranker, str):
                from .rankers.registry import check_ranker
                # A wrong name, class, option or missing extra fails here,
                # in one line, before anything listens.
                ranker_options = check_ranker(ranker, ranker_options)
            elif ranker_options:
                raise TypeError("ranker_options go with a ranker given by name")
            self._search = (ranker, ranker_options, search)
            # Made before the workers fork, so a write through any worker
            # drops the window caches of all (selproxy.search.window_cache).
            from .search.window_cache import WriteLog
            self._write_log = WriteLog()

    def _start_search(self) -> Optional["SearchService"]:
        """The search service, built in the process that serves: a model
        named by the ranker loads after a worker forks, never before.  The
        master, which never searches, then holds no model, and no thread
        pool (onnxruntime's, the service's executor) is inherited by a fork."""
        if self._search is None:
            return None
        if self.search_service is None:
            from .rankers.identity import IdentityRanker
            from .rankers.registry import resolve_ranker
            from .search import SearchConfig, SearchService
            ranker, ranker_options, search = self._search
            if isinstance(ranker, str):
                try:
                    ranker = resolve_ranker(ranker, ranker_options)
                except RankerSpecError:
                    raise
                except Exception as exc:
                    # The message may quote what the ranker was given (a
                    # service's URL): redacted, as every logged text is.
                    raise RankerUnavailable(excerpt(f"cannot build the ranker {ranker!r}: {exc}",
                                                    limit=1000)) from exc
            self.search_service = SearchService(
                ranker if ranker is not None else IdentityRanker(),
                search if search is not None else SearchConfig(), write_log=self._write_log)
        return self.search_service

    # -- addresses ---------------------------------------------------------

    @property
    def address(self) -> Tuple[Any, ...]:
        """The (host, port) the proxy listens on, once started."""
        if self._address is None:
            raise RuntimeError("the proxy is not started")
        return self._address

    @property
    def url(self) -> str:
        host, port = self.address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def admin_url(self) -> Optional[str]:
        """Where the admin listener serves (``--admin-listen``), once started."""
        if self._admin is None:
            return None
        host, port = self._admin.sockets[0].getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def draining(self) -> bool:
        """True from the moment :meth:`stop` begins, or from when the process
        is told it will stop (set it before a shutdown delay, or in the old
        workers of a reload): ``/_selproxy/readyz`` then answers 503
        ``draining`` in every worker of the group, through the shared block."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = bool(value)
        if self.status is not None and self.status.slot is not None:
            self.status.slot.set_draining(self._draining)

    # -- lifecycle ---------------------------------------------------------

    async def start(self, *, sock: Optional[socket.socket] = None,
                    reuse_port: bool = False) -> None:
        """Bind and start serving on the running loop."""
        loop = asyncio.get_running_loop()
        status = StatusPage(None, self.config)
        status.sections.update(self.status_sections)
        status.check_upstream = _UpstreamCheck(self.config)
        routes: List[Any] = list(self.routes)
        service = self._start_search()
        if service is not None:
            routes += service.routes()
            status.sections["search"] = service.status
        routes += [Route(("GET",), "/_selproxy/status", status.handle, "status"),
                   Route(("GET",), "/_selproxy/metrics", status.handle_metrics, "metrics"),
                   Route(("GET",), "/_selproxy/livez", status.handle_livez, "livez"),
                   Route(("GET",), "/_selproxy/readyz", status.handle_readyz, "readyz")]
        if service is not None:   # writes the window cache hears of: after every claimed route
            routes += service.notify_routes()
        access = None
        if self.config.access_log:
            access = AccessLog(logging.getLogger(ACCESS_LOGGER), self.config.log_format,
                               self.config.access_log_redact_query)
        core = _core.ProxyCore(self.config, loop, routes, self._run_route, log, access)
        status.core = core
        self.core, self.status = core, status
        self.draining = False
        if self.shared_stats is None:
            self.shared_stats = SharedStats.create(1, expected_workers=1)
        slot = self.shared_stats.slot(self.worker_index)
        slot.take(os.getpid())
        # The core counts into the group's block from its first connection.
        core.counters.attach(slot.cells)
        status.shared, status.slot, status.worker_index = self.shared_stats, slot, self.worker_index
        status.publish = self._publish
        status.draining = lambda: self.draining
        self._handler_upstream = core.upstream()
        self._stopping = asyncio.Event()
        if sock is not None:
            server = await loop.create_server(core.protocol_factory, sock=sock, backlog=4096)
        else:
            host, port = self.config.listen_address
            try:
                server = await loop.create_server(core.protocol_factory, host, port,
                                                  reuse_port=reuse_port or None, backlog=4096)
            except OSError as exc:
                raise ListenError(self.config.listen, exc) from None
        self._server = server
        self._address = server.sockets[0].getsockname()
        core.add_listen_authority(self._address[0], self._address[1])
        if self.config.admin_listen is not None:
            from .admin import start_admin
            try:
                self._admin = await start_admin(status, self.config.admin_listen,
                                                reuse_port=reuse_port or self.config.workers > 1)
            except OSError as exc:
                server.close()
                raise ListenError(self.config.admin_listen, exc) from None
        core.start()
        self._start_warmup(status)
        slot.set_warm(self._warmup is None)
        slot.set_state(SERVING)
        self._publish()
        log.info("selproxy listening on %s, upstream %s (pid %d)",
                 self.url, redact_url(self.config.upstream), os.getpid())

    def _start_warmup(self, status: StatusPage) -> None:
        """Warm the ranker up off the loop (a model loads and runs once); the
        status page says ``"ready": false`` until it is done."""
        ranker = self.search_service.adapter.ranker if self.search_service else None
        warmup = warmup_method(ranker)
        if warmup is None:
            return
        # A daemon thread, not the loop's default executor: a warm-up that
        # never returns must not keep a stopped proxy from exiting.
        pool = DaemonThreadPool(1, thread_name_prefix="selproxy-warmup")
        done = asyncio.wrap_future(pool.submit(call_guarded, warmup))
        pool.shutdown(wait=False)
        self._warmup = done
        status.ready = done.done

        def report(future: "asyncio.Future[Any]") -> None:
            if future.cancelled():
                return
            error = future.exception()
            if error is not None:
                log.error("ranker warm-up failed: %s", excerpt(f"{type(error).__name__}: {error}"))
            else:
                # The model's name, not its micro-batcher's.
                model = getattr(ranker, "ranker", ranker)
                log.info("ranker %s warmed up", getattr(model, "name", None) or type(model).__name__)
            # Done either way (a failed model fails open, as the ranker does).
            if status.slot is not None:
                status.slot.set_warm(True)

        done.add_done_callback(report)

    async def ready(self) -> None:
        """Wait until the ranker has warmed up (at once if it needs none)."""
        if self._warmup is not None:
            await asyncio.shield(self._warmup)

    async def stop(self, grace: Optional[float] = None) -> None:
        """Stop accepting, let exchanges in flight finish within ``grace``
        seconds (the config's ``shutdown_grace`` by default), then close."""
        core, server = self.core, self._server
        if core is None or server is None:
            return
        self.draining = True
        self._server = None
        self.draining = True
        grace = self.config.shutdown_grace if grace is None else grace
        server.close()
        core.drain()
        deadline = time.monotonic() + grace
        while core.open_clients() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if core.open_clients():
            log.warning("closing %d connections still busy after %.1fs",
                        core.open_clients(), grace)
        core.abort_all()
        core.stop()
        if self._publish_timer is not None:
            self._publish_timer.cancel()
            self._publish_timer = None
        if self.status is not None and self.status.slot is not None:
            # The last figures, while the search service still has them: a
            # worker's counts stay in the group's totals after it is gone.
            self._publish()
            self.status.slot.set_state(STOPPED)
        if self.search_service is not None:
            service, self.search_service = self.search_service, None
            # A ranker's own close (a batcher's worker, a remote client)
            # gets what is left of the grace; it is not waited for past that.
            closing = asyncio.ensure_future(service.aclose())
            left = max(deadline - time.monotonic(), TEARDOWN_SECONDS)
            done, _ = await asyncio.wait((closing,), timeout=left)
            if not done:
                closing.cancel()
                service.close()
                log.warning("the ranker did not close within %.1fs; left", left)
            elif closing.exception() is not None:
                log.warning("closing the ranker failed: %s", excerpt(repr(closing.exception())))
        if self._admin is not None:
            # Open through the drain, so readiness says "draining" meanwhile.
            self._admin.close()
            self._admin = None
        await asyncio.sleep(0)
        if self._stopping is not None:
            self._stopping.set()

    async def serve(self) -> None:
        """Start, then serve until :meth:`stop` is called or SIGTERM,
        SIGINT or SIGQUIT (see :meth:`_on_signal`)."""
        if self.core is None:
            await self.start()
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
                installed.append(signum)
            except (RuntimeError, ValueError, NotImplementedError):
                pass  # not the main thread: the caller handles signals
        if installed:
            # run() blocked these until now: one that came while starting is
            # delivered here, as a graceful stop rather than a kill.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, installed)
        try:
            await self._stopping.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        """SIGTERM: say not ready, keep serving for ``shutdown_delay`` (load
        balancers take that long to stop sending), then drain.  SIGINT
        (Ctrl-C) and SIGQUIT (the master replacing this worker on a reload)
        drain at once, as does a second signal during the delay.  A worker
        a reload replaced retires: the group stays ready on its new workers."""
        if signum == signal.SIGQUIT and self.status is not None and self.status.slot is not None:
            self.status.slot.set_state(RETIRING)
            self._draining = True
        else:
            self.draining = True
        delay = self.config.shutdown_delay if signum == signal.SIGTERM else 0.0
        if self._stop_task is not None and not self._stop_task.done():
            if self._skip_delay is not None and not self._skip_delay.is_set():
                log.info("%s: draining now", signal.Signals(signum).name)
                self._skip_delay.set()
            return
        if delay > 0:
            log.info("%s: not ready; still accepting for %.1fs, then draining (grace %.1fs)",
                     signal.Signals(signum).name, delay, self.config.shutdown_grace)
        elif signum == signal.SIGQUIT:
            log.info("SIGQUIT (replaced by a reload, or told to stop now): draining (grace %.1fs)",
                     self.config.shutdown_grace)
        else:
            log.info("%s: draining (grace %.1fs)", signal.Signals(signum).name,
                     self.config.shutdown_grace)
        self._stop_task = asyncio.get_running_loop().create_task(self._stop_after(delay))

    async def _stop_after(self, delay: float) -> None:
        if delay > 0:
            self._skip_delay = asyncio.Event()
            try:
                await asyncio.wait_for(self._skip_delay.wait(), delay)
            except asyncio.TimeoutError:
                log.info("draining (grace %.1fs)", self.config.shutdown_grace)
        await self.stop()

    async def __aenter__(self) -> "Proxy":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def run(self) -> None:
        """Run until SIGTERM or SIGINT: a master process and
        ``config.workers`` worker processes (:mod:`selproxy._supervisor`),
        which reloads on SIGHUP and restarts a worker that dies."""
        # Until serve() has its handlers in place, a stop signal waits
        # instead of killing a half-started process (or worker).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        if threading.current_thread() is not threading.main_thread() and self.config.workers == 1:
            # A master needs the main thread for its signals: off it, one
            # process serves (the caller handles signals), as before there
            # was a master.
            _claim_listen_socket(self.config).close()
            _warn_unreachable(self.config, check_upstream(self.config))
            run_bounded(self.serve())
            return
        from ._supervisor import Supervisor
        Supervisor(self).run()

    # -- the group's figures -----------------------------------------------

    def _publish(self) -> None:
        """Copy this worker's Python figures into its slot of the shared
        block, and again every :data:`PUBLISH_INTERVAL` seconds while it
        serves searches."""
        status = self.status
        if status is None or status.slot is None:
            return
        if self._publish_timer is not None:
            self._publish_timer.cancel()
            self._publish_timer = None
        try:
            status.slot.publish(worker_figures(self.search_service))
        except Exception as exc:  # figures never stop a worker
            log.warning("publishing this worker's figures failed: %s", excerpt(repr(exc)))
        # Without a search service there is nothing Python-side that changes
        # (the core's counters are in the block already): no timer.
        if self._server is not None and self.search_service is not None:
            self._publish_timer = asyncio.get_running_loop().call_later(
                PUBLISH_INTERVAL, self._publish)

    # -- claimed requests --------------------------------------------------

    async def _run_route(self, route: Route, request: Request) -> Response:
        started = time.monotonic()
        try:
            response = await route.handler(request, self._handler_upstream)
        except ProxyError as exc:
            log.warning("%s %s -> %d %s", request.method, request.target, exc.status, exc.reason)
            raise
        except asyncio.CancelledError:
            if _cancelling():
                raise  # the exchange itself is being cancelled (client gone, shutdown)
            # The handler raised it on its own: as a cancelled task it would
            # leave the client without an answer.
            log.error("handler for %s %s raised CancelledError", request.method, request.target)
            raise HandlerError("the handler failed: CancelledError") from None
        except Exception:
            raise
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt...: asyncio would re-raise them out
            # of the task into the event loop, ending the proxy.
            log.error("handler for %s %s raised %s", request.method, request.target,
                      type(exc).__name__, exc_info=exc)
            raise HandlerError(f"the handler failed: {type(exc).__name__}") from exc
        if route.name != "status":
            log.info("%s %s -> %d (%s, %.1f ms)", request.method, request.target,
                     response.status, route.name or route.path,
                     (time.monotonic() - started) * 1000)
        return response


def _cancelling() -> bool:
    """Whether the running task has been asked to cancel (``Task.cancelling``,
    Python 3.11+); before 3.11 a CancelledError is taken as such a request."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return True if cancelling is None else bool(cancelling())


async def serve(upstream: str, listen: str = "127.0.0.1:9201", **options: Any) -> None:
    """Run a proxy on the current loop until SIGTERM/SIGINT: ``await serve(...)``."""
    await Proxy(upstream, listen, **options).serve()


def _claim_listen_socket(config: Config) -> socket.socket:
    """Bind and listen on the address for the master's workers, or raise
    :class:`ListenError` if another process holds it.

    The master holds this one socket for as long as it serves this address,
    and every worker it forks accepts on it: one accept queue, so that a
    worker that stops (a reload, a crash) takes no queued connection with
    it, where a SO_REUSEPORT socket per worker would reset those queued on
    its own socket as it closes.  No SO_REUSEPORT then: its bind fails while
    any other socket holds the port, listening or in a SO_REUSEPORT group,
    so a second instance is refused instead of sharing the port.
    SO_REUSEADDR, as asyncio sets it, keeps a restart from being refused by
    the old process's TIME_WAIT connections.  Claim and bind are one system
    call, so two instances starting at once cannot both win."""
    host, port = config.listen_address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ListenError(config.listen, exc) from None
    family, _type, proto, _name, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        # Connections that come before a worker serves wait here.
        sock.listen(4096)
    except OSError as exc:
        sock.close()
        raise ListenError(config.listen, exc) from None
    return sock


def run_bounded(main: Coroutine[Any, Any, None]) -> None:
    """``uvloop.run(main)``, with a teardown that cannot hang.

    ``asyncio.Runner`` (which ``uvloop.run`` uses) cancels the tasks left when
    ``main`` returns and waits for each to end, then joins the default
    executor's threads, without a bound: a ranker's task that swallows its
    cancellation, or a thread that never returns, would keep a stopped proxy
    alive past its grace for ever.  Here each wait is bounded, and what
    does not end in time is left to the process's exit (ranker threads are
    daemons: :mod:`selproxy._threads`).
    """
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        try:
            until = time.monotonic() + TEARDOWN_SECONDS
            left = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.wait(left, timeout=TEARDOWN_SECONDS))
                running = sum(not task.done() for task in left)
                if running:
                    log.warning("%d tasks did not end when cancelled; left", running)
            for step in (loop.shutdown_asyncgens(), loop.shutdown_default_executor()):
                loop.run_until_complete(asyncio.wait([loop.create_task(step)],
                                                     timeout=max(0.0, until - time.monotonic())))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
