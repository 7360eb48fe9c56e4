"""A uvicorn server on a socket selproxy binds itself, started and stopped from
async code: what the embedded engine (:mod:`selproxy.engine.server`) and
``selproxy serve-ranker`` (:mod:`selproxy.serve_ranker`) both serve with.

NOTE: ``uvicorn.Server.serve()`` would also take over SIGINT and SIGTERM,
which a server embedded in someone else's program (a test, an application
that starts an engine) must not do, so :class:`UvicornServer` drives
``startup`` / ``main_loop`` / ``shutdown`` itself.  A command that owns its
process installs the handlers with :func:`serve_until_signalled`.

uvicorn is imported when a server starts: it comes with the ``engine`` and
``serve-ranker`` extras, not with selproxy itself.
"""
from __future__ import annotations

import asyncio
import signal
import socket
from typing import TYPE_CHECKING, Any, AsyncContextManager, Callable, Optional, TypeVar

if TYPE_CHECKING:
    import uvicorn

__all__ = ("UvicornServer", "UvicornService", "serve_until_signalled")

_Service = TypeVar("_Service", bound="UvicornService")


class UvicornServer:
    """One uvicorn server on one socket: :meth:`bind`, then :meth:`start`
    with a ``uvicorn.Config``, then :meth:`stop` (which also closes a socket
    that was bound but never served)."""

    def __init__(self) -> None:
        self.sock: Optional[socket.socket] = None
        self._server: Optional["uvicorn.Server"] = None
        self._task: Optional["asyncio.Task[None]"] = None

    def bind(self, host: str, port: int) -> socket.socket:
        """Bind ``host:port`` (IPv6 when ``host`` has a colon; port 0 takes a
        free one); the bound port is ``sock.getsockname()[1]``."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        return sock

    async def start(self, config: "uvicorn.Config") -> None:
        """Serve ``config``'s app on the bound socket, in a task of this loop."""
        import uvicorn
        assert self.sock is not None, "bind() first"
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self.sock])
        self._server = server
        self._task = asyncio.ensure_future(server.main_loop())

    async def stop(self) -> None:
        """Stop serving (in-flight requests finish) and close the socket."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None and task is not None:
            server.should_exit = True
            await task
            await server.shutdown(sockets=[self.sock] if self.sock else None)
        elif self.sock is not None:
            self.sock.close()
        self.sock = None


class UvicornService:
    """Base of an app served on ``host:port`` through a :class:`UvicornServer`:
    its :attr:`url`, :meth:`bind`, and ``async with`` (a :meth:`start` that
    fails runs :meth:`stop`, which undoes what it did start)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._uvicorn = UvicornServer()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def bind(self) -> socket.socket:
        """Bind :attr:`host` and :attr:`port`; port 0 becomes the free port taken."""
        sock = self._uvicorn.bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        return sock

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self: _Service) -> _Service:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


def serve_until_signalled(server: AsyncContextManager[Any], announce: Callable[[], None]) -> None:
    """Run ``server`` on uvloop until SIGINT or SIGTERM (blocking); ``announce``
    runs once it serves (to log where)."""
    import uvloop

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            announce()
            await stop.wait()

    uvloop.run(main())
