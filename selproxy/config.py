"""The proxy's configuration: one frozen dataclass, validated once.

The compiled core copies these values into C fields when a worker starts, so
nothing here is looked up per request.  Each default is the one a user gets
from the command line as well.
"""
from __future__ import annotations

import dataclasses
import ssl
from typing import Optional, Tuple
from urllib.parse import urlsplit

from ._redact import redact_url

__all__ = ("Config", "parse_listen", "parse_upstream")


def parse_listen(value: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) to a (host, port) pair."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, number


def parse_upstream(value: str) -> Tuple[str, str, int]:
    """``http[s]://HOST[:PORT]`` to (scheme, host, port).

    An error quotes the value without its userinfo and query, which may
    hold credentials (:func:`selproxy._redact.redact_url`).
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("upstream must be http://HOST:PORT or https://HOST:PORT, "
                         f"got {redact_url(value)!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"upstream must not have a path or query: {redact_url(value)!r}")
    if parts.username or parts.password:
        raise ValueError("upstream credentials belong in headers, not in the URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a worker needs to proxy.  Sizes are bytes; times are seconds."""

    upstream: str
    listen: str = "127.0.0.1:9201"
    workers: int = 1

    #: TLS to the upstream: a CA bundle to verify against, or no verification.
    upstream_ca_file: Optional[str] = None
    upstream_verify: bool = True

    #: Longest request line (method, target, version): 414 beyond it.
    max_request_line: int = 8 * 1024
    #: Largest request header block: 431 beyond it.
    max_header_bytes: int = 64 * 1024
    #: Largest body the proxy buffers for a claimed request: 413 beyond it.
    max_buffered_body: int = 16 * 1024 * 1024
    #: Largest upstream response the proxy buffers for a handler.
    max_buffered_response: int = 256 * 1024 * 1024
    #: All claimed request bodies and handlers' upstream responses one worker
    #: holds at once: past it, new claimed requests get 503 with Retry-After.
    max_buffered_bodies: int = 256 * 1024 * 1024
    #: A passthrough request body up to this size is read whole before an
    #: upstream connection is taken, and this much of a larger one, so a slow
    #: client never holds one idle (nginx buffers bodies too).
    request_buffer_size: int = 64 * 1024

    #: From the first byte of a request to the end of its head (slowloris).
    header_timeout: float = 10.0
    #: How long an idle keep-alive client connection is kept.
    idle_timeout: float = 75.0
    #: Connecting to the upstream, TLS handshake included.
    connect_timeout: float = 5.0
    #: From the end of the request to the upstream's response head, and then
    #: between two reads of the response.
    response_timeout: float = 60.0
    #: A request body is read in windows of this length; a window with no
    #: body byte, or fewer than ``min_body_rate`` per second, ends it with 408.
    body_timeout: float = 60.0
    #: Bytes per second a client sending a request body keeps up, on average
    #: over each ``body_timeout`` window (0: any progress will do).
    min_body_rate: int = 1024
    #: Bytes waiting for a peer (client or upstream) that takes none of them
    #: for this long: the connection is closed (nginx's send_timeout).
    send_timeout: float = 60.0
    #: How long in-flight exchanges may take to finish after SIGTERM.
    shutdown_grace: float = 10.0
    #: After SIGTERM, how long the proxy keeps accepting (saying it is not
    #: ready) before it drains, so that load balancers stop sending first.
    #: 0 by default, like Traefik's requestAcceptGraceTimeout: only the
    #: platform knows how long its load balancers take (the Helm chart sets
    #: it), and a delay would hold up every ``docker stop`` and ``kill``.
    shutdown_delay: float = 0.0

    #: Upstream connections one worker keeps at most (busy and idle).
    max_upstream_connections: int = 512
    #: Idle upstream connections one worker keeps for reuse.
    max_idle_upstream_connections: int = 128
    #: How long an idle upstream connection is kept.
    upstream_idle_timeout: float = 30.0
    #: Requests one worker lets wait for a free upstream connection when all
    #: are busy: past it, 503 with Retry-After (Envoy's max_pending_requests).
    max_upstream_waiters: int = 1024
    #: How long a request waits for a free upstream connection: 504 after it
    #: (HAProxy's timeout queue).
    upstream_queue_timeout: float = 10.0

    #: Add X-Forwarded-For, X-Forwarded-Proto and Forwarded to requests.
    forwarded_headers: bool = False
    #: Log one line per request, passthrough included, on the
    #: ``selproxy.access`` logger; with it, requests carry an X-Request-Id.
    access_log: bool = False
    #: Access lines without the query string of the target.
    access_log_redact_query: bool = False
    #: ``text`` or ``json`` (JSON lines): access lines, and error lines when
    #: the command sets up logging.
    log_format: str = "text"
    #: ``GET /_selproxy/readyz`` also requires the upstream to accept a TCP
    #: connection (checked at most once a second), not only the proxy.
    readyz_upstream: bool = False
    #: A second address serving only the status page, the metrics and the
    #: probes, so the data port can stay closed to scrapers (None: none).
    admin_listen: Optional[str] = None

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        parse_upstream(self.upstream)
        if self.admin_listen is not None:
            if parse_listen(self.admin_listen)[1] == 0 and self.workers > 1:
                # Each worker would get a port of its own.
                raise ValueError("admin_listen needs a fixed port with more than one worker")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        for name in ("max_request_line", "max_header_bytes", "max_buffered_body",
                     "max_buffered_response", "max_upstream_connections",
                     "max_buffered_bodies"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("header_timeout", "idle_timeout", "connect_timeout",
                     "response_timeout", "body_timeout", "shutdown_grace", "upstream_idle_timeout",
                     "send_timeout", "upstream_queue_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("min_body_rate", "request_buffer_size", "max_upstream_waiters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 <= self.shutdown_delay < float("inf"):
            raise ValueError("shutdown_delay must not be negative")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
        if self.max_idle_upstream_connections < 0:
            raise ValueError("max_idle_upstream_connections must not be negative")

    @property
    def listen_address(self) -> Tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def upstream_address(self) -> Tuple[str, str, int]:
        return parse_upstream(self.upstream)

    def upstream_ssl_context(self) -> Optional[ssl.SSLContext]:
        scheme, _host, _port = self.upstream_address
        if scheme != "https":
            return None
        context = ssl.create_default_context(cafile=self.upstream_ca_file)
        if not self.upstream_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def public_dict(self) -> dict[str, object]:
        """The configuration as the status endpoint shows it: no secrets."""
        doc = dataclasses.asdict(self)
        scheme, host, port = self.upstream_address
        doc["upstream"] = f"{scheme}://{host}:{port}"
        return doc
