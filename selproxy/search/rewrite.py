"""Turn a client's search into the request the proxy sends upstream.

The client asks for ``size`` k hits (default 10) from ``from`` f (default 0).
The proxy asks the engine for n = max(topn, f + k) hits from 0, reranks the
first topn of them (the window), appends the rest in engine order, and answers
hits [f, f + k) of that list.  A page that starts at or past the window is not
rewritten at all (reason ``past_window``): it is the engine's own page.

Paging is consistent: every page of one query is cut from the same list
(the window cache, :mod:`selproxy.search.window_cache`, keeps that list),
rerank(engine[0:topn]) followed by engine[topn:], so pages neither repeat nor
skip a hit, as long as the ranker is deterministic and the index does not
change between the requests.  Hits past the window keep the engine's scores.

A search is passed through unchanged when it cannot be reranked.  The reason
goes to the client in ``X-Selproxy-Rerank: skipped; reason=<token>``:

=================  ===========================================================
token              meaning
=================  ===========================================================
``override``       the request said ``rerank=false``
``index``          an index is outside ``include_indices``/in ``exclude_indices``
``scroll``         a scroll search (``?scroll=``)
``pit``            a point-in-time search
``search_after``   ``search_after`` (or Solr's ``cursorMark``) paging
``sort``           the primary sort is not ``_score`` descending
``size0``          ``size: 0`` (aggregations only)
``past_window``    the page starts at or past the window
``no_query_text``  no query text was found
``source_filter``  the ``_source`` patterns are more than the proxy reapplies
                   (see :mod:`selproxy.search.source_filter`); the engine does
``too_large``      the body, or the engine's response, is larger or more
                   structured than the proxy decodes (``max_decoded_body``,
                   :mod:`selproxy.search._json`)
``bad_request``    the body is not JSON the proxy can read; the engine decides
``format``         the response is not in a shape the proxy can read
``no_hits``        the engine found nothing
``no_doc_text``    no hit had any text to rank
``upstream_status``  the engine answered with an error (sent on verbatim)
``shadow``         shadow mode: the engine's answer, reranked after it is sent
                   (see :mod:`selproxy.search.shadow`)
=================  ===========================================================
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, quote

from .._inflate import DecodedTooLarge, gunzip
from ..errors import BodyTooLarge
from ..handler import Request
from . import _json
from .config import ParamSearchAPI
from .extract import lucene_text, query_text
from .overrides import Overrides
from .routes import indices_allowed
from .source_filter import SOURCE_PARAMS, SourceFilter, client_source_filter

__all__ = ("SourceFilter", "client_source_filter", "SearchPlan", "plan_search", "plan_msearch", "plan_params_search",
           "rewrite_query_string", "query_params", "request_body", "MAX_MSEARCH_SEARCHES")

_SOURCE_PARAMS = SOURCE_PARAMS
#: Most searches one ``_msearch`` may hold to be reranked; past it the whole
#: request is sent on unchanged (reason ``too_large``).  Planning costs some
#: microseconds per search, on the loop.
MAX_MSEARCH_SEARCHES = 1000


@dataclasses.dataclass
class SearchPlan:
    """What the proxy does with one search: skip it, or how to rewrite it."""

    skip: Optional[str] = None
    query: str = ""
    offset: int = 0
    size: int = 10
    #: Hits reranked; hits past it keep engine order.
    window: int = 50
    #: Hits asked of the engine, from 0.
    fetch: int = 50
    source_filter: Optional[SourceFilter] = None
    #: Annotate each hit with its engine rank and score.
    explain: bool = False
    indices: Tuple[str, ...] = ()
    #: The rewritten body (None: no body, or unchanged).
    body: Optional[Dict[str, Any]] = None
    #: URL parameter changes: name -> new value, or None to remove it.
    params: Dict[str, Optional[str]] = dataclasses.field(default_factory=dict)


def request_body(request: Request, limit: int) -> bytes:
    """A claimed request's body, gunzipped when the client compressed it.

    A body that inflates past ``limit`` bytes raises
    :class:`~selproxy.errors.BodyTooLarge` (413, in Elasticsearch's error
    shape), as a raw body past ``max_buffered_body`` does: the decoded size of
    a claimed request is bounded like its raw size.  A body that is not gzip
    raises ValueError (the search is then sent on unchanged).
    """
    if (request.header("content-encoding") or "").strip().lower() in ("gzip", "x-gzip"):
        try:
            return gunzip(request.body, limit)
        except DecodedTooLarge:
            raise BodyTooLarge(f"the request body inflates past {limit} bytes "
                               "(max_decoded_body)") from None
    return request.body


def query_params(query_string: str) -> Dict[str, str]:
    """The first value of each URL parameter."""
    params: Dict[str, str] = {}
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        params.setdefault(key, value)
    return params


def rewrite_query_string(query_string: str, changes: Mapping[str, Optional[str]]) -> str:
    """Apply ``changes`` to a query string, keeping every untouched byte.
    Changed names that are absent are appended."""
    if not changes:
        return query_string
    items: List[str] = []
    done = set()
    for item in query_string.split("&") if query_string else ():
        key = item.partition("=")[0]
        from_key = dict(parse_qsl(item, keep_blank_values=True))
        name = next(iter(from_key), key)
        if name in changes:
            value = changes[name]
            if value is not None and name not in done:
                items.append(f"{quote(name, safe='')}={quote(value, safe=',*')}")
            done.add(name)
        else:
            items.append(item)
    for name, value in changes.items():
        if name not in done and value is not None:
            items.append(f"{quote(name, safe='')}={quote(value, safe=',*')}")
    return "&".join(items)


def _as_int(value: Any, default: int) -> Optional[int]:
    """An int from a body or URL value; None when it is not one."""
    if value is None:
        return default
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _sort_by_score(sort: Any) -> bool:
    items = sort if isinstance(sort, list) else [sort]
    if not items:
        return True
    first = items[0]
    if isinstance(first, str):
        name, _, order = first.partition(":")
        return name == "_score" and order in ("", "desc")
    if isinstance(first, dict) and len(first) == 1:
        name, spec = next(iter(first.items()))
        if name != "_score":
            return False
        order = spec if isinstance(spec, str) else spec.get("order", "desc") if isinstance(spec, dict) else "desc"
        return order == "desc"
    return False


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", ""))


def _plan_window(plan: SearchPlan, size: Optional[int], offset: Optional[int], window: int,
                 query: Callable[[], str]) -> bool:
    """The rerank step every search plan shares: check the client's page
    (``size`` hits from ``offset``; None where it was not a number) against
    the ``window`` and find the query text (``query()``, only for a page that
    starts inside the window).  Sets ``plan.skip`` and returns False when the
    search cannot be reranked; otherwise fills in the page, the window and
    the hits to fetch."""
    if size is None or offset is None or size < 0 or offset < 0:
        plan.skip = "bad_request"
        return False
    if size == 0:
        plan.skip = "size0"
    elif offset >= window:
        plan.skip = "past_window"
    else:
        plan.query = query()
        if not plan.query:
            plan.skip = "no_query_text"
    if plan.skip:
        return False
    plan.size, plan.offset, plan.window = size, offset, window
    plan.fetch = max(window, offset + size)
    return True


def plan_search(body: Optional[Dict[str, Any]], params: Mapping[str, str], indices: Sequence[str], *,
                topn: int, overrides: Overrides = Overrides(), query_path: Optional[str] = None,
                include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> SearchPlan:
    """Plan one Elasticsearch/OpenSearch search (a ``_search`` or one ``_msearch`` item).

    ``body`` is the decoded body (None when empty), ``params`` the URL
    parameters, ``indices`` the index names it targets.
    """
    plan = SearchPlan(indices=tuple(indices))
    body = body or {}
    if not overrides.rerank:
        plan.skip = "override"
        return plan
    if not indices_allowed(indices, include, exclude):
        plan.skip = "index"
        return plan
    if "scroll" in params or "scroll" in body:
        plan.skip = "scroll"
        return plan
    if "pit" in body:
        plan.skip = "pit"
        return plan
    if "search_after" in body:
        plan.skip = "search_after"
        return plan
    sort = params["sort"].split(",") if "sort" in params else body.get("sort")
    if sort is not None and not _sort_by_score(sort):
        plan.skip = "sort"
        return plan
    if not _plan_window(plan, _as_int(params.get("size", body.get("size")), 10),
                        _as_int(params.get("from", body.get("from")), 0), overrides.topn or topn,
                        lambda: query_text(body, params.get("q"), query_path)):
        return plan
    plan.source_filter = client_source_filter(body, params)
    if plan.source_filter is not None and not plan.source_filter.within_limits:
        plan.skip = "source_filter"
        return plan
    plan.explain = overrides.debug or _truthy(params.get("explain", body.get("explain", False)))

    url_changes: Dict[str, Optional[str]] = {}
    if plan.source_filter is not None:
        url_changes.update((name, None) for name in _SOURCE_PARAMS if name in params)
    if body:
        new_body = dict(body)
        new_body["from"], new_body["size"] = 0, plan.fetch
        if plan.source_filter is not None and "_source" in body:
            new_body["_source"] = True
        url_changes.update((name, None) for name in ("from", "size") if name in params)
        plan.body = new_body
    else:
        url_changes.update({"from": "0", "size": str(plan.fetch)})
    plan.params = url_changes
    return plan


def plan_msearch(data: bytes, default_indices: Sequence[str], *, topn: int,
                 overrides: Overrides = Overrides(), query_path: Optional[str] = None,
                 include: Sequence[str] = ("*",), exclude: Sequence[str] = ()
                 ) -> Optional[Tuple[List[SearchPlan], bytes]]:
    """Plan every search of an NDJSON ``_msearch`` body.

    Returns the plans and the body to send upstream, in which only the lines
    of rewritten searches differ; or None when the body cannot be read.
    Raises :class:`~selproxy.search._json.TooCostly` for a body with more
    structure than the proxy decodes (its lines share one budget), or with
    more than :data:`MAX_MSEARCH_SEARCHES` searches.
    """
    from .routes import split_indices

    _json.check_cost(data)
    if data.count(b"\n") > 2 * MAX_MSEARCH_SEARCHES + 1:
        raise _json.TooCostly(f"more than {MAX_MSEARCH_SEARCHES} searches in one _msearch")

    lines = data.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 2:
        return None
    plans: List[SearchPlan] = []
    out: List[bytes] = []
    for i in range(0, len(lines), 2):
        header_line, body_line = lines[i], lines[i + 1]
        try:
            header = _json.loads(header_line) if header_line.strip() else {}
            body = _json.loads(body_line) if body_line.strip() else {}
        except ValueError:
            return None
        if not isinstance(header, dict) or not isinstance(body, dict):
            return None
        indices = split_indices(header["index"]) if "index" in header else tuple(default_indices)
        plan = plan_search(body, {}, indices, topn=topn, overrides=overrides, query_path=query_path,
                           include=include, exclude=exclude)
        plans.append(plan)
        out.append(header_line)
        out.append(_json.dumps(plan.body) if plan.body is not None else body_line)
    return plans, b"\n".join(out) + b"\n"


def plan_params_search(api: ParamSearchAPI, params: Mapping[str, str], indices: Sequence[str], *,
                       topn: int, overrides: Overrides = Overrides(),
                       include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> SearchPlan:
    """Plan a search of an engine described by URL parameters (Solr)."""
    plan = SearchPlan(indices=tuple(indices))
    if not overrides.rerank:
        plan.skip = "override"
    elif not indices_allowed(indices, include, exclude):
        plan.skip = "index"
    elif any(name in params for name in api.cursor_params):
        plan.skip = "search_after"
    elif api.format_param in params and params[api.format_param] not in api.formats:
        plan.skip = "format"
    elif params.get(api.sort_param, api.score_sorts[0]).strip() not in api.score_sorts:
        plan.skip = "sort"
    if plan.skip or not _plan_window(plan, _as_int(params.get(api.size_param), api.default_size),
                                     _as_int(params.get(api.offset_param), 0), overrides.topn or topn,
                                     lambda: lucene_text(params.get(api.query_param, ""))):
        return plan
    plan.explain = overrides.debug
    plan.params = {api.offset_param: "0", api.size_param: str(plan.fetch)}
    return plan
