"""Bounded gzip inflation: one helper for every gzip body the process reads.

A gzip body of 1 MB can inflate to 1 GB.  :func:`gunzip` inflates in steps of
at most :data:`STEP` bytes and stops as soon as the output passes ``limit``,
so memory is bounded by the limit, never by what the sender claims.
"""
from __future__ import annotations

import zlib
from typing import Callable, List

__all__ = ("gunzip", "DecodedTooLarge", "STEP")

#: Output bytes produced per inflate step.
STEP = 1 << 20
# wbits for the gzip container only (RFC 1952), as gzip.decompress reads.
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class DecodedTooLarge(ValueError):
    """The body inflates past the limit.  ``reason`` is the token the search
    path reports for a response it therefore passes through."""

    reason = "too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body inflates past {limit} bytes")
        self.limit = limit


def gunzip(data: bytes, limit: int,
           too_large: Callable[[int], Exception] = DecodedTooLarge) -> bytes:
    """Inflate a gzip body (one or more members, as ``gzip.decompress`` reads).

    Raises ``too_large(limit)`` (by default :class:`DecodedTooLarge`) when the
    output would pass ``limit`` bytes, and ``ValueError`` when ``data`` is not
    a complete gzip stream.
    """
    out: List[bytes] = []
    total = 0
    rest = bytes(data)
    while rest:
        inflater = zlib.decompressobj(_GZIP_WBITS)
        pending = rest
        while True:
            try:
                piece = inflater.decompress(pending, min(STEP, limit - total + 1))
            except zlib.error as exc:
                raise ValueError(f"bad gzip body: {exc}") from None
            total += len(piece)
            if total > limit:
                raise too_large(limit)
            out.append(piece)
            if inflater.eof:
                break
            if not inflater.unconsumed_tail and not piece:
                raise ValueError("bad gzip body: truncated")
            pending = inflater.unconsumed_tail
        rest = inflater.unused_data
    return b"".join(out)
