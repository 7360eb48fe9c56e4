"""Running the proxy: ``Proxy.run()``, the awaitable ``serve()``, workers,
signals and graceful shutdown."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Coroutine, Dict, List, Optional, Sequence, Tuple

import uvloop

from . import _core
from ._redact import excerpt, redact_url
from ._threads import DaemonThreadPool
from .config import Config
from .errors import HandlerError, ProxyError
from .handler import Request, Response, Route
from .rankers.adapter import call_guarded
from .rankers.registry import RankerUnavailable
from .status import StatusPage

__all__ = ("Proxy", "serve")

log = logging.getLogger("selproxy")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

#: How long a stopping proxy waits, past its grace, for code it does not
#: control: a ranker's close, then (all together) the tasks left on the loop,
#: async generators and the default executor.
TEARDOWN_SECONDS = 0.5


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
                 ranker: Any = None, ranker_options: Optional[Dict[str, Any]] = None,
                 search: Any = None, **options: Any) -> None:
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
        self._upstream: Any = None
        self.status_sections: Dict[str, Any] = {}
        self.search_service: Any = None
        self._warmup: Optional["asyncio.Future[Any]"] = None
        self._search: Optional[Tuple[Any, Optional[Dict[str, Any]], Any]] = None
        if ranker is not None or search is not None:
            if isinstance(ranker, str):
                from .rankers.registry import load_ranker_class
                load_ranker_class(ranker)  # an unknown name fails here, not at start
            elif ranker_options:
                raise TypeError("ranker_options go with a ranker given by name")
            self._search = (ranker, ranker_options, search)

    def _start_search(self) -> Any:
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
                except Exception as exc:
                    # The message may quote what the ranker was given (a
                    # service's URL): redacted, as every logged text is.
                    raise RankerUnavailable(excerpt(f"cannot build the ranker {ranker!r}: {exc}",
                                                    limit=1000)) from exc
            self.search_service = SearchService(
                ranker if ranker is not None else IdentityRanker(),
                search if search is not None else SearchConfig())
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

    # -- lifecycle ---------------------------------------------------------

    async def start(self, *, sock: Optional[socket.socket] = None,
                    reuse_port: bool = False) -> None:
        """Bind and start serving on the running loop."""
        loop = asyncio.get_running_loop()
        status = StatusPage(None, self.config)
        status.sections.update(self.status_sections)
        routes = list(self.routes)
        service = self._start_search()
        if service is not None:
            routes += service.routes()
            status.sections["search"] = service.status
        routes.append(Route(("GET",), "/_selproxy/status", status.handle, "status"))
        core = _core.ProxyCore(self.config, loop, routes, self._run_route, log)
        status.core = core
        self.core, self.status = core, status
        self._upstream = core.upstream()
        self._stopping = asyncio.Event()
        if sock is not None:
            server = await loop.create_server(core.protocol_factory, sock=sock)
        else:
            host, port = self.config.listen_address
            server = await loop.create_server(core.protocol_factory, host, port,
                                              reuse_port=reuse_port or None, backlog=4096)
        self._server = server
        self._address = server.sockets[0].getsockname()
        core.add_listen_authority(self._address[0], self._address[1])
        core.start()
        self._start_warmup(status)
        log.info("selproxy listening on %s, upstream %s (pid %d)",
                 self.url, redact_url(self.config.upstream), os.getpid())

    def _start_warmup(self, status: StatusPage) -> None:
        """Warm the ranker up off the loop (a model loads and runs once); the
        status page says ``"ready": false`` until it is done."""
        ranker = self.search_service.adapter.ranker if self.search_service else None
        warmup = getattr(ranker, "warmup", None)
        if not callable(warmup):
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
                log.info("ranker %s warmed up", type(ranker).__name__)

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
        self._server = None
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
        await asyncio.sleep(0)
        if self._stopping is not None:
            self._stopping.set()

    async def serve(self) -> None:
        """Start, then serve until :meth:`stop` is called or SIGTERM/SIGINT."""
        if self.core is None:
            await self.start()
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGTERM, signal.SIGINT):
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
        log.info("%s: draining (grace %.1fs)", signal.Signals(signum).name,
                 self.config.shutdown_grace)
        asyncio.get_running_loop().create_task(self.stop())

    async def __aenter__(self) -> "Proxy":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def run(self) -> None:
        """Run until SIGTERM or SIGINT, with ``config.workers`` processes."""
        # Until serve() has its handlers in place, a stop signal waits
        # instead of killing a half-started process (or worker).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        if self.config.workers == 1:
            run_bounded(self.serve())
            return
        _run_workers(self)

    # -- claimed requests --------------------------------------------------

    async def _run_route(self, route: Route, request: Request) -> Response:
        started = time.monotonic()
        try:
            response = await route.handler(request, self._upstream)
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


def _run_workers(proxy: Proxy) -> None:
    """Fork ``workers`` processes that share the port through SO_REUSEPORT;
    the parent forwards SIGTERM/SIGINT and exits when they all have."""
    host, port = proxy.config.listen_address
    if port == 0:
        # Every worker must bind the same port: pick one now.
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        proxy.config = _replace_listen(proxy.config, host, port)
    children: List[int] = []
    for _ in range(proxy.config.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run_bounded(_worker(proxy))
            except RankerUnavailable as exc:
                log.error("worker %d: %s", os.getpid(), exc)
                code = 1
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    failed = False
    for child in children:
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        failed = failed or os.waitstatus_to_exitcode(status) != 0
    sys.exit(1 if failed else 0)


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


async def _worker(proxy: Proxy) -> None:
    await proxy.start(reuse_port=True)
    await proxy.serve()


def _replace_listen(config: Config, host: str, port: int) -> Config:
    import dataclasses
    shown = f"[{host}]" if ":" in host else host
    return dataclasses.replace(config, listen=f"{shown}:{port}")
