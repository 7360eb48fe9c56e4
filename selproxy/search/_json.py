"""JSON decoding and compact encoding: orjson when installed, else the stdlib.

Every document the search path reads comes from a client or from the engine,
so decoding is strict and bounded before it starts:

* a document with more than :data:`MAX_CONTAINERS` objects and arrays or more
  than :data:`MAX_VALUES` commas (bytes counted, strings included) is refused
  with :class:`TooCostly` before any decoding.  Decoding holds the GIL (orjson
  as much as the stdlib), so running it on a thread would not free the loop;
  the bound is what keeps one request from stalling the others.  Measured on
  this project's 2-core box (``benchmarks/bench_json_bounds.py``):
  16 MiB of ``[],`` takes 1.7 s to decode idle, 6 s under load; 250,000 empty
  arrays take 0.1 s to decode and 0.2 s more to check the depth under load;
* nesting deeper than :data:`MAX_DEPTH` is refused (:class:`TooDeep`), so no
  later walk, nor the encoder, can exhaust the recursion limit or the C stack;
* ``NaN``, ``Infinity``, numbers that overflow a double (``1e400``) and lone
  UTF-16 surrogates (``"\\ud800"``) are refused: they cannot be re-encoded as
  the same valid JSON, and silently rewriting them (orjson writes ``null``
  for NaN) would change the client's or the engine's meaning;
* integers of 19 digits or more are decoded by the stdlib, which keeps them
  exact (orjson reads integers past 64 bits as floats).

Every refusal is a ``ValueError``: the caller sends a request on unchanged, or
passes a response through byte for byte.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, List

__all__ = ("loads", "dumps", "check_cost", "TooCostly", "TooDeep",
           "MAX_DEPTH", "MAX_CONTAINERS", "MAX_VALUES")

try:
    import orjson
    HAVE_ORJSON = True
except ImportError:  # pragma: no cover - orjson is optional
    HAVE_ORJSON = False

#: Deepest nesting of objects and arrays read.
MAX_DEPTH = 100
#: Most ``{`` and ``[`` bytes in one decoded document (or ``_msearch`` body).
MAX_CONTAINERS = 250_000
#: Most ``,`` bytes in one decoded document (or ``_msearch`` body).
MAX_VALUES = 1_000_000

# Integers orjson would not keep exact: past 64 bits, they have 19+ digits.
# Mapping every digit to "0" and searching for a run is a C-speed scan; a
# regular expression costs ten times more here.
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_DIGITS = b"0" * 19
# A \uD800-\uDFFF escape, or a surrogate encoded as UTF-8 (which the stdlib's
# 'surrogatepass' decoding lets through).
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


class TooCostly(ValueError):
    """The document has more structure than the proxy decodes on its loop."""

    reason = "too_large"


class TooDeep(ValueError):
    """The document nests deeper than :data:`MAX_DEPTH`."""


def _std_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def check_cost(data: bytes) -> None:
    """Raise :class:`TooCostly` when ``data`` is too structured to decode."""
    # PERF: a container takes two bytes at least, a value one: a document
    # shorter than the limits needs no counting.  Measured 2026-12-06 (timeit,
    # Python 3.11): on a 39 KB response of 60 hits, the three counts take 155
    # us, half of json.loads' 313 us; search responses are mostly that size.
    if len(data) > 2 * MAX_CONTAINERS and data.count(b"{") + data.count(b"[") > MAX_CONTAINERS:
        raise TooCostly(f"more than {MAX_CONTAINERS} objects and arrays")
    if len(data) > MAX_VALUES and data.count(b",") > MAX_VALUES:
        raise TooCostly(f"more than {MAX_VALUES} values")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} overflows a double")
    return value


def _std_loads(data: bytes) -> Any:
    try:
        doc = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        # The C scanner checks the recursion limit on each level, so this is
        # a clean refusal, not a blown stack.
        raise TooDeep(f"nested deeper than {MAX_DEPTH}") from None
    if _SURROGATE.search(data):
        # Escaped pairs were joined into one code point; a lone one was not,
        # and cannot be encoded as UTF-8 (UnicodeEncodeError is a ValueError).
        json.dumps(doc, ensure_ascii=False).encode()
    return doc


def _check_depth(doc: Any) -> None:
    # Level by level: one list comprehension per container, no recursion.
    # Its cost is bounded like decoding's, by MAX_CONTAINERS and MAX_VALUES.
    level: List[Any] = [doc]
    for _ in range(MAX_DEPTH):
        level = [child for node in level for child in (node.values() if type(node) is dict else node)
                 if type(child) is dict or type(child) is list]
        if not level:
            return
    raise TooDeep(f"nested deeper than {MAX_DEPTH}")


def loads(data: bytes) -> Any:
    """Decode JSON strictly (see the module docstring); ``ValueError`` when
    the document is refused."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    check_cost(data)
    if HAVE_ORJSON and _LONG_DIGITS not in data.translate(_DIGITS_AS_ZERO):
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            # What orjson refuses the stdlib reads only when it is valid JSON
            # in another guise (a byte-order mark, UTF-16); the strict stdlib
            # refuses the rest again.
            doc = _std_loads(data)
    else:
        doc = _std_loads(data)
    if type(doc) is dict or type(doc) is list:
        _check_depth(doc)
    return doc


def dumps(obj: Any) -> bytes:
    """Encode JSON compactly, as UTF-8.  ``ValueError`` for a value that has
    no JSON form (NaN, infinities, lone surrogates)."""
    if HAVE_ORJSON:
        try:
            return orjson.dumps(obj)
        except TypeError:
            pass
    return _std_dumps(obj)
