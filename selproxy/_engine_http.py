"""A blocking JSON client for the engine's own API, over one keep-alive
``http.client`` connection (http or https, ``user:password@`` in the URL for
basic auth).  ``selproxy embed`` walks an index with it, and the engine-backed
embedding store reads and writes its sidecar index with one per thread.  Every
message names the engine by its URL without userinfo or query."""
from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.parse
from typing import Any, Optional, Tuple

from ._redact import redact_url

__all__ = ("EngineCallError", "EngineStatusError", "EngineHTTP", "error_of")


class EngineCallError(RuntimeError):
    """The engine could not be asked, or answered with an error: one line."""


class EngineStatusError(EngineCallError):
    """The engine answered a request with an error status."""

    def __init__(self, message: str, status: int, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def error_of(body: Any) -> Tuple[str, str]:
    """``(type, reason)`` of an Elasticsearch error body (either may be "")."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("type") or ""), str(error.get("reason") or "")
    if isinstance(error, str):
        return "", error
    return "", ""


class EngineHTTP:
    """JSON over one blocking keep-alive connection to the engine at ``url``."""

    def __init__(self, url: str, *, timeout: float = 120.0, ca_file: Optional[str] = None,
                 verify: bool = True) -> None:
        if "://" not in url:
            url = "http://" + url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EngineCallError(f"--upstream must be http[s]://HOST:PORT, not {redact_url(url)!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise EngineCallError(f"bad port in --upstream {redact_url(url)!r}") from None
        self.display = redact_url(url).rstrip("/")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = "Basic " + token
        self._context: Optional[ssl.SSLContext] = None
        if parts.scheme == "https":
            self._context = ssl.create_default_context(cafile=ca_file)
            if not verify:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
        self.timeout = timeout
        self._conn: Optional[http.client.HTTPConnection] = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._scheme == "https":
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                                         context=self._context)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json") -> Tuple[int, Any]:
        """``(status, decoded JSON or None)``; unreachable engines raise
        :class:`EngineCallError`.  ``body`` is sent as JSON, or as it is when
        it is bytes (with ``content_type``, for NDJSON).  A keep-alive
        connection the engine closed while idle is reopened once."""
        if isinstance(body, bytes):
            payload: Optional[bytes] = body
        else:
            payload = json.dumps(body).encode() if body is not None else None
        headers = dict(self._headers, **{"Content-Type": content_type})
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, self._prefix + path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 2:
                    raise EngineCallError(f"the engine at {self.display} closed the connection "
                                          f"({type(exc).__name__})") from None
            except ssl.SSLError as exc:
                self.close()
                raise EngineCallError(f"TLS to {self.display} failed: {exc.reason or exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise EngineCallError(f"cannot reach the engine at {self.display} ({reason})") from None
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded answer of a request that must succeed."""
        status, answer = self.request(method, path, body)
        if status >= 300:
            kind, reason = error_of(answer)
            if status in (401, 403):
                raise EngineStatusError(f"the engine at {self.display} refused {method} {path} "
                                        f"(HTTP {status}{': ' + reason if reason else ''})", status, kind)
            detail = f"{kind}: {reason}" if kind or reason else "no error body"
            raise EngineStatusError(f"the engine at {self.display} answered HTTP {status} to {method} "
                                    f"{path.split('?')[0]} ({detail})", status, kind)
        return answer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
