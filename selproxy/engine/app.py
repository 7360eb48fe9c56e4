"""The HTTP face of the engine: an ASGI app (Starlette) speaking Elasticsearch's
REST wire format.

Every response carries ``X-Elastic-Product: Elasticsearch``, which the
official clients check, and answers a request that asked for
``application/vnd.elasticsearch+json; compatible-with=N`` (as the 8.x and 9.x
clients do) in that same media type.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from starlette.requests import Request
from starlette.responses import Response

from .._inflate import gunzip
from .contexts import DEFAULT_MAX_KEEP_ALIVE, DEFAULT_MAX_OPEN, SearchContext, SearchContexts, Target, parse_time_value
from .errors import (ActionRequestValidation, ContentTooLong, DocumentParsingError, EngineError, IllegalArgument,
                     IndexNotFound, ParsingError, ResourceNotFound, SearchContextMissing, UnsupportedFeature)
from .mget import parse_mget, run_mget
from .search import SearchRequest, Walk, filter_source, parse_msearch, parse_search, parse_source, run_count, run_search
from .store import IndexMeta, Store, Txn, get_doc, high_waters, index_stats

__all__ = ("EngineApp", "VERSION_INFO")

# Elasticsearch's default http.max_content_length: the most a gzip request
# body may inflate to (a bomb would otherwise take all memory).
MAX_INFLATED_BODY = 100 * 1024 * 1024

# What GET / reports.  9.x and 8.x clients accept it (the 9.x client sends
# compatible-with=9, the 8.x one compatible-with=8, and a 9.x server serves both).
VERSION_INFO = {
    "number": "9.0.0",
    "build_flavor": "default",
    "build_type": "tar",
    "build_hash": "selproxy-engine",
    "build_date": "2025-04-08T00:00:00.000Z",
    "build_snapshot": False,
    "lucene_version": "10.1.0",
    "minimum_wire_compatibility_version": "8.18.0",
    "minimum_index_compatibility_version": "8.0.0",
}

logger = logging.getLogger("selproxy.engine")

_MAX_COUNTS_PER_PIT = 16  # distinct queries whose totals a point in time remembers

Handler = Callable[["Call"], Awaitable[Tuple[int, Any]]]


class Call:
    """One request, as the handlers see it."""

    def __init__(self, method: str, path: str, params: Dict[str, str], body: bytes,
                 parts: Dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.params = params
        self.raw = body
        self.parts = parts
        # Deprecation warnings, sent back as Elasticsearch's ``Warning: 299`` headers.
        self.warnings: List[str] = []

    def json(self, required: bool = False) -> Any:
        if not self.raw.strip():
            if required:
                raise ParsingError("request body is required")
            return None
        try:
            return json.loads(self.raw)
        except ValueError as exc:
            raise ParsingError(f"Failed to parse the request body as JSON: {exc}") from None

    def int_param(self, name: str) -> Optional[int]:
        value = self.params.get(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise IllegalArgument(f"Failed to parse int parameter [{name}] with value [{value}]") from None


def _route_key(pattern: str) -> List[str]:
    return [p for p in pattern.split("/") if p]


class EngineApp:
    """ASGI application over a :class:`~selproxy.engine.store.Store`."""

    def __init__(self, store: Store, name: str = "selproxy-engine", max_open_contexts: int = DEFAULT_MAX_OPEN,
                 max_keep_alive: float = DEFAULT_MAX_KEEP_ALIVE) -> None:
        self.store = store
        self.name = name
        self.contexts = SearchContexts(max_open_contexts, max_keep_alive)
        self.routes: List[Tuple[List[str], Dict[str, Handler]]] = []
        r = self._route
        r("/", GET=self.info, HEAD=self.info)
        r("/_cluster/health", GET=self.health)
        r("/_cluster/health/{index}", GET=self.health)
        r("/_bulk", POST=self.bulk, PUT=self.bulk)
        r("/{index}/_bulk", POST=self.bulk, PUT=self.bulk)
        r("/_search/scroll", GET=self.scroll, POST=self.scroll, DELETE=self.clear_scroll)
        r("/_search/scroll/{scroll_id}", GET=self.scroll, POST=self.scroll, DELETE=self.clear_scroll)
        r("/_pit", DELETE=self.close_pit)
        r("/{index}/_pit", POST=self.open_pit)
        r("/_mget", GET=self.mget, POST=self.mget)
        r("/{index}/_mget", GET=self.mget, POST=self.mget)
        r("/_search", GET=self.search, POST=self.search)
        r("/{index}/_search", GET=self.search, POST=self.search)
        r("/_msearch", GET=self.msearch, POST=self.msearch)
        r("/{index}/_msearch", GET=self.msearch, POST=self.msearch)
        r("/_count", GET=self.count, POST=self.count)
        r("/{index}/_count", GET=self.count, POST=self.count)
        r("/_cat/indices", GET=self.cat_indices)
        r("/_cat/indices/{index}", GET=self.cat_indices)
        r("/_refresh", GET=self.refresh, POST=self.refresh)
        r("/{index}/_refresh", GET=self.refresh, POST=self.refresh)
        r("/_mapping", GET=self.get_mapping)
        r("/{index}/_mapping", GET=self.get_mapping, PUT=self.put_mapping, POST=self.put_mapping)
        r("/{index}/_doc", POST=self.index_doc)
        r("/{index}/_doc/{id}", GET=self.get_doc, HEAD=self.get_doc, PUT=self.index_doc, POST=self.index_doc,
          DELETE=self.delete_doc)
        r("/{index}/_create/{id}", PUT=self.create_doc, POST=self.create_doc)
        r("/{index}/_update/{id}", POST=self.update_doc)
        r("/{index}/_source/{id}", GET=self.get_source, HEAD=self.get_source)
        r("/{index}", PUT=self.create_index, DELETE=self.delete_index, HEAD=self.index_exists,
          GET=self.get_index)

    def _route(self, pattern: str, **methods: Handler) -> None:
        self.routes.append((_route_key(pattern), methods))

    def _match(self, path: str) -> Tuple[Optional[Dict[str, Handler]], Dict[str, str]]:
        from urllib.parse import unquote
        segments = [unquote(s) for s in path.split("/") if s]
        for pattern, methods in self.routes:
            if len(pattern) != len(segments):
                continue
            parts: Dict[str, str] = {}
            for want, got in zip(pattern, segments):
                if want.startswith("{"):
                    # Names starting with "_" are API endpoints, never an index.
                    if want == "{index}" and got.startswith("_") and got not in ("_all",):
                        break
                    parts[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return methods, parts
        return None, {}

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self.handle(request)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        method = request.method
        path = request.url.path
        accept = request.headers.get("accept", "")
        compat = ""
        for header in (accept, request.headers.get("content-type", "")):
            if "compatible-with=" in header:
                value = header.split("compatible-with=", 1)[1].split(";")[0].split(",")[0].strip()
                # Echoed into Content-Type: a version number, or nothing.
                compat = value if value.isdigit() and len(value) <= 2 else ""
                break
        pretty = "pretty" in request.query_params and request.query_params.get("pretty") != "false"
        methods, parts = self._match(path)
        warnings: List[str] = []
        try:
            if methods is None:
                return self._render(400, {"error": f"no handler found for uri [{path}] and method [{method}]",
                                          "status": 400}, compat, method, pretty)
            handler = methods.get(method)
            if handler is None:
                allowed = ", ".join(sorted(methods))
                return self._render(405, {"error": f"Incorrect HTTP method for uri [{path}] and method "
                                                   f"[{method}], allowed: [{allowed}]", "status": 405},
                                    compat, method, pretty)
            body = await request.body()
            if request.headers.get("content-encoding", "").lower() == "gzip" and body:
                body = gunzip(body, MAX_INFLATED_BODY, too_large=ContentTooLong)
            call = Call(method, path, dict(request.query_params), body, parts)
            status, payload = await handler(call)
            warnings = call.warnings
        except EngineError as exc:
            status, payload = exc.status, exc.body()
        except Exception as exc:
            logger.exception("internal error serving %s %s", method, path)
            # The kind, not the text: an exception's message may quote paths,
            # SQL or data that the client has no business seeing.
            status, payload = 500, EngineError(f"internal error: {type(exc).__name__}").body()
        if isinstance(payload, str):
            return Response(payload.encode(), status, headers=self._headers(compat, text=True),
                            media_type=None)
        response = self._render(status, payload, compat, method, pretty)
        for warning in warnings:
            response.headers.append("Warning", f'299 Elasticsearch-{VERSION_INFO["number"]}-selproxy "{warning}"')
        return response

    def _headers(self, compat: str, text: bool = False) -> Dict[str, str]:
        if text:
            ctype = "text/plain; charset=UTF-8"
        elif compat:
            ctype = f"application/vnd.elasticsearch+json;compatible-with={compat}"
        else:
            ctype = "application/json"
        return {"X-Elastic-Product": "Elasticsearch", "content-type": ctype}

    def _render(self, status: int, payload: Any, compat: str, method: str, pretty: bool) -> Response:
        if method == "HEAD":
            return Response(b"", status, headers=self._headers(compat))
        if pretty:
            data = json.dumps(payload, ensure_ascii=False, indent=2).encode() + b"\n"
        else:
            data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        return Response(data, status, headers=self._headers(compat))

    # -- cluster -------------------------------------------------------------------------------

    async def info(self, call: Call) -> Tuple[int, Any]:
        return 200, {"name": self.name, "cluster_name": "selproxy", "cluster_uuid": self.store.uuid,
                     "version": VERSION_INFO, "tagline": "You Know, for Search"}

    async def health(self, call: Call) -> Tuple[int, Any]:
        count = len(self.store.indices)
        return 200, {"cluster_name": "selproxy", "status": "green", "timed_out": False, "number_of_nodes": 1,
                     "number_of_data_nodes": 1, "active_primary_shards": count, "active_shards": count,
                     "relocating_shards": 0, "initializing_shards": 0, "unassigned_shards": 0,
                     "unassigned_primary_shards": 0, "delayed_unassigned_shards": 0,
                     "number_of_pending_tasks": 0, "number_of_in_flight_fetch": 0,
                     "task_max_waiting_in_queue_millis": 0, "active_shards_percent_as_number": 100.0}

    # -- indices -------------------------------------------------------------------------------

    async def create_index(self, call: Call) -> Tuple[int, Any]:
        body = call.json() or {}
        if not isinstance(body, dict):
            raise ParsingError("request body must be a JSON object")
        result = await self.store.write(self.store.create_index, call.parts["index"], body)
        name = call.parts["index"]
        if name.startswith(".") and not self.store.indices[name].hidden:
            # As Elasticsearch 8 warns; a hidden dot-index is not warned about.
            call.warnings.append(f"index name [{name}] starts with a dot '.', in the next major version, index "
                                 "names starting with a dot are reserved for hidden indices and system indices")
        return 200, result

    async def delete_index(self, call: Call) -> Tuple[int, Any]:
        return 200, await self.store.write(self.store.delete_index, call.parts["index"])

    async def index_exists(self, call: Call) -> Tuple[int, Any]:
        try:
            self.store.resolve(call.parts["index"])
        except IndexNotFound:
            return 404, {}
        return 200, {}

    async def get_index(self, call: Call) -> Tuple[int, Any]:
        out = {}
        for meta in self.store.resolve(call.parts["index"], hidden=_expands_hidden(call.params)):
            index_settings = {"number_of_shards": "1", "number_of_replicas": "1", "uuid": meta.uuid,
                              "provided_name": meta.name, "creation_date": str(meta.created),
                              "version": {"created": "9000000"}}
            if meta.hidden:
                index_settings["hidden"] = "true"
            out[meta.name] = {"aliases": {}, "mappings": meta.mappings(), "settings": {"index": index_settings}}
        return 200, out

    async def get_mapping(self, call: Call) -> Tuple[int, Any]:
        metas = self.store.resolve(call.parts.get("index"), hidden=_expands_hidden(call.params))
        return 200, {m.name: {"mappings": m.mappings()} for m in metas}

    async def put_mapping(self, call: Call) -> Tuple[int, Any]:
        body = call.json(required=True)
        if not isinstance(body, dict):
            raise ParsingError("request body must be a JSON object")
        return 200, await self.store.write(self.store.put_mapping, call.parts["index"], body)

    async def refresh(self, call: Call) -> Tuple[int, Any]:
        # Writes are visible as soon as they commit; refresh only checks the names.
        metas = self.store.resolve(call.parts.get("index"))
        n = len(metas)
        return 200, {"_shards": {"total": 2 * n, "successful": n, "failed": 0}}

    async def cat_indices(self, call: Call) -> Tuple[int, Any]:
        # _cat/indices lists hidden indices too (its expand_wildcards defaults to all).
        metas = self.store.resolve(call.parts.get("index"), hidden=True)
        stats = await self.store.read(index_stats, metas)
        rows = [{"health": "green", "status": "open", "index": meta.name, "uuid": meta.uuid, "pri": "1",
                 "rep": "0", "docs.count": str(count), "docs.deleted": "0", "store.size": _human(size),
                 "pri.store.size": _human(size), "dataset.size": _human(size)} for meta, count, size in stats]
        if call.params.get("format") == "json":
            return 200, rows
        columns = ["health", "status", "index", "uuid", "pri", "rep", "docs.count", "docs.deleted",
                   "store.size", "pri.store.size", "dataset.size"]
        table = [[r[c] for c in columns] for r in rows]
        if "v" in call.params:
            table.insert(0, columns)
        widths = [max((len(row[i]) for row in table), default=0) for i in range(len(columns))]
        return 200, "".join(" ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n" for row in table)

    # -- documents -----------------------------------------------------------------------------

    def _seq(self, call: Call) -> Tuple[Optional[int], Optional[int]]:
        return call.int_param("if_seq_no"), call.int_param("if_primary_term")

    async def index_doc(self, call: Call) -> Tuple[int, Any]:
        source = call.json(required=True)
        op_type = call.params.get("op_type", "index")
        if op_type not in ("index", "create"):
            raise IllegalArgument(f"opType must be 'create' or 'index', found: [{op_type}]")
        return await self.store.write(self.store.index_doc, call.parts["index"], call.parts.get("id"),
                                      source, op_type, *self._seq(call))

    async def create_doc(self, call: Call) -> Tuple[int, Any]:
        source = call.json(required=True)
        return await self.store.write(self.store.index_doc, call.parts["index"], call.parts["id"], source,
                                      "create")

    async def update_doc(self, call: Call) -> Tuple[int, Any]:
        body = call.json(required=True)
        return await self.store.write(self.store.update_doc, call.parts["index"], call.parts["id"], body,
                                      *self._seq(call))

    async def delete_doc(self, call: Call) -> Tuple[int, Any]:
        return await self.store.write(self.store.delete_doc, call.parts["index"], call.parts["id"],
                                      *self._seq(call))

    async def get_doc(self, call: Call) -> Tuple[int, Any]:
        status, doc = await self.store.read(get_doc, call.parts["index"], call.parts["id"])
        if status == 200 and ("_source" in call.params or "_source_includes" in call.params
                              or "_source_excludes" in call.params):
            spec = parse_source(call.params.get("_source", True))
            if "_source_includes" in call.params or "_source_excludes" in call.params:
                spec = ([v for v in call.params.get("_source_includes", "").split(",") if v],
                        [v for v in call.params.get("_source_excludes", "").split(",") if v])
            if spec is False:
                doc.pop("_source", None)
            elif spec is not True and "_source" in doc:
                doc["_source"] = filter_source(doc["_source"], spec[0], spec[1])
        return status, doc

    async def get_source(self, call: Call) -> Tuple[int, Any]:
        status, doc = await self.store.read(get_doc, call.parts["index"], call.parts["id"])
        if status != 200:
            raise ResourceNotFound(f"Document not found [{call.parts['index']}]/[{call.parts['id']}]")
        return 200, doc["_source"]

    # -- bulk ----------------------------------------------------------------------------------

    async def bulk(self, call: Call) -> Tuple[int, Any]:
        default_index = call.parts.get("index")
        return 200, await self.store.write(_bulk_txn, self.store, call.raw, default_index)

    # -- search --------------------------------------------------------------------------------

    async def search(self, call: Call) -> Tuple[int, Any]:
        body = call.json()
        if body is not None and not isinstance(body, dict):
            raise ParsingError("request body must be a JSON object")
        req = parse_search(body, call.params)
        if req.pit is not None:
            return await self._search_pit(call, req)
        if "scroll" in call.params:
            return await self._open_scroll(call, body or {}, req)
        metas = self._search_targets(call.parts.get("index"), call.params)
        return 200, await self.store.read(lambda conn, indices: run_search(conn, metas, req))

    # -- walking an index: point in time and scroll (see contexts.py) ---------------------------

    def _keep_alive(self, value: Any, setting: str) -> float:
        seconds = parse_time_value(value, setting)
        self.contexts.check_keep_alive(seconds, str(value))
        return seconds

    @staticmethod
    def _context_metas(ctx: SearchContext, indices: Dict[str, IndexMeta]) -> List[IndexMeta]:
        """The indices a context covers, as they are now; gone if any was deleted."""
        metas = []
        for target in ctx.targets:
            meta = indices.get(target.name)
            if meta is None or meta.num != target.num:
                raise SearchContextMissing(str(ctx.number))
            metas.append(meta)
        return metas

    async def open_pit(self, call: Call) -> Tuple[int, Any]:
        if "keep_alive" not in call.params:
            raise ActionRequestValidation("Validation Failed: 1: [keep_alive] is not specified;")
        keep_alive = self._keep_alive(call.params["keep_alive"], "keep_alive")
        body = call.json()
        if body:
            raise UnsupportedFeature("a body (index_filter) on open point in time is not supported by "
                                     "selproxy.engine")
        metas = self._search_targets(call.parts["index"], call.params)
        marks = await self.store.read(high_waters, metas)
        ctx = self.contexts.open("pit", [Target(m.name, m.num, h) for m, h in zip(metas, marks)], keep_alive)
        n = len(metas)
        return 200, {"id": ctx.id, "_shards": {"total": n, "successful": n, "skipped": 0, "failed": 0}}

    async def close_pit(self, call: Call) -> Tuple[int, Any]:
        body = call.json()
        pit_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(pit_id, str):
            raise ActionRequestValidation("Validation Failed: 1: point in time id must be provided;")
        freed = self.contexts.close(pit_id, "pit")
        # Elasticsearch answers 404 when nothing was freed (as for clear scroll).
        return (200 if freed else 404), {"succeeded": True, "num_freed": freed}

    async def _search_pit(self, call: Call, req: SearchRequest) -> Tuple[int, Any]:
        if call.parts.get("index"):
            raise ActionRequestValidation("Validation Failed: 1: [indices] cannot be used with point in time. Do "
                                          "not specify any index with point in time.;")
        if "scroll" in call.params:
            raise ActionRequestValidation("Validation Failed: 1: using [point in time] is not allowed in a scroll "
                                          "context;")
        assert req.pit is not None
        keep_alive = self._keep_alive(req.pit["keep_alive"], "keep_alive") if "keep_alive" in req.pit else None
        ctx = self.contexts.get(req.pit["id"], "pit")
        self.contexts.extend(ctx, keep_alive)
        counted = json.dumps([req.query, req.min_score, req.track_total, req.track_scores,
                              [(k.field, k.desc) for k in req.sort or []]], sort_keys=True, default=str)
        walk = Walk([t.high_water for t in ctx.targets], known_total=ctx.totals.get(counted))
        result = await self.store.read(
            lambda conn, indices: run_search(conn, self._context_metas(ctx, indices), req, walk))
        if walk.known_total is not None and len(ctx.totals) < _MAX_COUNTS_PER_PIT:
            ctx.totals[counted] = walk.known_total
        return 200, {"pit_id": ctx.id, **result}

    async def _open_scroll(self, call: Call, body: Dict[str, Any], req: SearchRequest) -> Tuple[int, Any]:
        keep_alive = self._keep_alive(call.params["scroll"], "scroll")
        problems = []
        if req.offset > 0:
            problems.append("using [from] is not allowed in a scroll context")
        if req.search_after is not None:
            problems.append("[search_after] cannot be used in a scroll context")
        if req.size == 0:
            problems.append("[size] cannot be [0] in a scroll context")
        if req.track_total is False:
            problems.append("disabling [track_total_hits] is not allowed in a scroll context")
        if problems:
            raise ActionRequestValidation("Validation Failed: " + "".join(
                f"{n}: {problem};" for n, problem in enumerate(problems, 1)))
        if "track_total_hits" not in body and "track_total_hits" not in call.params:
            req.track_total = True  # a scroll counts every hit, as in Elasticsearch
        metas = self._search_targets(call.parts.get("index"), call.params)
        # Opened first, so that the cap holds before any work is done.
        ctx = self.contexts.open("scroll", [], keep_alive, request=req)
        walk = Walk([], show_tiebreak=False)

        def first_page(conn: Any, indices: Any) -> Dict[str, Any]:
            marks = high_waters(conn, indices, metas)
            ctx.targets = [Target(m.name, m.num, h) for m, h in zip(metas, marks)]
            walk.high_water = marks
            return run_search(conn, metas, req, walk)

        try:
            result = await self.store.read(first_page)
        except BaseException:
            self.contexts.close(ctx.id, "scroll")
            raise
        ctx.after, ctx.total, ctx.done = walk.last_sort, walk.known_total, walk.last_sort is None
        return 200, {"_scroll_id": ctx.id, **result}

    async def scroll(self, call: Call) -> Tuple[int, Any]:
        body = call.json() or {}
        if not isinstance(body, dict):
            raise ParsingError("request body must be a JSON object")
        scroll_id = body.get("scroll_id", call.params.get("scroll_id", call.parts.get("scroll_id")))
        if not scroll_id:
            raise ActionRequestValidation("Validation Failed: 1: scrollId is missing;")
        keep_text = body.get("scroll", call.params.get("scroll"))
        keep_alive = self._keep_alive(keep_text, "scroll") if keep_text is not None else None
        ctx = self.contexts.get(scroll_id, "scroll")
        self.contexts.extend(ctx, keep_alive)
        if ctx.lock is None:
            ctx.lock = asyncio.Lock()
        async with ctx.lock:
            req = ctx.request
            started = time.monotonic()
            if ctx.done:
                result = _empty_page(len(ctx.targets), ctx.total, started)
            else:
                walk = Walk([t.high_water for t in ctx.targets], show_tiebreak=False, after=ctx.after,
                            known_total=ctx.total)
                result = await self.store.read(
                    lambda conn, indices: run_search(conn, self._context_metas(ctx, indices), req, walk))
                if walk.last_sort is None:
                    ctx.done = True
                else:
                    ctx.after = walk.last_sort
        return 200, {"_scroll_id": ctx.id, **result}

    async def clear_scroll(self, call: Call) -> Tuple[int, Any]:
        body = call.json() or {}
        if not isinstance(body, dict):
            raise ParsingError("request body must be a JSON object")
        ids = body.get("scroll_id", call.params.get("scroll_id", call.parts.get("scroll_id")))
        if isinstance(ids, str):
            ids = [part for part in ids.split(",") if part]
        if not ids or not isinstance(ids, list):
            raise ActionRequestValidation("Validation Failed: 1: no scroll ids specified;")
        if "_all" in ids:
            freed = self.contexts.close_all("scroll")
        else:
            freed = sum(self.contexts.close(scroll_id, "scroll") for scroll_id in ids)
        return (200 if freed else 404), {"succeeded": True, "num_freed": freed}

    # -- multi get -----------------------------------------------------------------------------

    async def mget(self, call: Call) -> Tuple[int, Any]:
        items = parse_mget(call.json(), call.params, call.parts.get("index"))
        return 200, await self.store.read(run_mget, items)

    def _search_targets(self, expr: Optional[str], params: Dict[str, str]) -> List[Any]:
        return self.store.resolve(expr, allow_missing=params.get("ignore_unavailable") == "true",
                                  hidden=_expands_hidden(params))

    async def count(self, call: Call) -> Tuple[int, Any]:
        body = call.json()
        metas = self._search_targets(call.parts.get("index"), call.params)
        return 200, await self.store.read(lambda conn, indices: run_count(conn, metas, body, call.params))

    async def msearch(self, call: Call) -> Tuple[int, Any]:
        started = time.monotonic()
        pairs = parse_msearch(call.raw)
        if not pairs:
            raise ActionRequestValidation("Validation Failed: 1: no requests added;")
        default_index = call.parts.get("index")

        def run_all(conn: Any, indices: Any) -> List[Dict[str, Any]]:
            out = []
            for header, body in pairs:
                try:
                    index = header.get("index", default_index)
                    if isinstance(index, list):
                        index = ",".join(index)
                    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in header.items()
                              if k in ("ignore_unavailable",)}
                    req = parse_search(body, {})
                    if req.pit is not None:
                        raise UnsupportedFeature("[pit] in _msearch is not supported by selproxy.engine; send "
                                                 "point-in-time searches to _search")
                    metas = self.store.resolve(index, indices, allow_missing=params.get("ignore_unavailable")
                                               == "true")
                    result = run_search(conn, metas, req)
                    result["status"] = 200
                except EngineError as exc:
                    result = exc.body()
                out.append(result)
            return out

        responses = await self.store.read(run_all)
        return 200, {"took": int((time.monotonic() - started) * 1000), "responses": responses}


def _expands_hidden(params: Dict[str, str]) -> bool:
    return bool({"all", "hidden"} & set(params.get("expand_wildcards", "").split(",")))


def _empty_page(shards: int, total: Any, started: float) -> Dict[str, Any]:
    value, relation, max_score = total
    return {"took": int((time.monotonic() - started) * 1000), "timed_out": False,
            "_shards": {"total": shards, "successful": shards, "skipped": 0, "failed": 0},
            "hits": {"total": {"value": value, "relation": relation}, "max_score": max_score, "hits": []}}


def _human(size: int) -> str:
    for unit in ("b", "kb", "mb", "gb"):
        if size < 1024 or unit == "gb":
            return f"{size}{unit}" if unit == "b" else f"{size:.1f}{unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size}b"


_BULK_META = {"_index", "_id", "if_seq_no", "if_primary_term", "routing", "require_alias", "retry_on_conflict",
              "pipeline", "dynamic_templates", "_source", "version", "version_type", "require_data_stream",
              "list_executed_pipelines"}


def _bulk_txn(txn: Txn, store: Store, raw: bytes, default_index: Optional[str]) -> Dict[str, Any]:
    """Parse a whole ``_bulk`` body, then apply it; runs on the writer thread."""
    if raw and not raw.endswith(b"\n"):
        raise IllegalArgument("The bulk request must be terminated by a newline [\\n]")
    lines = raw.split(b"\n")
    actions: List[Tuple[str, Dict[str, Any], Any, Optional[str]]] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        try:
            action = json.loads(line)
        except ValueError:
            raise IllegalArgument(f"Malformed action/metadata line [{i}], expected START_OBJECT or END_OBJECT "
                                  "but found [VALUE_STRING]") from None
        if not isinstance(action, dict) or len(action) != 1:
            raise IllegalArgument(f"Malformed action/metadata line [{i}], expected START_OBJECT or END_OBJECT "
                                  "but found [VALUE_STRING]")
        op, meta = next(iter(action.items()))
        if op not in ("index", "create", "update", "delete"):
            raise IllegalArgument(f"Malformed action/metadata line [{i}], expected field [create], [delete], "
                                  f"[index] or [update] but found [{op}]")
        if not isinstance(meta, dict):
            raise IllegalArgument(f"Malformed action/metadata line [{i}], expected START_OBJECT but found "
                                  "[VALUE_STRING]")
        unknown = set(meta) - _BULK_META
        if unknown:
            raise IllegalArgument(f"Action/metadata line [{i}] contains an unknown parameter "
                                  f"[{sorted(unknown)[0]}]")
        meta = dict(meta)
        meta.setdefault("_index", default_index)
        if meta["_index"] is None:
            raise ActionRequestValidation("Validation Failed: 1: index is missing;")
        if op in ("update", "delete") and meta.get("_id") is None:
            raise ActionRequestValidation("Validation Failed: 1: id is missing;")
        payload: Any = None
        raw_source: Optional[str] = None
        if op != "delete":
            if i >= n or not lines[i].strip():
                raise IllegalArgument(f"Validation Failed: 1: source is missing for line [{i}];")
            try:
                payload = json.loads(lines[i])
                if op != "update":
                    raw_source = lines[i].decode().strip()
            except ValueError as exc:
                payload = _payload_error(f"failed to parse: {exc}")
            i += 1
        actions.append((op, meta, payload, raw_source))
    if not actions:
        raise ActionRequestValidation("Validation Failed: 1: no requests added;")
    return store.bulk(txn, actions)


def _payload_error(reason: str) -> EngineError:
    return DocumentParsingError(reason)
