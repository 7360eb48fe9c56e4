"""``--admin-listen HOST:PORT``: a listener of its own for the status page,
the metrics and the probes, so that the data port can stay closed to
scrapers and health checkers (Envoy's admin address, Traefik's
``--entrypoints`` for its API).

It serves only ``GET`` (and ``HEAD``) of ``/_selproxy/status``, ``/metrics``
(also at ``/_selproxy/metrics``), ``/livez`` and ``/readyz`` (also under
``/_selproxy/``), one request per connection: it is read by machines a few
times a minute, never by clients, so it is a small asyncio stream server and
not the compiled core.  Every worker listens on it (SO_REUSEPORT with
``--workers`` > 1), and each answers for the whole group, as on the data port.
"""
from __future__ import annotations

import asyncio
import http
import logging
from typing import Any, Awaitable, Callable, Dict

from .config import parse_listen
from .handler import Request, Response
from .status import StatusPage

__all__ = ("start_admin",)

log = logging.getLogger("selproxy")

#: Longest request head the admin listener reads.
MAX_HEAD = 16 * 1024
#: How long a connection has to send its request head.
HEAD_TIMEOUT = 5.0


def _pages(status: StatusPage) -> Dict[str, Callable[[Request, Any], Awaitable[Response]]]:
    pages: Dict[str, Callable[[Request, Any], Awaitable[Response]]] = {
        "/_selproxy/status": status.handle,
        "/_selproxy/metrics": status.handle_metrics,
        "/_selproxy/livez": status.handle_livez,
        "/_selproxy/readyz": status.handle_readyz,
    }
    for name in ("status", "metrics", "livez", "readyz"):
        pages[f"/{name}"] = pages[f"/_selproxy/{name}"]
    return pages


def _head(status: int, reason: str, headers: Any, length: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {length}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def _serve_one(pages: Dict[str, Any], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError):
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        method, target = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
        path = target.split("?", 1)[0].rstrip("/") or "/"
        page = pages.get(path)
        if not method:
            response = Response(400, [("Content-Type", "application/json")], b'{"error":"bad request"}\n')
        elif page is None:
            response = Response(404, [("Content-Type", "application/json")], b'{"error":"not found"}\n')
        elif method not in ("GET", "HEAD"):
            response = Response(405, [("Content-Type", "application/json"), ("Allow", "GET, HEAD")],
                                b'{"error":"method not allowed"}\n')
        else:
            response = await page(Request(method, target, [], b"", {},
                                          writer.get_extra_info("peername")), None)
        body = response.body if isinstance(response.body, bytes) else str(response.body).encode()
        reason = http.HTTPStatus(response.status).phrase
        writer.write(_head(response.status, reason, response.headers, len(body)))
        if method != "HEAD":
            writer.write(body)
        await writer.drain()
    except ConnectionError:
        pass
    except Exception:  # an admin page never takes the worker down
        log.exception("the admin listener failed to answer")
    finally:
        writer.close()


async def start_admin(status: StatusPage, listen: str, *, reuse_port: bool) -> asyncio.Server:
    """Serve the admin pages of ``status`` on ``listen`` (``HOST:PORT``)."""
    pages = _pages(status)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_one(pages, reader, writer)

    host, port = parse_listen(listen)
    return await asyncio.start_server(serve, host, port, reuse_port=reuse_port or None,
                                      limit=MAX_HEAD)
