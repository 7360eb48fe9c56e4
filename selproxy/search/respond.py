"""Turn the engine's window into the client's page, in the engine's own format.

Only what must change is changed: the list of hits is cut to the client's
page, each returned hit's score and ``max_score`` become the ranker's, and a
filtered ``_source`` is trimmed back.  ``hits.total``, ``aggregations``,
``suggest``, ``took``, ``_shards``, ``timed_out`` and every other field of every
hit are left as decoded, then the document is re-encoded compactly (orjson
when installed).  Numbers keep their values; insignificant whitespace is not
kept.

Every claimed response carries ``X-Selproxy-Rerank``:

* ``applied``: the page is in the ranker's order; ``applied; partial=K/N``:
  the ranker scored the first K of the window's N hits within its deadline,
  those K are in its order and the rest follow in engine order;
  ``; fusion=off`` is added when score fusion is configured but the hits had
  no engine scores (a sort, an unscored query), so the model's scores alone
  ordered them; ``; cached`` is added to a later page cut from a kept window
  (:mod:`selproxy.search.window_cache`), which made no engine or model call;
* ``skipped; reason=<token>``: passed through (tokens: see
  :mod:`selproxy.search.rewrite`);
* ``fallback; reason=<token>``: the ranker failed and the page is in engine
  order.  Tokens: ``error`` (it raised or returned bad scores), ``deadline``
  (it did not answer in time), ``overloaded`` (too many rank calls pending).

For ``_msearch`` the header lists one such value per search, comma-separated.
Every header value the search path adds is printable ASCII (:func:`header_safe`):
nothing a client or a ranker sends can put CR, LF, NUL or a non-Latin-1
character into a response head.
``Server-Timing`` gives ``upstream``, ``queue``, ``encode``, ``score`` and
``rank`` in milliseconds (see :func:`format_server_timing`).
With ``explain`` or the ``debug`` override each returned hit carries
``"_selproxy": {"engine_rank": <0-based>, "engine_score": <score>}``.
"""
from __future__ import annotations

import gzip
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .._inflate import DecodedTooLarge, gunzip
from ..handler import Headers, Response, header_value
from .config import DEFAULT_MAX_DECODED_BODY, ParamSearchAPI
from .rewrite import SearchPlan

__all__ = ("decode_body", "skip_reason", "header_safe", "accepts_gzip", "page_hits", "apply_es",
           "apply_params", "hits_at", "format_server_timing", "client_response", "passthrough_response", "value_path")


def decode_body(response: Response, limit: int = DEFAULT_MAX_DECODED_BODY) -> bytes:
    """The response body, gunzipped when the engine compressed it.

    Raises ValueError for an encoding the proxy cannot read, and
    :class:`~selproxy._inflate.DecodedTooLarge` (a ValueError whose ``reason``
    is ``too_large``) for a body, raw or inflated, larger than ``limit``: the
    proxy decodes no more JSON than that on its loop, and passes the response
    through instead.
    """
    encoding = (response.header("content-encoding") or "identity").strip().lower()
    if encoding in ("identity", ""):
        if len(response.body) > limit:
            raise DecodedTooLarge(limit)
        return response.body
    if encoding in ("gzip", "x-gzip"):
        return gunzip(response.body, limit)
    raise ValueError(f"unsupported content-encoding {encoding[:40]!r}")


def skip_reason(exc: BaseException, default: str) -> str:
    """The reason token for a body the proxy would not read: the error's own
    ``reason`` (``too_large``) or ``default``."""
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) and reason.isidentifier() else default


def header_safe(value: str, max_chars: Optional[int] = None) -> str:
    """``value`` reduced to printable ASCII (0x20-0x7E), each other character
    replaced by ``?``, and cut to ``max_chars`` if given: fit for any response
    head.  (The proxy's own values are bounded already: an ``_msearch`` report
    has one short item per search, at most ``MAX_MSEARCH_SEARCHES``.)"""
    if max_chars is not None:
        value = value[:max_chars]
    if value.isascii() and value.isprintable():
        return value
    return "".join(c if " " <= c <= "~" else "?" for c in value)


def accepts_gzip(headers: Headers) -> bool:
    """Whether a request's ``Accept-Encoding`` allows gzip (RFC 9110 section 12.5.3)."""
    value = header_value(headers, "accept-encoding")
    if not value:
        return False
    for item in value.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def page_hits(hits: List[Dict[str, Any]], plan: SearchPlan, scores: Optional[Sequence[float]],
              score_field: str = "_score", score_always: bool = True) -> List[Dict[str, Any]]:
    """The client's page of ``hits`` (the engine's window, from 0).

    With ``scores`` (one per hit of the window, or of a prefix of it) that
    part is reordered by them, highest first, ties in engine order, and the
    rest follows in engine order; without, engine order stays.
    """
    n = min(plan.window, len(hits))
    if scores is not None:
        n = min(n, len(scores))
        order = sorted(range(n), key=scores.__getitem__, reverse=True)
    else:
        order = list(range(n))
    order.extend(range(n, len(hits)))
    page = []
    for i in order[plan.offset:plan.offset + plan.size]:
        hit = hits[i]
        if plan.explain:
            hit["_selproxy"] = {"engine_rank": i, "engine_score": hit.get(score_field)}
        if scores is not None and i < n and (score_always or score_field in hit):
            hit[score_field] = float(scores[i])
        if plan.source_filter is not None:
            plan.source_filter.apply(hit)
        page.append(hit)
    return page


