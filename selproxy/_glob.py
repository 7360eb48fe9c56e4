"""Elasticsearch's field-name patterns: only ``*`` is a wildcard (it matches
any run of characters, dots included); every other character, ``?``, ``[``
and ``]`` included, is literal.  Matching is linear in the path: no
``fnmatch``, no backtracking regular expression, whatever the pattern."""
from __future__ import annotations

import functools
from typing import Tuple

__all__ = ("glob_segments", "glob_matches")


@functools.lru_cache(maxsize=4096)
def glob_segments(pattern: str) -> Tuple[str, ...]:
    """The literal runs of ``pattern`` between its ``*``s."""
    return tuple(pattern.split("*"))


def glob_matches(segments: Tuple[str, ...], path: str) -> bool:
    """Whether ``path`` matches the pattern ``"*".join(segments)``: leftmost
    search of each middle segment is exact for ``*``-only patterns."""
    first, last = segments[0], segments[-1]
    if len(segments) == 1:
        return path == first
    if len(path) < len(first) + len(last) or not path.startswith(first) or not path.endswith(last):
        return False
    pos, end = len(first), len(path) - len(last)
    for segment in segments[1:-1]:
        found = path.find(segment, pos, end)
        if found < 0:
            return False
        pos = found + len(segment)
    return True
