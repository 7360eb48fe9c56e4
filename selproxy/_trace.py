"""The W3C trace context of the request being served, for calls made on its behalf.

The search service sets :data:`TRACE_CONTEXT` around each claimed request
(:func:`trace_context` reads it from the request's headers); a ranker that
calls a service (:mod:`selproxy.rankers.remote`) reads it back with
:func:`outgoing_headers` and sends it on.  A context variable crosses every
``await`` and the task a rank call runs in (asyncio copies the context when a
task is made), so nothing between the two needs a new parameter.

selproxy does not take part in the trace (it starts no span of its own): it
passes the caller's ``traceparent`` and ``tracestate`` on unchanged, as an
intermediary that is not instrumented should.  Only a well-formed
``traceparent`` is passed (W3C Trace Context, section 3.2): a client's bytes
never reach another service's headers unchecked.
"""
from __future__ import annotations

import contextvars
import re
from typing import Dict, Iterable, Optional, Tuple

__all__ = ("TRACE_CONTEXT", "TraceContext", "trace_context", "trace_id_of", "outgoing_headers")

#: ``(traceparent, tracestate)``; ``tracestate`` may be empty.
TraceContext = Tuple[str, str]

TRACE_CONTEXT: "contextvars.ContextVar[Optional[TraceContext]]" = contextvars.ContextVar(
    "selproxy_trace_context", default=None)

# W3C Trace Context 3.2.2: version "-" trace-id "-" parent-id "-" flags, lower-case hex.
# Version ff is invalid; a later version may append fields after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?")
# 3.3.1.1: at most 32 list members, printable ASCII; we bound the whole value instead.
_TRACESTATE = re.compile(r"[ -~]{0,512}")


def trace_id_of(traceparent: str) -> Optional[str]:
    """The trace id of a well-formed ``traceparent`` value, or None (the
    access log's ``trace_id``; a value passed on must have one)."""
    traceparent = traceparent.strip()
    if len(traceparent) > 512:
        return None
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    version, trace_id, parent_id, _flags, rest = match.groups()
    # 3.2.2.3/3.2.2.4: all-zero ids are invalid; version 00 has no more fields.
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16 or (version == "00" and rest):
        return None
    return trace_id


def trace_context(headers: Iterable[Tuple[str, str]]) -> Optional[TraceContext]:
    """The valid trace context in ``headers``, or None."""
    parent = state = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == "traceparent" and parent is None:
            parent = value.strip()
        elif lowered == "tracestate" and state is None:
            state = value.strip()
    if parent is None or trace_id_of(parent) is None:
        return None
    if state is None or _TRACESTATE.fullmatch(state) is None:
        state = ""
    return parent, state


def outgoing_headers() -> Dict[str, str]:
    """Headers that carry the current trace context to a call made for it."""
    context = TRACE_CONTEXT.get()
    if context is None:
        return {}
    parent, state = context
    return {"traceparent": parent, "tracestate": state} if state else {"traceparent": parent}
