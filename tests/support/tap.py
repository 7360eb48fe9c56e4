"""A loopback TCP tap in front of an upstream: it forwards bytes both ways
unchanged, counts the HTTP requests that go through it (parsed with
httptools, so bodies never miscount) and keeps the bytes the upstream sent.

``async with Tap("127.0.0.1", port) as tap: tap.url, tap.requests, tap.received``
"""
from __future__ import annotations

import asyncio
from typing import List, Optional, Set

import httptools

__all__ = ("Tap",)


class _Counter:
    def __init__(self, tap: "Tap") -> None:
        self.tap = tap

    def on_url(self, url: bytes) -> None:
        self.tap.targets.append(url.decode("latin-1"))

    def on_message_complete(self) -> None:
        self.tap.requests += 1


class Tap:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.requests = 0
        self.targets: List[str] = []
        #: Every byte the upstream sent, all connections, in arrival order.
        self.received = bytearray()
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: Set["asyncio.Task[None]"] = set()
        self.url = ""

    async def __aenter__(self) -> "Tap":
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        parser = httptools.HttpRequestParser(_Counter(self))
        to_up = asyncio.ensure_future(self._pump(reader, up_writer, parser, False))
        to_client = asyncio.ensure_future(self._pump(up_reader, writer, None, True))
        for task in (to_up, to_client):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait((to_up, to_client), return_when=asyncio.FIRST_COMPLETED)
        for task in (to_up, to_client):
            task.cancel()
        writer.close()
        up_writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    parser: Optional[httptools.HttpRequestParser], record: bool) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            if parser is not None:
                parser.feed_data(data)
            if record:
                self.received += data
            writer.write(data)
            await writer.drain()
