"""JSON decoding and compact encoding: orjson when installed, else the stdlib."""
from __future__ import annotations

import json
from typing import Any

__all__ = ("loads", "dumps")

try:
    import orjson
    HAVE_ORJSON = True
except ImportError:  # pragma: no cover - orjson is optional
    HAVE_ORJSON = False


def _std_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def loads(data: bytes) -> Any:
    """Decode JSON.  orjson refuses a few documents the stdlib reads
    (integers past 64 bits, NaN), so those take the slow path."""
    if HAVE_ORJSON:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def dumps(obj: Any) -> bytes:
    """Encode JSON compactly, as UTF-8."""
    if HAVE_ORJSON:
        try:
            return orjson.dumps(obj)
        except TypeError:
            pass
    return _std_dumps(obj)
