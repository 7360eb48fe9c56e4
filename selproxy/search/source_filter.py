"""The client's ``_source`` filtering, reapplied by the proxy to each returned hit.

The proxy asks the engine for the whole ``_source`` (it ranks with it), then
trims each hit of the client's page back to what the client asked for, with
Elasticsearch's semantics: a pattern is matched against the dotted path of a
field, case-sensitively, and only ``*`` is a wildcard (it matches any run of
characters, dots included); ``?``, ``[`` and ``]`` are literal.  A field whose
path an include pattern matches is kept whole (excludes still reach inside
it); an object whose path could lead to a match is kept with its matching
fields, and dropped when none match.  Excludes win.

The patterns come from the client, so the work is bounded:

* a search with more than :data:`MAX_SOURCE_PATTERNS` patterns, or a pattern
  longer than :data:`MAX_SOURCE_PATTERN_CHARS`, is not reranked (reason
  ``source_filter``): the engine filters it, with its own semantics;
* the patterns are compiled once per search into set and tuple look-ups (exact
  names, ``prefix*``, ``*suffix``) and a star-split matcher for the others,
  never ``fnmatch`` or a backtracking regular expression; each distinct path
  is matched once per search;
* the filter spends at most :data:`MAX_SOURCE_FILTER_CHECKS` steps (one per
  field visited, plus one per pattern tried on a new path) on one response;
  past that it raises :class:`SourceFilterTooCostly`, and the search is sent
  again as the client sent it (reason ``source_filter``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, FrozenSet, Mapping, Optional, Sequence, Set, Tuple

from .._glob import glob_matches

__all__ = ("SourceFilter", "client_source_filter", "SourceFilterTooCostly", "SOURCE_PARAMS",
           "MAX_SOURCE_PATTERNS", "MAX_SOURCE_PATTERN_CHARS", "MAX_SOURCE_FILTER_CHECKS")

#: Most include plus exclude patterns a reranked search may carry.
MAX_SOURCE_PATTERNS = 64
#: Longest pattern, in characters.
MAX_SOURCE_PATTERN_CHARS = 256
#: Most steps the filter spends on one response (see the module docstring).
MAX_SOURCE_FILTER_CHECKS = 200_000
# Deepest object nesting the filter walks: decoded JSON is never deeper
# (selproxy.search._json.MAX_DEPTH), so this is only a backstop.
_MAX_WALK_DEPTH = 128

SOURCE_PARAMS = ("_source", "_source_includes", "_source_excludes", "_source_include", "_source_exclude")


class SourceFilterTooCostly(ValueError):
    """Filtering this response would take more than the filter's budget."""

    reason = "source_filter"


class _Patterns:
    """A set of ``*`` patterns, compiled for matching many dotted paths."""

    __slots__ = ("exact", "prefixes", "suffixes", "globs", "parents", "glob_heads", "glob_parents", "size")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.exact: FrozenSet[str] = frozenset(p for p in patterns if "*" not in p)
        starred = [p for p in patterns if "*" in p]
        # "abc*" and "*abc" (one star at an end) are one C-level call for all.
        self.prefixes = tuple(p[:-1] for p in starred if p.count("*") == 1 and p.endswith("*"))
        self.suffixes = tuple(p[1:] for p in starred if p.count("*") == 1 and p.startswith("*"))
        self.globs = tuple(tuple(p.split("*")) for p in starred
                           if not (p.count("*") == 1 and (p.endswith("*") or p.startswith("*"))))
        # What could match below a path: "a.b" for "a.b.c"; and for starred
        # patterns, the literal head before the first star.
        self.parents: Set[str] = set()
        for name in self.exact:
            self.parents.update(name[:i] for i, c in enumerate(name) if c == ".")
        self.glob_heads = tuple(p.partition("*")[0] for p in starred)
        self.glob_parents: Set[str] = set()
        for head in self.glob_heads:
            self.glob_parents.update(head[:i + 1] for i, c in enumerate(head) if c == ".")
        self.size = len(self.globs) + 3

    def matches(self, path: str) -> bool:
        return (path in self.exact
                or (bool(self.prefixes) and path.startswith(self.prefixes))
                or (bool(self.suffixes) and path.endswith(self.suffixes))
                or any(glob_matches(g, path) for g in self.globs))

    def may_match_below(self, path: str) -> bool:
        """Whether some ``path.<more>`` could match."""
        if path in self.parents:
            return True
        if not self.glob_heads:
            return False
        dotted = path + "."
        return dotted in self.glob_parents or dotted.startswith(self.glob_heads)


