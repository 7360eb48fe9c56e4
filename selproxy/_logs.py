"""Access lines and the JSON log form.

The compiled core calls an :class:`AccessLog` twice per request, and only
while the access log is on (``ProxyCore(access_hook=...)``; off, the core
does not call into Python at all): :meth:`AccessLog.take_request_id` when a
request head is complete, and :meth:`AccessLog.exchange_done` when its
response is written, for passthrough and claimed requests alike.

Every byte a client sends is hostile: a request id it gives is kept only if
it is 1 to :data:`MAX_REQUEST_ID` safe characters, a ``traceparent`` only if
it has the W3C form, and a target goes into a line with its credentials
(``api_key=``, ``token=``, userinfo) replaced by ``***``, or without its query
at all (``access_log_redact_query``).  JSON escapes whatever is left; the
text form has no control characters to escape, since the parser refuses
them in a request line.
"""
from __future__ import annotations

import datetime
import json
import json.encoder
import logging
import os
import random
import re
import time
import traceback
from typing import IO
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._redact import REDACTED, excerpt
from ._trace import trace_id_of

__all__ = ("AccessLog", "AccessLineHandler", "JsonFormatter", "MAX_REQUEST_ID", "valid_request_id", "trace_id",
           "redact_target", "ACCESS_LOGGER")

ACCESS_LOGGER = "selproxy.access"

#: Longest client request id kept (Heroku's router keeps 20 to 200; nginx's
#: own ids are 32): longer ones are replaced.
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=@-]{1,%d}" % MAX_REQUEST_ID)
#: A JSON string literal, quotes included, in ASCII (the C encoder's).
_quote = json.encoder.encode_basestring_ascii

# The lookahead ends a start with no "=" ahead in its parameter in one scan:
# without it, a hostile 8 KiB target of "?token" repeated took 15 s to redact
# (backtracking over every keyword at every "?"), with it under 20 ms; the
# matches are the same (fuzzed against the old pattern).
_SECRET_PARAM = re.compile(
    r"(?i)((?:^|[?&;])(?=[^=&;]*=)[^=&;]*(?:api[-_]?key|apikey|access[-_]?key|secret|token|passw(?:or)?d|"
    r"auth|signature|sig|credential|session)[^=&;]*=)[^&;#]*")
_USERINFO = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://)[^/@?#]*@")


def valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


def new_request_id() -> bytes:
    """32 random hex digits, as nginx's ``$request_id``.  PERF(selproxy):
    from :mod:`random` (reseeded from the system in each forked worker), not
    a ``getrandom`` call per request: an id must be unique, not secret."""
    return b"%032x" % random.getrandbits(128)


def trace_id(value: Optional[bytes]) -> Optional[str]:
    """The trace id of a ``traceparent`` value, or None if it is not valid."""
    return None if value is None else trace_id_of(value.decode("latin-1"))


def redact_target(target: str, drop_query: bool) -> str:
    """A request target fit for a log line: userinfo and credential-looking
    query parameters replaced by ``***``, or the whole query with
    ``drop_query``."""
    if not target.startswith("/"):
        target = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", target)
    path, sep, query = target.partition("?")
    if not sep:
        return path
    if drop_query:
        return f"{path}?{REDACTED}"
    return path + "?" + _SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED, query)


def _server_timing(value: bytes) -> Dict[str, float]:
    """``upstream;dur=1.20, queue;dur=0.10`` -> {"upstream": 0.0012, ...} in seconds."""
    found: Dict[str, float] = {}
    for part in value.decode("latin-1").split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, number = param.strip().partition("=")
            if key == "dur":
                try:
                    found[name] = float(number) / 1000.0
                except ValueError:
                    pass
    return found


class _Clock:
    """UTC ISO 8601 time with milliseconds; the part up to the second is
    formatted once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{int((now - second) * 1000):03d}Z"


class AccessLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler the command puts on ``selproxy.access``: each line as it
    is, to a stream (standard output) or a file it opened.  When it is the
    logger's only handler, :class:`AccessLog` writes through
    :meth:`write_line` and makes no ``LogRecord``."""

    def __init__(self, stream: IO[str], owned: bool = False) -> None:
        super().__init__(stream)
        self.owned = owned
        self.setFormatter(logging.Formatter("%(message)s"))
        try:
            stream.flush()
            self.fd: Optional[int] = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None      # not a file (a test's StringIO)

    def write_line(self, line: str) -> None:
        """One line, in one write(2) to the file (appended: O_APPEND), as
        nginx writes its access log; the stream's buffers are skipped."""
        if self.fd is not None:
            data = (line + "\n").encode("utf-8", "replace")
            written = os.write(self.fd, data)
            while written < len(data):      # a pipe may take a long line in parts
                data = data[written:]
                written = os.write(self.fd, data)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        try:
            if self.owned:
                self.stream.close()
        finally:
            super().close()


