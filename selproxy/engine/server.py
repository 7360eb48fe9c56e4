"""Starting and stopping the engine: :class:`Engine` for code and tests, and the
blocking :func:`serve` behind ``selproxy engine``."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import uvicorn

from .._uvicorn_server import UvicornService, serve_until_signalled
from ..config import parse_listen
from .app import EngineApp
from .contexts import DEFAULT_MAX_KEEP_ALIVE, DEFAULT_MAX_OPEN
from .store import Store

__all__ = ("Engine", "serve")

logger = logging.getLogger("selproxy.engine")


def _config(app: EngineApp, host: str, port: int, log_level: Optional[str]) -> uvicorn.Config:
    # With log_level None, uvicorn leaves the process's logging configuration alone.
    logging_options: Dict[str, Any] = {"log_config": None} if log_level is None else {"log_level": log_level}
    return uvicorn.Config(app, host=host, port=port, lifespan="off", access_log=False, http="httptools",
                          server_header=False, date_header=True, timeout_graceful_shutdown=5, **logging_options)


class Engine(UvicornService):
    """An engine serving on loopback, started and stopped from async code::

        async with Engine(data=":memory:") as engine:
            ...  # engine.url is e.g. "http://127.0.0.1:54321"

    ``port=0`` (the default) binds a free port.  ``data`` is a SQLite file
    path, or ``":memory:"``.  ``log_level`` other than None makes uvicorn
    configure logging; by default the embedding program's configuration stands.
    ``max_open_contexts`` caps the open scrolls, and separately the open points
    in time; ``max_keep_alive`` (seconds) caps their keep-alive.
    """

    def __init__(self, data: str = ":memory:", host: str = "127.0.0.1", port: int = 0,
                 log_level: Optional[str] = None, max_open_contexts: int = DEFAULT_MAX_OPEN,
                 max_keep_alive: float = DEFAULT_MAX_KEEP_ALIVE) -> None:
        super().__init__(host, port)
        self.data = data
        self.log_level = log_level
        self.max_open_contexts = max_open_contexts
        self.max_keep_alive = max_keep_alive
        self.store: Optional[Store] = None

    async def start(self) -> None:
        self.store = Store(self.data)
        await self.store.start()
        self.bind()
        app = EngineApp(self.store, max_open_contexts=self.max_open_contexts, max_keep_alive=self.max_keep_alive)
        await self._uvicorn.start(_config(app, self.host, self.port, self.log_level))

    async def stop(self) -> None:
        await self._uvicorn.stop()
        if self.store is not None:
            await self.store.close()
            self.store = None


def serve(listen: str = "127.0.0.1:9200", data: str = ":memory:", log_level: str = "info") -> None:
    """Serve until SIGINT or SIGTERM (blocking), then shut down cleanly."""
    host, port = parse_listen(listen)
    engine = Engine(data=data, host=host, port=port, log_level=log_level)
    serve_until_signalled(engine, lambda: logger.info("selproxy engine serving on %s (data: %s)", engine.url, data))
