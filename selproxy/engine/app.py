"""The HTTP face of the engine: an ASGI app (Starlette) speaking Elasticsearch's
REST wire format.

Every response carries ``X-Elastic-Product: Elasticsearch``, which the
official clients check, and answers a request that asked for
``application/vnd.elasticsearch+json; compatible-with=N`` (as the 8.x and 9.x
clients do) in that same media type.
"""
from __future__ import annotations

import gzip
import json
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from starlette.requests import Request
from starlette.responses import Response

from .errors import (ActionRequestValidation, DocumentParsingError, EngineError, IllegalArgument, IndexNotFound,
                     ParsingError, ResourceNotFound, UnsupportedFeature)
from .search import filter_source, parse_msearch, parse_search, parse_source, run_count, run_search
from .store import Store, Txn, get_doc, index_stats

__all__ = ("EngineApp", "VERSION_INFO")

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

    def __init__(self, store: Store, name: str = "selproxy-engine") -> None:
        self.store = store
        self.name = name
        self.routes: List[Tuple[List[str], Dict[str, Handler]]] = []
        r = self._route
        r("/", GET=self.info, HEAD=self.info)
        r("/_cluster/health", GET=self.health)
        r("/_cluster/health/{index}", GET=self.health)
        r("/_bulk", POST=self.bulk, PUT=self.bulk)
        r("/{index}/_bulk", POST=self.bulk, PUT=self.bulk)
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
                compat = header.split("compatible-with=", 1)[1].split(";")[0].split(",")[0].strip()
                break
        pretty = "pretty" in request.query_params and request.query_params.get("pretty") != "false"
        methods, parts = self._match(path)
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
                body = gzip.decompress(body)
            call = Call(method, path, dict(request.query_params), body, parts)
            status, payload = await handler(call)
        except EngineError as exc:
            status, payload = exc.status, exc.body()
        except Exception as exc:
            logger.exception("internal error serving %s %s", method, path)
            # The kind only: the text may hold internals (paths, SQL, data).
            status, payload = 500, EngineError(type(exc).__name__).body()
        if isinstance(payload, str):
            return Response(payload.encode(), status, headers=self._headers(compat, text=True),
                            media_type=None)
        return self._render(status, payload, compat, method, pretty)

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
        return 200, await self.store.write(self.store.create_index, call.parts["index"], body)

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
        for meta in self.store.resolve(call.parts["index"]):
            out[meta.name] = {"aliases": {}, "mappings": {"properties": meta.props} if meta.props else {},
                              "settings": {"index": {"number_of_shards": "1", "number_of_replicas": "1",
                                                     "uuid": meta.uuid, "provided_name": meta.name,
                                                     "creation_date": str(meta.created),
                                                     "version": {"created": "9000000"}}}}
        return 200, out

    async def get_mapping(self, call: Call) -> Tuple[int, Any]:
        metas = self.store.resolve(call.parts.get("index"))
        return 200, {m.name: {"mappings": {"properties": m.props} if m.props else {}} for m in metas}

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
        metas = self.store.resolve(call.parts.get("index"))
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
        if "scroll" in call.params:
            raise UnsupportedFeature("scroll is not supported by selproxy.engine; page with from/size or "
                                     "search_after")
        req = parse_search(body, call.params)
        metas = self._search_targets(call.parts.get("index"), call.params)
        return 200, await self.store.read(lambda conn, indices: run_search(conn, metas, req))

    def _search_targets(self, expr: Optional[str], params: Dict[str, str]) -> List[Any]:
        return self.store.resolve(expr, allow_missing=params.get("ignore_unavailable") == "true")

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