class AccessLog:
    """The core's access hook: request ids, and one line per exchange on
    ``logger`` (``selproxy.access``), as text or as a JSON object."""

    def __init__(self, logger: logging.Logger, log_format: str = "text",
                 redact_query: bool = False) -> None:
        self.logger = logger
        self.json = log_format == "json"
        self.redact_query = redact_query
        self.clock = _Clock()
        # PERF(selproxy): a LogRecord costs more than the rest of a line;
        # the command's own handler is written to directly.
        handlers = logger.handlers
        self.write_line = None
        if (len(handlers) == 1 and isinstance(handlers[0], AccessLineHandler)
                and not logger.propagate and logger.isEnabledFor(logging.INFO)):
            self.write_line = handlers[0].write_line

    # -- called by the core ------------------------------------------------

    def take_request_id(self, head: Any) -> bytes:
        """The request's id: its one ``X-Request-Id`` if that is valid, else
        a new one, which replaces the client's in the head sent upstream."""
        fields = head.end_to_end
        given: Optional[bytes] = None
        repeated = False
        for name, value in fields:
            # PERF(selproxy): the length first, so most names are not lowered.
            if len(name) == 12 and name.lower() == b"x-request-id":
                repeated = given is not None
                given = value
        if given is not None and not repeated and _REQUEST_ID.fullmatch(given) is not None:
            return given
        request_id = new_request_id()
        if given is not None:
            fields = [(n, v) for n, v in fields if n.lower() != b"x-request-id"]
        # A new list: end_to_end may be the parser's headers list itself.
        head.end_to_end = fields + [(b"X-Request-Id", request_id)]
        return request_id

    def exchange_done(self, peer: Any, head: Any, route: Any, status: int, sent: int,
                      total_s: float, upstream_s: Optional[float], request_id: Optional[bytes],
                      answer_headers: Optional[Sequence[Tuple[bytes, bytes]]]) -> None:
        line = self.line(peer, head, route, status, sent, total_s, upstream_s, request_id,
                         answer_headers)
        if self.write_line is not None:
            self.write_line(line)
        else:
            self.logger.info("%s", line)

    # -- the line ----------------------------------------------------------

    def line(self, peer: Any, head: Any, route: Any, status: int, sent: int, total_s: float,
             upstream_s: Optional[float], request_id: Optional[bytes],
             answer_headers: Optional[Sequence[Tuple[bytes, bytes]]]) -> str:
        """The access line, text or JSON.  PERF(selproxy): durations are
        whole microseconds, written with integer arithmetic (a float's
        shortest repr costs more than the rest of the line), and the line is
        formatted in place."""
        queue_s = rank_s = None
        rerank: Optional[str] = None
        for name, value in answer_headers or ():
            lowered = name.lower()
            if lowered == b"server-timing":
                timing = _server_timing(value)
                queue_s, rank_s = timing.get("queue"), timing.get("rank")
                if upstream_s is None:
                    upstream_s = timing.get("upstream")
            elif lowered == b"x-selproxy-rerank":
                rerank = excerpt(value.decode("latin-1"))
        traceparent = None
        for name, value in head.end_to_end or head.headers or ():
            if len(name) == 11 and name.lower() == b"traceparent":
                traceparent = value
                break
        trace = None if traceparent is None else trace_id(traceparent)
        target = head.target.decode("latin-1") if head.target else "-"
        if "?" in target or target[:1] != "/":
            target = redact_target(target, self.redact_query)
        client = str(peer[0]) if peer else "-"
        method = head.method.decode("latin-1") if head.method else "-"
        route_name = (route.name or route.path) if route is not None else "passthrough"
        rid = (request_id or new_request_id()).decode("ascii")
        total, upstream = int(total_s * 1e6), _micros(upstream_s)
        queue, rank = _micros(queue_s), _micros(rank_s)
        if self.json:
            return ('{"time":"%s","client":%s,"method":%s,"target":%s,"route":%s,"status":%d,'
                    '"bytes":%d,"duration_s":%s,"upstream_s":%s,"queue_s":%s,"rank_s":%s,'
                    '"rerank":%s,"request_id":%s,"trace_id":%s}' % (
                        self.clock(), _quote(client), _quote(method), _quote(target), _quote(route_name),
                        status, sent, _seconds(total), _seconds(upstream), _seconds(queue),
                        _seconds(rank), _string(rerank), _quote(rid), _string(trace)))
        line = f'{client} "{method} {target}" {status} {sent} {_millis(total)}ms'
        for key, micros in (("upstream", upstream), ("queue", queue), ("rank", rank)):
            if micros is not None:
                line += f" {key}={_millis(micros)}ms"
        if rerank is not None:
            line += f' rerank="{rerank}"'
        line += f" request_id={rid}"
        if trace is not None:
            line += f" trace_id={trace}"
        return line


def _micros(seconds: Optional[float]) -> Optional[int]:
    return None if seconds is None else int(seconds * 1e6)


def _seconds(micros: Optional[int]) -> str:
    """Whole microseconds as a JSON number of seconds: ``0.010236``."""
    if micros is None:
        return "null"
    whole, part = divmod(micros, 1000000)
    return "%d.%06d" % (whole, part)


def _millis(micros: int) -> str:
    """Whole microseconds as milliseconds with one decimal: ``10.2``."""
    whole, tenth = divmod(micros // 100, 10)
    return "%d.%d" % (whole, tenth)


def _string(value: Optional[str]) -> str:
    return "null" if value is None else _quote(value)


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object on one line: ``time``, ``level``,
    ``logger``, ``message`` (with credentials redacted), ``pid``, and
    ``error`` with the traceback when there is one.  Access lines, which are
    JSON already, pass through as they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == ACCESS_LOGGER:
            return message
        doc: Dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": excerpt(message, limit=4000),
            "pid": record.process,
        }
        if record.exc_info:
            lines: List[str] = traceback.format_exception(*record.exc_info)
            doc["error"] = excerpt("".join(lines), limit=8000)
        return json.dumps(doc, separators=(",", ":"))
