"""Safe per-request overrides: a typed allow-list, stripped before forwarding.

A client may tune one search with a ``selproxy.<name>=<value>`` URL parameter
or an ``X-Selproxy-<Name>: <value>`` header.  Only these names are honoured:

==========  =======  ==========================================================
name        type     effect
==========  =======  ==========================================================
``topn``    int      the window size, from 1 up to ``SearchConfig.max_topn``
``rerank``  bool     ``false`` passes the search through (reason ``override``)
``debug``   bool     each hit carries its engine rank and score in ``_selproxy``
==========  =======  ==========================================================

Every ``selproxy.*`` parameter and ``X-Selproxy-*`` header is removed before
the request goes upstream, honoured or not.  Unknown names and invalid values
are ignored and reported in the ``X-Selproxy-Ignored`` response header.  Nothing
a request carries can change the upstream, load code or evaluate anything: the
values are parsed as ints and booleans, never interpreted further.

The report never echoes client bytes that could change its meaning: a name is
named only when it is a plain token (``[a-z0-9_.-]``, at most
:data:`MAX_ECHOED_NAME` characters, lower-cased), and at most
:data:`MAX_ECHOED_NAMES` of them; every other ignored name is only counted, as a
final ``+N`` item (``X-Selproxy-Ignored: upstream, +2``).  A header value the
proxy writes therefore never holds CR, LF, NUL or a non-ASCII character.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote_plus

from ..handler import Headers

__all__ = ("Overrides", "extract_overrides", "PARAM_PREFIX", "HEADER_PREFIX",
           "MAX_ECHOED_NAME", "MAX_ECHOED_NAMES")

PARAM_PREFIX = "selproxy."
HEADER_PREFIX = "x-selproxy-"
_TRUE = frozenset(("true", "1", "yes", "on"))
_FALSE = frozenset(("false", "0", "no", "off"))
#: Longest ignored name echoed in ``X-Selproxy-Ignored``, and how many are.
MAX_ECHOED_NAME = 32
MAX_ECHOED_NAMES = 8
_ECHOABLE = re.compile(r"[a-z0-9_.\-]{1,%d}" % MAX_ECHOED_NAME, re.ASCII)


@dataclasses.dataclass(frozen=True)
class Overrides:
    """The honoured overrides of one request."""

    topn: Optional[int] = None
    rerank: bool = True
    debug: bool = False
    #: What to report of the names sent but not honoured: plain-token names,
    #: then ``+N`` for the others (see the module docstring).
    ignored: Tuple[str, ...] = ()


def _parse_bool(value: str) -> Optional[bool]:
    value = value.strip().lower()
    return True if value in _TRUE else False if value in _FALSE else None


def _apply(values: Dict[str, Any], name: str, raw: str, max_topn: int, ignored: List[str]) -> None:
    name = name.lower()
    if name == "topn":
        try:
            topn = int(raw.strip())
        except ValueError:
            topn = 0
        if 1 <= topn <= max_topn:
            values["topn"] = topn
            return
    elif name in ("rerank", "debug"):
        flag = _parse_bool(raw)
        if flag is not None:
            values[name] = flag
            return
    ignored.append(name)


def strip_params(query_string: str, prefix: str = PARAM_PREFIX) -> Tuple[str, List[Tuple[str, str]]]:
    """Remove the ``prefix*`` parameters from a query string, keeping every
    other byte; return the rest and the removed ``(name, value)`` pairs."""
    if not query_string:
        return query_string, []
    kept: List[str] = []
    removed: List[Tuple[str, str]] = []
    for item in query_string.split("&"):
        key, _, value = item.partition("=")
        key = unquote_plus(key)
        if key.lower().startswith(prefix):
            removed.append((key[len(prefix):], unquote_plus(value)))
        else:
            kept.append(item)
    return "&".join(kept), removed


def extract_overrides(target: str, headers: Headers, max_topn: int) -> Tuple[Overrides, str, Headers]:
    """Parse and strip the overrides of a request.

    Returns the overrides, the target without ``selproxy.*`` parameters and the
    headers without ``X-Selproxy-*`` ones.
    """
    values: Dict[str, Any] = {}
    ignored: List[str] = []
    path, sep, query = target.partition("?")
    if query:
        rest, removed = strip_params(query)
        for name, raw in removed:
            _apply(values, name, raw, max_topn, ignored)
        if removed:
            target = path + ("?" + rest if rest else "")
    kept: Headers = []
    for name, value in headers:
        if name.lower().startswith(HEADER_PREFIX):
            _apply(values, name[len(HEADER_PREFIX):], value, max_topn, ignored)
        else:
            kept.append((name, value))
    return Overrides(ignored=_report(ignored), **values), target, kept


def _report(ignored: List[str]) -> Tuple[str, ...]:
    """The ``X-Selproxy-Ignored`` items for these names: safe tokens only."""
    named: Dict[str, None] = {}
    others = set()
    for name in ignored:
        if name in named:
            continue
        if len(named) < MAX_ECHOED_NAMES and _ECHOABLE.fullmatch(name):
            named[name] = None
        else:
            others.add(name)
    return tuple(named) + ((f"+{len(others)}",) if others else ())
