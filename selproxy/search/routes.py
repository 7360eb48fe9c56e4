"""The claimed search routes, and which indices they apply to.

Claimed by default (Elasticsearch and OpenSearch speak the same API):

* ``GET|POST /_search`` and ``/<index>/_search`` (``<index>`` may be a
  comma-separated list or hold wildcards: it is one path segment);
* ``GET|POST /_msearch`` and ``/<index>/_msearch``.

Scroll continuations (``/_search/scroll``), ``_count``, ``_doc``, ``_bulk``,
PIT management and everything else do not match and pass through untouched.
Solr is claimed only when :func:`solr_routes` is configured.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Sequence, Tuple

from .config import SOLR, ParamSearchAPI, SearchRoute

__all__ = ("default_routes", "solr_routes", "split_indices", "indices_allowed")


def default_routes() -> Tuple[SearchRoute, ...]:
    """The Elasticsearch/OpenSearch search routes."""
    return (
        SearchRoute("/_search", "search", name="search"),
        SearchRoute("/{index}/_search", "search", name="search"),
        SearchRoute("/_msearch", "msearch", name="msearch"),
        SearchRoute("/{index}/_msearch", "msearch", name="msearch"),
    )


def solr_routes(api: ParamSearchAPI = SOLR, prefix: str = "/solr") -> Tuple[SearchRoute, ...]:
    """Solr's ``/solr/<core>/select``, described by ``api``."""
    return (SearchRoute(f"{prefix}/{{index}}/select", "params", name="solr", api=api),)


def split_indices(expression: object) -> Tuple[str, ...]:
    """The index names of a path segment (``a,b*``) or msearch header value."""
    if isinstance(expression, str):
        return tuple(name for name in expression.split(",") if name)
    if isinstance(expression, (list, tuple)):
        return tuple(name for item in expression for name in split_indices(item))
    return ()


def indices_allowed(names: Sequence[str], include: Iterable[str], exclude: Iterable[str]) -> bool:
    """Whether a search over ``names`` (none: all indices) may be reranked.

    Every name must match an ``include`` pattern and none an ``exclude``
    pattern.  An exclusion term such as ``-logs*`` inside the request narrows
    the search, so it is not checked itself.
    """
    include, exclude = tuple(include), tuple(exclude)
    for name in names or ("_all",):
        if name.startswith("-"):
            continue
        # ``cluster:index`` is a remote index: match on the index part too.
        local = name.rsplit(":", 1)[-1]
        if any(fnmatchcase(name, p) or fnmatchcase(local, p) for p in exclude):
            return False
        if not any(fnmatchcase(name, p) or fnmatchcase(local, p) for p in include):
            return False
    return True
