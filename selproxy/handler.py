"""The contract between the compiled core and Python code for claimed requests.

The core matches each request head against its route table.  A request that
matches a :class:`Route` is read whole (within ``max_buffered_body``) and handed
to the route's handler as a :class:`Request`; the handler returns a
:class:`Response`, which the core writes back in order with the other responses
on that connection.  A handler that needs the engine calls ``upstream.request``,
which goes through the core's pooled upstream connections.

Headers cross between the core and Python in one form: lists of ``(name,
value)`` strings, in the order they came, decoded from the wire's bytes once, as
Latin-1.  Latin-1 maps each of the 256 octets to one code point, so any field
value (RFC 9110 section 5.5 allows obs-text) survives the crossing and encodes
back to the same bytes.  Read one with :meth:`Request.header` or
:meth:`Response.header`.

The core alone frames messages.  A :class:`Request` carries no hop-by-hop or
framing headers (RFC 9110 section 7.6.1: Connection and the fields it names,
Keep-Alive, TE, Transfer-Encoding, Upgrade, Proxy-Connection,
Proxy-Authenticate, Proxy-Authorization; and Content-Length).  Whatever of them a
:class:`Response`, or the headers of an ``upstream.request`` call, carries is
dropped, and the core writes ``Content-Length`` from the body itself (and
``Connection: close`` when it will close); a handler never sets them.

The core checks a :class:`Response` before any of it is written: a status from
200 to 599, header names that are tokens, header values that encode as Latin-1
and hold no CR, LF or NUL (RFC 9110 sections 5.1 and 5.5), a body of bytes or
str.  A response that fails, like a handler that raises, is answered with a 500
in Elasticsearch's error shape that names the kind of error, never its text.
``upstream.request`` checks its method, target and headers the same way and
raises ``ValueError``.
"""
from __future__ import annotations

import dataclasses
from typing import Awaitable, Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple

__all__ = ("Headers", "Request", "Response", "Upstream", "Handler", "Route", "NotifyHandler",
           "NotifyRoute", "header_value")

Headers = List[Tuple[str, str]]


def header_value(headers: Iterable[Tuple[str, str]], name: str) -> Optional[str]:
    """The value of the first header called ``name`` (case-insensitive), or None."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


@dataclasses.dataclass
class Request:
    """A claimed request, read whole."""

    method: str
    #: The request target as sent: path plus optional ``?query``.
    target: str
    headers: Headers
    body: bytes
    #: The route's captured path segments, by name (``{"index": "books"}``).
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    #: ``(host, port)`` of the client, when known.
    client: Optional[Tuple[str, int]] = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query_string(self) -> str:
        parts = self.target.split("?", 1)
        return parts[1] if len(parts) == 2 else ""

    def header(self, name: str) -> Optional[str]:
        return header_value(self.headers, name)


@dataclasses.dataclass
class Response:
    """What a handler answers, or what the upstream answered to ``upstream.request``."""

    status: int
    headers: Headers = dataclasses.field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> Optional[str]:
        return header_value(self.headers, name)


class Upstream(Protocol):
    """The engine behind the proxy, as the core offers it to handlers."""

    async def request(self, method: str, target: str, headers: Headers,
                      body: bytes = b"", *, timeout: Optional[float] = None) -> Response:
        """Send one request over a pooled upstream connection and read the whole
        response.  Raises :class:`selproxy.errors.UpstreamUnavailable`,
        :class:`~selproxy.errors.UpstreamTimeout` or
        :class:`~selproxy.errors.UpstreamProtocolError`."""
        ...


Handler = Callable[[Request, Upstream], Awaitable[Response]]


@dataclasses.dataclass(frozen=True)
class Route:
    """Which requests a handler claims.

    ``path`` is a pattern of ``/``-separated segments.  A literal segment must
    match exactly; ``{name}`` matches any one non-empty segment and captures it
    as ``Request.params[name]``.  A trailing ``/`` in the request path is
    ignored.  ``methods`` is a set of upper-case method names.
    """

    methods: Sequence[str]
    path: str
    handler: Handler
    name: str = ""


#: ``handler(method, target, params, done)``: see :class:`NotifyRoute`.
NotifyHandler = Callable[[str, str, Dict[str, str], bool], None]


@dataclasses.dataclass(frozen=True)
class NotifyRoute:
    """Requests the core passes through unchanged, and streaming, but tells
    ``handler`` about: once when the request head is read (``done`` False)
    and once when its exchange ends (``done`` True, whatever the outcome).

    ``path`` and ``methods`` match as in :class:`Route`, against the routes
    before it: list notify routes after the claimed ones.  The handler runs
    on the loop and must be quick; an exception in it is logged and the
    request goes on.  The search layer uses these to hear of writes
    (``_bulk``, ``_doc``...) and drop its cached windows.
    """

    methods: Sequence[str]
    path: str
    handler: NotifyHandler
    name: str = ""
    notify: bool = dataclasses.field(default=True, init=False)
