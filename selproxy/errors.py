"""Errors that know their HTTP answer.

Each class carries the status code and the Elasticsearch error ``type`` that a
client sees when the proxy answers for itself.  The compiled core imports these
classes, and :func:`error_body` renders every error the proxy produces, so all of
them share Elasticsearch's shape::

    {"error": {"root_cause": [...], "type": ..., "reason": ...}, "status": N}
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

__all__ = (
    "ProxyError", "BadRequest", "RequestLineTooLong", "HeadersTooLarge",
    "BodyTooLarge", "MethodNotAllowed", "MisdirectedRequest",
    "UpstreamUnavailable", "UpstreamTimeout", "UpstreamProtocolError",
    "HandlerError", "RequestTimeout", "ProxyOverloaded", "UpstreamQueueFull",
    "UpstreamQueueTimeout", "BodyBudgetExceeded", "error_body", "error_document",
)


class ProxyError(Exception):
    """Base class: an error the proxy answers with an HTTP status."""

    status: int = 500
    es_type: str = "selproxy_exception"
    #: Seconds for a ``Retry-After`` header, for an answer that asks the
    #: client to come back later (503).
    retry_after: Optional[int] = None

    def __init__(self, reason: str = "", *, status: Optional[int] = None) -> None:
        super().__init__(reason)
        self.reason = reason or self.__class__.__doc__ or ""
        if status is not None:
            self.status = status

    def body(self) -> bytes:
        return error_body(self.status, self.es_type, self.reason)


class BadRequest(ProxyError):
    """The request is not valid HTTP/1.1."""
    status = 400
    es_type = "illegal_argument_exception"


class RequestLineTooLong(ProxyError):
    """The request line is longer than the configured limit."""
    status = 414
    es_type = "too_long_http_line_exception"


class HeadersTooLarge(ProxyError):
    """The request header block is larger than the configured limit."""
    status = 431
    es_type = "too_long_http_header_exception"


class BodyTooLarge(ProxyError):
    """The request body is larger than the proxy will buffer."""
    status = 413
    es_type = "content_too_long_exception"


class MethodNotAllowed(ProxyError):
    """CONNECT is not served: selproxy is a reverse proxy, not a forward one."""
    status = 405
    es_type = "illegal_argument_exception"


class MisdirectedRequest(ProxyError):
    """The request names a host other than the configured upstream."""
    status = 421
    es_type = "illegal_argument_exception"


class UpstreamUnavailable(ProxyError):
    """The upstream refused the connection or could not be reached."""
    status = 502
    es_type = "bad_gateway_exception"


class UpstreamProtocolError(ProxyError):
    """The upstream sent a response that is not valid HTTP/1.1."""
    status = 502
    es_type = "bad_gateway_exception"


class UpstreamTimeout(ProxyError):
    """The upstream did not connect or answer within the configured time."""
    status = 504
    es_type = "gateway_timeout_exception"


class RequestTimeout(ProxyError):
    """The client did not send its request in time."""
    status = 408
    es_type = "request_timeout_exception"


class ProxyOverloaded(ProxyError):
    """The proxy is at one of its worker-wide limits: try again shortly."""
    status = 503
    es_type = "es_rejected_execution_exception"
    retry_after = 1


class UpstreamQueueFull(ProxyOverloaded):
    """Too many requests are already waiting for an upstream connection."""


class BodyBudgetExceeded(ProxyOverloaded):
    """The bodies of claimed requests buffered by this worker are at their limit."""


class UpstreamQueueTimeout(UpstreamTimeout):
    """No upstream connection became free within the configured time."""


class HandlerError(ProxyError):
    """A handler for a claimed route raised."""
    status = 500
    es_type = "selproxy_handler_exception"


def error_document(status: int, cause: Dict[str, Any]) -> Dict[str, Any]:
    """Elasticsearch's error shape around one cause (``{"type", "reason", ...}``,
    with any metadata beside them): the proxy's errors and the embedded
    engine's (:mod:`selproxy.engine.errors`) both take this shape."""
    return {"error": {"root_cause": [cause], **cause}, "status": status}


def error_body(status: int, es_type: str, reason: str) -> bytes:
    """Render an error in Elasticsearch's JSON error shape."""
    doc = error_document(status, {"type": es_type, "reason": reason})
    return json.dumps(doc, separators=(",", ":")).encode()
