"""Configuration of the search path: what is claimed, and how it is reranked.

Each default is documented where it is declared.  The lead's ``Proxy`` takes a
:class:`SearchConfig` as ``search=``; the CLI flags map onto its fields.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from ..config import Config
from .capture import CaptureConfig
from .interleave import InterleaveConfig

__all__ = ("ParamSearchAPI", "SearchRoute", "SearchConfig", "SOLR", "DEFAULT_MAX_DECODED_BODY")

#: The core's default ``max_buffered_body``: a claimed body decodes to no more
#: than it may be sent raw.
DEFAULT_MAX_DECODED_BODY: int = Config.max_buffered_body


@dataclasses.dataclass(frozen=True)
class ParamSearchAPI:
    """A declarative description of a search API driven by URL parameters.

    It says where the query, size, offset, hits and scores live, so the same
    rewriting serves engines other than Elasticsearch.  :data:`SOLR` is the
    description of Solr's ``/select`` handler.
    """

    name: str
    #: URL parameter holding the query, in Lucene syntax.
    query_param: str = "q"
    size_param: str = "rows"
    offset_param: str = "start"
    default_size: int = 10
    #: URL parameter holding the sort, and the values that mean "by relevance".
    sort_param: str = "sort"
    score_sorts: Tuple[str, ...] = ("score desc",)
    #: Parameters that mean cursor paging; a search with one is not reranked.
    cursor_params: Tuple[str, ...] = ("cursorMark",)
    #: Response-format parameter and the values this description can read.
    format_param: str = "wt"
    formats: Tuple[str, ...] = ("json",)
    #: Path to the list of hits in the response, and to its offset.
    hits_path: Tuple[str, ...] = ("response", "docs")
    offset_path: Tuple[str, ...] = ("response", "start")
    #: Per-hit score field (written only where the engine wrote it), and the
    #: maximum-score field.
    score_field: str = "score"
    max_score_path: Tuple[str, ...] = ("response", "maxScore")
    #: Path to the echo of the request parameters, restored to the client's.
    echo_params_path: Tuple[str, ...] = ("responseHeader", "params")
    #: Per-hit fields left out of the default document text.
    id_fields: Tuple[str, ...] = ("id", "_version_", "score")


#: Solr's standard request handler (``/solr/<core>/select``).
SOLR = ParamSearchAPI(name="solr")


@dataclasses.dataclass(frozen=True)
class SearchRoute:
    """One claimed search route.

    ``kind`` is ``"search"`` (an Elasticsearch/OpenSearch ``_search``),
    ``"msearch"`` (NDJSON ``_msearch``) or ``"params"`` (an engine described
    by ``api``).  Fields left ``None`` take the :class:`SearchConfig` value.
    """

    path: str
    kind: str = "search"
    methods: Tuple[str, ...] = ("GET", "POST")
    name: str = ""
    api: Optional[ParamSearchAPI] = None
    #: Explicit dotted path to the query text in the body, for unusual bodies.
    query_path: Optional[str] = None
    #: Document text fields (see :func:`selproxy.search.extract.parse_field_spec`).
    text_fields: Optional[Tuple[str, ...]] = None
    rank_deadline: Optional[float] = None
    topn: Optional[int] = None
    #: Shadow mode for this route (None: ``SearchConfig.shadow``).
    shadow: Optional[bool] = None
    #: The window cache for this route (None: ``SearchConfig.window_cache``).
    window_cache: Optional[bool] = None


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How claimed searches are rewritten and reranked."""

    #: Hits asked of the engine and reranked (the window).  A request whose
    #: page ends past the window still gets at least ``from + size`` hits.
    topn: int = 50
    #: The largest ``topn`` a per-request override may ask for.
    max_topn: int = 500
    #: Seconds the ranker may take (queueing included) before the proxy
    #: answers in the engine's order.  Fail-open, never an error.
    rank_deadline: float = 0.25
    #: Document text fields, as ``[highlight.|fields.]name[:max_chars]``.
    #: Empty: every string value of ``_source``, in document order.
    text_fields: Tuple[str, ...] = ()
    #: Truncation of each field (or each source string) in characters; 0: none.
    max_field_chars: int = 2000
    #: Index patterns (fnmatch) that are reranked; a search naming any index
    #: outside them, or inside ``exclude_indices``, passes through.  Hidden and
    #: system indices (``.kibana`` ...) are left alone by default.
    include_indices: Tuple[str, ...] = ("*",)
    exclude_indices: Tuple[str, ...] = (".*",)
    #: The claimed routes; ``None`` means :func:`selproxy.search.routes.default_routes`.
    routes: Optional[Tuple[SearchRoute, ...]] = None
    #: Routes added to the default set (for example :func:`solr_routes`).
    extra_routes: Tuple[SearchRoute, ...] = ()
    #: Worker threads for a ranker whose ``rank`` is a plain ``def``.
    ranker_threads: int = 1
    #: Ranker calls running or queued at once; beyond this a search falls back
    #: at once (reason ``overloaded``) instead of queueing behind a slow model.
    max_pending_ranks: int = 64
    #: gzip level for re-compressed responses; 1 favours latency over size.
    gzip_level: int = 1
    #: Seconds to wait for the engine on a claimed request; ``None``: the core's.
    upstream_timeout: Optional[float] = None
    #: Largest body the search path decodes, after gzip.  A gzip request body
    #: that inflates past it gets a 413; an engine response larger than it
    #: (raw or inflated) is passed through verbatim, not reranked (reason
    #: ``too_large``).  It bounds memory and the time JSON decoding holds the loop.
    max_decoded_body: int = DEFAULT_MAX_DECODED_BODY
    #: ``--interleave A,B``: team-draft interleaving of two arms (relevance.py).
    interleave: Optional[InterleaveConfig] = None
    #: ``--capture FILE``: sampled searches and clicks as JSON lines (relevance.py).
    capture: Optional[CaptureConfig] = None
    #: Keep each reranked window, so later pages of the same search need no
    #: engine and no model call (:mod:`selproxy.search.window_cache`).  On:
    #: a later page cut from the window its first page came from is what the
    #: paging rule promises; the first page always goes to the engine.
    window_cache: bool = True
    #: Bounds of each worker's window cache: entries, and bytes (the engine's
    #: decoded responses, the scores, the keys).
    cache_entries: int = 1024
    cache_bytes: int = 64 << 20
    #: Seconds an entry is served; writes that bypass the proxy show after it.
    cache_ttl: float = 120.0
    #: Seconds a write through the proxy may take to show in searches (the
    #: engine's refresh interval): entries begun sooner after it are not kept.
    cache_settle: float = 1.0
    #: ``"all"``: a write through the proxy drops every entry (safe with
    #: aliases); ``"index"``: only the entries naming the written index (and
    #: wildcard, ``_all`` and remote ones).
    cache_invalidation: str = "all"
    #: Serve a repeated first page from the cache too (else it refreshes it).
    cache_first_page: bool = False
    #: Shadow mode: rerank every claimed search after answering it in the
    #: engine's order, byte for byte, and record both orders
    #: (:mod:`selproxy.search.shadow`).
    shadow: bool = False
    #: Shadow records kept for the status page (the newest).
    shadow_ring: int = 32
    #: Shadow reranks running at once, and waiting; past that they are dropped.
    shadow_concurrency: int = 2
    shadow_queue: int = 64
    #: Keep each shadowed query's text in its record (else only a hash).
    shadow_record_queries: bool = False

    def __post_init__(self) -> None:
        if self.topn < 1 or self.max_topn < self.topn:
            raise ValueError("need 1 <= topn <= max_topn")
        if self.rank_deadline <= 0:
            raise ValueError("rank_deadline must be positive")
        if self.ranker_threads < 1 or self.max_pending_ranks < 1:
            raise ValueError("ranker_threads and max_pending_ranks must be >= 1")
        if self.max_decoded_body < 1:
            raise ValueError("max_decoded_body must be positive")
        if self.cache_entries < 1 or self.cache_bytes < 1 or self.cache_ttl <= 0 or self.cache_settle < 0:
            raise ValueError("need cache_entries >= 1, cache_bytes >= 1, cache_ttl > 0, cache_settle >= 0")
        if self.cache_invalidation not in ("all", "index"):
            raise ValueError("cache_invalidation is 'all' or 'index'")
        if self.shadow_ring < 0 or self.shadow_concurrency < 1 or self.shadow_queue < 1:
            raise ValueError("need shadow_ring >= 0, shadow_concurrency >= 1, shadow_queue >= 1")
