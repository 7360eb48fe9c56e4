"""A real upstream for functional tests: an asyncio server with its own small
HTTP/1.1 request reader (independent of httptools), which records the exact
bytes of every request it receives and answers from a script.

The script is ``respond(request) -> reply``: ``reply`` is bytes (written as
is), or a list of bytes and commands: ``("sleep", seconds)``, ``"close"``,
``"reset"`` (RST), ``"stall"`` (never answer), ``("drain",)`` (wait until the
peer has read what was written), ``("tunnel", transform)`` (after a 101: from
then on answer every received piece of raw bytes with ``transform(piece)``).
"""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import time
from typing import Any, Callable, List, Optional, Tuple


@dataclasses.dataclass
class RecordedRequest:
    method: str
    target: str
    version: str
    headers: List[Tuple[str, str]]
    body: bytes
    raw: bytes          # the head and body bytes exactly as received
    connection: int     # which upstream connection carried it

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def response(status: int = 200, body: bytes = b"", headers=(), reason: str = "OK") -> bytes:
    head = [f"HTTP/1.1 {status} {reason}"]
    head += [f"{k}: {v}" for k, v in headers]
    if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def chunked(body_parts: List[bytes], headers=(), trailers=(), status: int = 200) -> bytes:
    head = [f"HTTP/1.1 {status} OK", "Transfer-Encoding: chunked"]
    head += [f"{k}: {v}" for k, v in headers]
    out = [("\r\n".join(head) + "\r\n\r\n").encode()]
    for part in body_parts:
        out.append(b"%x\r\n%s\r\n" % (len(part), part))
    out.append(b"0\r\n")
    for k, v in trailers:
        out.append(f"{k}: {v}\r\n".encode())
    out.append(b"\r\n")
    return b"".join(out)


def echo(request: RecordedRequest) -> bytes:
    return response(200, request.body, [("Content-Type", "application/octet-stream"),
                                        ("X-Method", request.method),
                                        ("X-Target", request.target)])


def slow_or_quick(body: bytes, delay: float) -> Callable[[RecordedRequest], Any]:
    """A script: ``/slow`` answers 200 with ``body`` after ``delay`` seconds,
    any other target 200 ``quick`` at once."""
    def respond(request: RecordedRequest) -> Any:
        if request.target == "/slow":
            return [("sleep", delay), response(200, body)]
        return response(200, b"quick")
    return respond


class _Conn(asyncio.Protocol):
    def __init__(self, server: "RecordingUpstream", number: int) -> None:
        self.server = server
        self.number = number
        self.buf = bytearray()
        self.transport: Any = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: Optional[asyncio.Task] = None
        self.closed = False
        self.continue_sent = False
        self.tunnel: Optional[Callable[[bytes], bytes]] = None
        self.tunnel_received = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections.append(self)
        self.server.open_connections += 1
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        self.server.open_connections -= 1
        self.queue.put_nowait(None)

    def data_received(self, data: bytes) -> None:
        self.server.bytes_received += len(data)
        if self.tunnel is not None:
            self._tunnel_piece(data)
            return
        self.buf += data
        while True:
            parsed = self._parse()
            if parsed is None:
                break
            self.queue.put_nowait(parsed)

    def _tunnel_piece(self, data: bytes) -> None:
        assert self.tunnel is not None
        self.tunnel_received += len(data)
        if data and not self.closed:
            self.transport.write(self.tunnel(data))

    def _parse(self) -> Optional[RecordedRequest]:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
        pos = end + 4
        if (self.server.send_continue and not self.continue_sent
                and any(k.lower() == "expect" and v.lower() == "100-continue" for k, v in headers)):
            # As a real server does: invite the body once the head is in.
            self.continue_sent = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        te = [v for k, v in headers if k.lower() == "transfer-encoding"]
        cl = [v for k, v in headers if k.lower() == "content-length"]
        if te and te[-1].lower().endswith("chunked"):
            # Note the chunks' spans and copy them once the message is whole:
            # copying on every partial read made large chunked bodies quadratic.
            spans = []
            while True:
                line_end = self.buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(bytes(self.buf[pos:line_end]).split(b";")[0], 16)
                if size == 0:
                    trailer_end = self.buf.find(b"\r\n\r\n", line_end)
                    if self.buf[line_end:line_end + 4] == b"\r\n\r\n":
                        pos = line_end + 4
                    elif trailer_end >= 0:
                        pos = trailer_end + 4
                    else:
                        return None
                    break
                if len(self.buf) < line_end + 2 + size + 2:
                    return None
                spans.append((line_end + 2, line_end + 2 + size))
                pos = line_end + 2 + size + 2
            view = memoryview(self.buf)
            body_bytes = b"".join(view[start:stop] for start, stop in spans)
            view.release()
        else:
            length = int(cl[0]) if cl else 0
            if len(self.buf) < pos + length:
                return None
            body_bytes = bytes(self.buf[pos:pos + length])
            pos += length
        raw = bytes(self.buf[:pos])
        del self.buf[:pos]
        self.continue_sent = False
        req = RecordedRequest(method, target, version, headers, body_bytes, raw, self.number)
        self.server.requests.append(req)
        return req

    async def _serve(self) -> None:
        while True:
            req = await self.queue.get()
            if req is None or self.closed:
                return
            reply = self.server.respond(req)
            if asyncio.iscoroutine(reply):
                reply = await reply
            for item in reply if isinstance(reply, list) else [reply]:
                if self.closed:
                    return
                if isinstance(item, (bytes, bytearray, memoryview)):
                    self.transport.write(item)
                elif item == "close":
                    self.transport.close()
                    return
                elif item == "reset":
                    sock = self.transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.transport.abort()
                    return
                elif item == "stall":
                    await asyncio.sleep(3600)
                elif isinstance(item, tuple) and item[0] == "sleep":
                    await asyncio.sleep(item[1])
                elif isinstance(item, tuple) and item[0] == "tunnel":
                    # Bytes that came after the request are tunnel bytes too.
                    self.tunnel = item[1]
                    rest, self.buf = bytes(self.buf), bytearray()
                    self._tunnel_piece(rest)
                    return
                elif isinstance(item, tuple) and item[0] == "drain":
                    # Wait until the reader has taken what was written.
                    while self.transport.get_write_buffer_size() and not self.closed:
                        await asyncio.sleep(0.005)


class RecordingUpstream:
    """``async with RecordingUpstream(respond) as up: up.url``"""

    def __init__(self, respond: Callable[[RecordedRequest], Any] = echo, *,
                 send_continue: bool = False, ssl: Any = None) -> None:
        self.respond = respond
        #: An ``ssl.SSLContext``: serve HTTPS.
        self.ssl = ssl
        #: Answer ``Expect: 100-continue`` with a 100 as soon as the head is in.
        self.send_continue = send_continue
        self.requests: List[RecordedRequest] = []
        self.connections: List[_Conn] = []
        self.open_connections = 0
        self.bytes_received = 0
        self.server: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> "RecordingUpstream":
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Conn(self, len(self.connections)), "127.0.0.1", 0, ssl=self.ssl)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def wait_for_target(self, target: str, timeout: float = 5.0) -> None:
        """Return once a request for ``target`` has come in."""
        deadline = time.monotonic() + timeout
        while not any(r.target == target for r in self.requests):
            assert time.monotonic() < deadline, f"the request for {target} never reached the upstream"
            await asyncio.sleep(0.01)

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for conn in self.connections:
            if conn.task is not None:
                conn.task.cancel()
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
