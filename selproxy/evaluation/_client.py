"""A small JSON-over-HTTP client for an Elasticsearch-compatible server: the engine, or selproxy in front of it.

NOTE: aiohttp rather than urllib in threads.  The demo and the relevance
benchmark run the embedded engine (and possibly the proxy) on the same event
loop as this client, so a blocking client would stall the server it waits for;
aiohttp also keeps connections alive, so measured latencies are not inflated by
a TCP handshake per query.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

import aiohttp

from .._redact import excerpt, redact_url

__all__ = ("SearchClient", "Reply", "SearchClientError", "index_path")


class SearchClientError(RuntimeError):
    """The server answered with an unexpected status, or not at all."""

    def __init__(self, message: str, status: Optional[int] = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass
class Reply:
    status: int
    headers: Any  # multidict.CIMultiDictProxy from aiohttp, or a plain mapping
    body: Any
    elapsed_ms: float

    def header_values(self, name: str) -> Sequence[str]:
        getall = getattr(self.headers, "getall", None)
        if getall is not None:
            return list(getall(name, []))
        value = dict(self.headers).get(name)
        return [value] if value is not None else []


def index_path(index: str, endpoint: str = "") -> str:
    """``/<index>/<endpoint>`` with the index name escaped (index lists and
    wildcards keep their ``,`` and ``*``)."""
    path = "/" + quote(index, safe=",*")
    return f"{path}/{endpoint}" if endpoint else path


class SearchClient:
    """One base URL and a pooled keep-alive session; use as an async context manager."""

    def __init__(self, url: str, *, timeout: float = 60.0, session: Optional[aiohttp.ClientSession] = None) -> None:
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.url = url.rstrip("/")
        #: The base URL as errors quote it: no userinfo, no query.
        self.shown_url = redact_url(self.url)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> "SearchClient":
        if self._session is None:
            # trust_env stays off: an HTTP(S)_PROXY in the environment must not
            # reroute evaluation traffic meant for a loopback engine.
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        ndjson: Optional[bytes] = None,
        expect: Tuple[int, ...] = (200,),
        headers: Optional[Mapping[str, str]] = None,
    ) -> Reply:
        """Send one request and decode its JSON answer; raise :class:`SearchClientError`
        unless the status is in ``expect``."""
        if self._session is None:
            raise RuntimeError("SearchClient is used outside its 'async with' block")
        send_headers = dict(headers or {})
        data: Optional[bytes] = None
        if ndjson is not None:
            data = ndjson
            send_headers["Content-Type"] = "application/x-ndjson"
        elif json_body is not None:
            data = json.dumps(json_body).encode()
            send_headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        try:
            async with self._session.request(method, self.url + path, data=data, headers=send_headers) as response:
                raw = await response.read()
                elapsed_ms = (time.perf_counter() - started) * 1000
                status, reply_headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as error:
            detail = excerpt(error) if str(error) else type(error).__name__
            raise SearchClientError(f"{method} {self.shown_url}{path}: {detail}") from error
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if status not in expect:
            raise SearchClientError(f"{method} {self.shown_url}{path}: HTTP {status}: {excerpt(_reason(body))}",
                                    status, body)
        return Reply(status, reply_headers, body, elapsed_ms)


def _reason(body: Any) -> str:
    # Elasticsearch errors: {"error": {"type": ..., "reason": ...}, "status": N}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return f"{error.get('type', 'error')}: {error.get('reason', '')}"
    text = body if isinstance(body, str) else json.dumps(body)
    return text[:300]
