"""W3C trace context: what the proxy passes on to the calls a ranker makes."""
import asyncio

from selproxy._trace import TRACE_CONTEXT, outgoing_headers, trace_context

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_and_its_tracestate_pass() -> None:
    assert trace_context([("TraceParent", VALID), ("tracestate", "congo=t61rcWkgMzE")]) == (
        VALID, "congo=t61rcWkgMzE")
    assert trace_context([("traceparent", " " + VALID + " ")]) == (VALID, "")
    # A later version may carry more fields (W3C Trace Context 3.2.4).
    future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
    assert trace_context([("traceparent", future)]) == (future, "")


def test_malformed_traceparents_are_dropped() -> None:
    for bad in ("", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                VALID.upper(), "ff" + VALID[2:], VALID + "-extra",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nX-Injected: 1",
                "0" * 600):
        assert trace_context([("traceparent", bad)]) is None, bad
    assert trace_context([("tracestate", "a=b")]) is None


def test_a_bad_tracestate_is_left_out() -> None:
    assert trace_context([("traceparent", VALID), ("tracestate", "a=b\nc")]) == (VALID, "")
    assert trace_context([("traceparent", VALID), ("tracestate", "x" * 513)]) == (VALID, "")


def test_the_context_crosses_into_a_task() -> None:
    async def call() -> dict:
        return outgoing_headers()

    async def request() -> dict:
        token = TRACE_CONTEXT.set((VALID, "a=b"))
        try:
            return await asyncio.get_running_loop().create_task(call())
        finally:
            TRACE_CONTEXT.reset(token)

    assert asyncio.run(request()) == {"traceparent": VALID, "tracestate": "a=b"}
    assert outgoing_headers() == {}
