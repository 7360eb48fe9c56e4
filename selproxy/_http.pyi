"""Stubs for ``selproxy/_http.pyx``: HTTP/1.1 heads."""
from typing import List, Optional, Tuple
from typing_extensions import disjoint_base

__all__ = ('MessageHead',)

@disjoint_base
class MessageHead:
    """A request or response head as the core collected it, plus what
    :func:`analyse_request`/``analyse_raw_response`` learned from it."""

    method: Optional[bytes]
    target: Optional[bytes]
    status: int
    reason: Optional[bytes]
    version_minor: int
    headers: Optional[List[Tuple[bytes, bytes]]]   # None for a response read raw
    framing: int
    content_length: int
    transfer_encoding: Optional[bytes]
    conn_close: bool
    conn_upgrade: bool
    expect_continue: bool
    upgrade: Optional[bytes]
    host: Optional[bytes]
    end_to_end: Optional[List[Tuple[bytes, bytes]]]
    #: A response head read raw: its end-to-end field lines as they came
    #: (``end_to_end`` is None then).
    kept: Optional[bytes]
