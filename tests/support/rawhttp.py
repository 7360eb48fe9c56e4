"""A raw-socket HTTP/1.1 client for byte-exact, pipelined and malformed
requests, with its own small response reader."""
from __future__ import annotations

import asyncio
import dataclasses
from typing import List, Optional, Tuple


@dataclasses.dataclass
class RawResponse:
    status: int
    reason: str
    headers: List[Tuple[str, str]]
    body: bytes
    trailers: List[Tuple[str, str]]
    chunked: bool

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self):
        import json
        return json.loads(self.body)


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str) -> "RawClient":
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port),
                                                       limit=64 * 1024 * 1024)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def read_response(self, method: str = "GET") -> RawResponse:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        _version, status, *reason = lines[0].split(" ", 2)
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
        res = RawResponse(int(status), reason[0] if reason else "", headers, b"", [], False)
        code = res.status
        if method == "HEAD" or code < 200 or code in (204, 304):
            return res
        te = res.header("transfer-encoding")
        cl = res.header("content-length")
        if te and te.lower().endswith("chunked"):
            res.chunked = True
            parts = []
            while True:
                line = await self.reader.readuntil(b"\r\n")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while True:
                        t = await self.reader.readuntil(b"\r\n")
                        if t == b"\r\n":
                            break
                        k, v = t.decode("latin-1").split(":", 1)
                        res.trailers.append((k.strip(), v.strip()))
                    break
                parts.append(await self.reader.readexactly(size))
                assert await self.reader.readexactly(2) == b"\r\n"
            res.body = b"".join(parts)
        elif cl is not None:
            res.body = await self.reader.readexactly(int(cl))
        else:
            res.body = await self.reader.read()
        return res

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers=(("Host", "test"),)) -> RawResponse:
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        if body:
            head += f"Content-Length: {len(body)}\r\n"
        self.send(head.encode("latin-1") + b"\r\n" + body)
        return await self.read_response(method)

    async def at_eof(self, timeout: float = 2.0) -> bool:
        """True if the server closes the connection (within ``timeout``)."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except asyncio.TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return data == b""

    def close(self) -> None:
        self.writer.close()