class _Matcher:
    """Per-search state: compiled patterns, a memo of decisions by path, and
    the budget of the response being filtered."""

    def __init__(self, includes: Sequence[str], excludes: Sequence[str]) -> None:
        self.includes = _Patterns(includes) if includes else None
        self.excludes = _Patterns(excludes) if excludes else None
        self.memo: Dict[str, Tuple[bool, bool, bool]] = {}
        self.budget = MAX_SOURCE_FILTER_CHECKS

    def decide(self, path: str) -> Tuple[bool, bool, bool]:
        """``(excluded, included, descend)`` for one path."""
        decision = self.memo.get(path)
        self.budget -= 1
        if decision is None:
            inc, exc = self.includes, self.excludes
            self.budget -= (inc.size if inc else 0) + (exc.size if exc else 0)
            excluded = exc is not None and exc.matches(path)
            included = inc is None or inc.matches(path)
            descend = not excluded and not included and inc is not None and inc.may_match_below(path)
            decision = (excluded, included, descend)
            if len(self.memo) < 65536:
                self.memo[path] = decision
        if self.budget < 0:
            raise SourceFilterTooCostly(f"source filtering needs more than {MAX_SOURCE_FILTER_CHECKS} steps")
        return decision

    def filter_object(self, obj: Dict[str, Any], prefix: str, includes: bool, depth: int) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for key, value in obj.items():
            path = prefix + key
            excluded, included, descend = self.decide(path)
            if excluded:
                continue
            if not includes or included:
                # Wholly included; an exclusion may still reach inside it.
                out[key] = self.filter_value(value, path, False, depth) if self.excludes else value
            elif descend:
                sub = self.filter_value(value, path, True, depth)
                if sub not in ({}, []):
                    out[key] = sub
        return out

    def filter_value(self, value: Any, path: str, includes: bool, depth: int) -> Any:
        if depth >= _MAX_WALK_DEPTH:
            raise SourceFilterTooCostly("source nested too deep to filter")
        if type(value) is dict:
            return self.filter_object(value, path + ".", includes, depth + 1)
        if type(value) is list:
            items = [self.filter_value(v, path, includes, depth + 1) for v in value]
            return [v for v in items if v != {}] if includes else items
        return value if not includes else {}


@dataclasses.dataclass(frozen=True)
class SourceFilter:
    """The client's ``_source`` filtering, reapplied by the proxy to each hit
    after it asked the engine for the whole source to rank with."""

    disabled: bool = False
    includes: Tuple[str, ...] = ()
    excludes: Tuple[str, ...] = ()

    @functools.cached_property
    def _matcher(self) -> _Matcher:
        return _Matcher(self.includes, self.excludes)

    @property
    def within_limits(self) -> bool:
        patterns = self.includes + self.excludes
        return (len(patterns) <= MAX_SOURCE_PATTERNS
                and all(len(p) <= MAX_SOURCE_PATTERN_CHARS for p in patterns))

    def apply(self, hit: Dict[str, Any]) -> None:
        """Trim ``hit["_source"]`` in place.  Raises :class:`SourceFilterTooCostly`
        past the budget, which all hits of one search share."""
        if "_source" not in hit:
            return
        if self.disabled:
            del hit["_source"]
        elif type(hit["_source"]) is dict:
            matcher = self._matcher
            hit["_source"] = matcher.filter_object(hit["_source"], "", bool(self.includes), 0)


def _patterns(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        return tuple(p for p in value.split(",") if p)
    if isinstance(value, list):
        return tuple(p for p in value if isinstance(p, str))
    return ()


def client_source_filter(body: Optional[Mapping[str, Any]],
                         params: Mapping[str, str]) -> Optional[SourceFilter]:
    """The client's ``_source`` filter from URL parameters (which win, as in
    Elasticsearch) or the body; None when the client wants the whole source."""
    if any(name in params for name in SOURCE_PARAMS):
        source = params.get("_source")
        if source is not None and source.lower() == "false":
            return SourceFilter(disabled=True)
        includes = _patterns(params.get("_source_includes") or params.get("_source_include") or "")
        if source is not None and source.lower() != "true":
            includes += _patterns(source)
        excludes = _patterns(params.get("_source_excludes") or params.get("_source_exclude") or "")
        return SourceFilter(includes=includes, excludes=excludes) if includes or excludes else None
    if not body or "_source" not in body:
        return None
    source = body["_source"]
    if source is False:
        return SourceFilter(disabled=True)
    if isinstance(source, (str, list)):
        return SourceFilter(includes=_patterns(source))
    if isinstance(source, dict):
        includes = _patterns(source.get("includes", source.get("include", ())))
        excludes = _patterns(source.get("excludes", source.get("exclude", ())))
        return SourceFilter(includes=includes, excludes=excludes) if includes or excludes else None
    return None