def apply_es(doc: Dict[str, Any], plan: SearchPlan, scores: Optional[Sequence[float]]) -> None:
    """Cut an Elasticsearch search response to the client's page, in place."""
    hits = doc["hits"]
    hits["hits"] = page_hits(hits["hits"], plan, scores)
    if scores is not None and len(scores) and "max_score" in hits:
        hits["max_score"] = float(max(scores))


def value_path(doc: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def hits_at(doc: Any, path: Sequence[str]) -> Optional[List[Dict[str, Any]]]:
    """The list of hits at ``path``, or None when there is no list there or an
    item is not an object: a response the proxy cannot rerank."""
    hits = value_path(doc, path)
    if type(hits) is not list or not all(type(hit) is dict for hit in hits):
        return None
    return hits


def apply_params(doc: Dict[str, Any], api: ParamSearchAPI, plan: SearchPlan,
                 scores: Optional[Sequence[float]], client_params: Mapping[str, str]) -> None:
    """Cut a response of a parameter-described engine (Solr) to the client's page."""
    parent = value_path(doc, api.hits_path[:-1])
    parent[api.hits_path[-1]] = page_hits(parent[api.hits_path[-1]], plan, scores,
                                          api.score_field, score_always=False)
    container = value_path(doc, api.offset_path[:-1])
    if isinstance(container, dict) and api.offset_path[-1] in container:
        container[api.offset_path[-1]] = plan.offset
    container = value_path(doc, api.max_score_path[:-1])
    if (scores is not None and len(scores) and isinstance(container, dict)
            and api.max_score_path[-1] in container):
        container[api.max_score_path[-1]] = float(max(scores))
    echo = value_path(doc, api.echo_params_path)
    if isinstance(echo, dict):
        for name in (api.size_param, api.offset_param):
            if name in client_params:
                echo[name] = client_params[name]
            else:
                echo.pop(name, None)


def format_server_timing(upstream_s: float, queue_s: float = 0.0, rank_s: float = 0.0,
                         encode_s: float = 0.0, score_s: float = 0.0) -> str:
    """``Server-Timing`` in milliseconds: the engine, then the ranker's step:
    ``rank`` is all the time the search waited for it (a missed deadline
    included), of which ``queue`` waiting for the model, ``encode``
    embedding and ``score`` scoring."""
    return (f"upstream;dur={upstream_s * 1e3:.2f}, queue;dur={queue_s * 1e3:.2f}, "
            f"encode;dur={encode_s * 1e3:.2f}, score;dur={score_s * 1e3:.2f}, "
            f"rank;dur={rank_s * 1e3:.2f}")


def _extra(rerank: str, timing: str, ignored: Tuple[str, ...]) -> Headers:
    # The tokens are the proxy's own (reasons, overrides' safe report), but a
    # ranker may name its own RankFailed reason: keep every value inert.
    headers = [("X-Selproxy-Rerank", header_safe(rerank)), ("Server-Timing", header_safe(timing))]
    if ignored:
        headers.append(("X-Selproxy-Ignored", header_safe(", ".join(ignored))))
    return headers


def passthrough_response(upstream: Response, rerank: str, timing: str,
                         ignored: Tuple[str, ...] = ()) -> Response:
    """The engine's response verbatim, with the proxy's headers added (the
    core sets the framing: see :mod:`selproxy.handler`)."""
    return Response(upstream.status, upstream.headers + _extra(rerank, timing, ignored), upstream.body)


def client_response(upstream: Response, body: bytes, *, gzip_ok: bool, gzip_level: int,
                    rerank: str, timing: str, ignored: Tuple[str, ...] = ()) -> Response:
    """A rewritten response: the engine's status and headers with a new body,
    gzip-compressed when the client accepts it.  The engine's
    Content-Encoding described its own body; the framing is the core's."""
    headers = [(k, v) for k, v in upstream.headers if k.lower() != "content-encoding"]
    if gzip_ok:
        body = gzip.compress(body, compresslevel=gzip_level, mtime=0)
        headers.append(("Content-Encoding", "gzip"))
    return Response(upstream.status, headers + _extra(rerank, timing, ignored), body)
