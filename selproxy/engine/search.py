"""``_search``, ``_count`` and ``_msearch``: request parsing, paging, sorting,
``_source`` filtering and the response shape.  Runs on a reader thread."""
from __future__ import annotations

import functools
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .._glob import glob_matches, glob_segments
from .errors import IllegalArgument, ParsingError, QueryShardError, UnsupportedFeature
from .query import Compiler, Sql
from .store import IndexMeta

__all__ = ("SearchRequest", "Walk", "parse_search", "parse_source", "filter_source", "run_search", "run_count",
           "parse_msearch")

MAX_RESULT_WINDOW = 10000
DEFAULT_TRACK_TOTAL = 10000

_BODY_KEYS = {"query", "size", "from", "_source", "sort", "track_total_hits", "timeout", "track_scores",
              "min_score", "explain", "version", "seq_no_primary_term", "profile", "stored_fields",
              "terminate_after", "search_after", "pit"}
_UNSUPPORTED_BODY = {"aggs", "aggregations", "highlight", "suggest", "rescore", "collapse", "knn", "rank",
                     "retriever", "post_filter", "script_fields", "docvalue_fields", "fields",
                     "runtime_mappings", "indices_boost", "slice", "stats", "ext"}


@dataclass
class SortKey:
    field: str
    desc: bool
    missing_first: bool
    unmapped_type: Optional[str] = None


@dataclass
class SearchRequest:
    query: Any
    size: int
    offset: int
    source: Any
    sort: Optional[List[SortKey]]
    track_total: Any
    track_scores: bool
    min_score: Optional[float]
    version: bool
    seq_no: bool
    search_after: Optional[List[Any]]
    pit: Optional[Dict[str, Any]] = None


@dataclass
class Walk:
    """How a scroll page or a point-in-time search runs (see ``contexts.py``).

    ``high_water[i]`` cuts ``metas[i]`` to the documents present when the
    context opened; ``tiebreak`` appends ``_shard_doc`` to the sort, and
    ``show_tiebreak`` shows it in each hit's ``sort`` (a point in time does,
    a scroll does not); ``after`` continues a scroll where its last page
    ended; ``known_total`` is the (total, relation, max_score) counted
    earlier (a scroll's first page, a point in time's first search with this
    query), so this page need not count; it is set when this page counted.
    ``last_sort`` is set to the full sort values of the page's last hit."""
    high_water: List[int]
    tiebreak: bool = True
    show_tiebreak: bool = True
    after: Optional[List[Any]] = None
    known_total: Optional[Tuple[int, str, Optional[float]]] = None
    last_sort: Optional[List[Any]] = None


# Elasticsearch's _shard_doc packs the shard's position in the request above
# the Lucene doc id: (shard << 32) | doc.  Here a "shard" is one index of the
# search and the doc id is the document's rid.
SHARD_DOC_SHIFT = 1 << 32


def _as_int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise IllegalArgument(f"Failed to parse int parameter [{name}] with value [{value}]") from None


def _parse_sort(spec: Any) -> Optional[List[SortKey]]:
    if spec is None:
        return None
    items = spec if isinstance(spec, list) else [spec]
    keys: List[SortKey] = []
    for item in items:
        if isinstance(item, str):
            name, _, order = item.partition(":")
            opts: Dict[str, Any] = {"order": order} if order else {}
        elif isinstance(item, dict) and len(item) == 1:
            name, value = next(iter(item.items()))
            opts = {"order": value} if isinstance(value, str) else dict(value or {})
        else:
            raise ParsingError("malformed sort format, within the sort array, an object, or an actual string "
                               "are allowed")
        order = str(opts.get("order", "desc" if name == "_score" else "asc")).lower()
        if order not in ("asc", "desc"):
            raise ParsingError(f"[sort] unknown order [{order}]; expected asc or desc")
        missing = opts.get("missing", "_last")
        if missing not in ("_last", "_first"):
            raise UnsupportedFeature("[sort] a custom missing value is not supported by selproxy.engine; "
                                     "use _last or _first")
        keys.append(SortKey(name, order == "desc", missing == "_first", opts.get("unmapped_type")))
    # Elasticsearch treats a sort on _score alone, descending, as no sort at all.
    if len(keys) == 1 and keys[0].field == "_score" and keys[0].desc:
        return None
    return keys


#: Most ``_source`` include plus exclude patterns a request may give: each
#: costs a match per field of every hit returned.
MAX_SOURCE_PATTERNS = 256


def parse_source(value: Any) -> Any:
    """``True``, ``False`` or (includes, excludes)."""
    if value is None or value is True:
        return True
    if value is False:
        return False
    if isinstance(value, str):
        if value in ("true", "false"):
            return value == "true"
        return ([v for v in value.split(",") if v], [])
    if isinstance(value, list):
        return ([str(v) for v in value], [])
    if isinstance(value, dict):
        inc = value.get("includes", value.get("include")) or []
        exc = value.get("excludes", value.get("exclude")) or []
        return ([inc] if isinstance(inc, str) else list(inc), [exc] if isinstance(exc, str) else list(exc))
    raise ParsingError("[_source] must be a boolean, a string, an array or an object")


def parse_search(body: Optional[Mapping[str, Any]], params: Mapping[str, str]) -> SearchRequest:
    body = dict(body or {})
    unsupported = set(body) & _UNSUPPORTED_BODY
    if unsupported:
        raise UnsupportedFeature(f"[{sorted(unsupported)[0]}] is not supported by selproxy.engine")
    unknown = set(body) - _BODY_KEYS
    if unknown:
        raise ParsingError(f"Unknown key for a START_OBJECT in [{sorted(unknown)[0]}].")
    query = body.get("query", {"match_all": {}})
    if "q" in params:
        query = {"query_string": {"query": params["q"], "default_operator": params.get("default_operator", "or"),
                                  **({"default_field": params["df"]} if "df" in params else {})}}
    size = _as_int(params.get("size", body.get("size", 10)), "size")
    offset = _as_int(params.get("from", body.get("from", 0)), "from")
    if size < 0:
        raise IllegalArgument(f"[size] parameter cannot be negative, found [{size}]")
    if offset < 0:
        raise IllegalArgument(f"[from] parameter cannot be negative but was [{offset}]")
    if offset + size > MAX_RESULT_WINDOW:
        raise IllegalArgument(
            f"Result window is too large, from + size must be less than or equal to: [{MAX_RESULT_WINDOW}] but was "
            f"[{offset + size}]. See the scroll api for a more efficient way to request large data sets. This limit "
            "can be set by changing the [index.max_result_window] index level setting.")
    if "_source" in params or "_source_includes" in params or "_source_excludes" in params:
        source = parse_source(params.get("_source", True))
        if "_source_includes" in params or "_source_excludes" in params:
            source = ([v for v in params.get("_source_includes", "").split(",") if v],
                      [v for v in params.get("_source_excludes", "").split(",") if v])
    else:
        source = parse_source(body.get("_source"))
    sort_spec = params["sort"].split(",") if "sort" in params else body.get("sort")
    track = params.get("track_total_hits", body.get("track_total_hits", DEFAULT_TRACK_TOTAL))
    if isinstance(track, str):
        track = True if track == "true" else False if track == "false" else _as_int(track, "track_total_hits")
    min_score = body.get("min_score")
    pit = body.get("pit")
    if pit is not None and (not isinstance(pit, dict) or not isinstance(pit.get("id"), str)
                            or set(pit) - {"id", "keep_alive"}):
        raise ParsingError("[pit] must be an object with an [id] and an optional [keep_alive]")
    return SearchRequest(query, size, offset, source, _parse_sort(sort_spec), track,
                         bool(body.get("track_scores", False)), None if min_score is None else float(min_score),
                         bool(body.get("version", params.get("version") == "true")),
                         bool(body.get("seq_no_primary_term", params.get("seq_no_primary_term") == "true")),
                         body.get("search_after"), pit)


# -- _source filtering ---------------------------------------------------------------------------

def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(glob_matches(glob_segments(p), path) for p in patterns)


def filter_source(source: Dict[str, Any], includes: Sequence[str], excludes: Sequence[str],
                  prefix: str = "") -> Dict[str, Any]:
    """``source`` filtered as Elasticsearch does: only ``*`` is a wildcard
    (:mod:`selproxy._glob`, linear), at most :data:`MAX_SOURCE_PATTERNS`
    patterns in all (an :class:`IllegalArgument` past them)."""
    if not prefix and len(includes) + len(excludes) > MAX_SOURCE_PATTERNS:
        raise IllegalArgument(f"[_source] has {len(includes) + len(excludes)} patterns; at most "
                              f"{MAX_SOURCE_PATTERNS} are allowed here")
    out: Dict[str, Any] = {}
    for key, value in source.items():
        path = prefix + key
        if _matches(path, excludes):
            continue
        included = not includes or _matches(path, includes)
        if isinstance(value, dict):
            if included:
                out[key] = filter_source(value, [], excludes, path + ".")
            elif any(p.startswith(path + ".") or glob_matches(glob_segments(p.split(".")[0] + "."), path + ".")
                     for p in includes):
                inner = filter_source(value, includes, excludes, path + ".")
                if inner:
                    out[key] = inner
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value) and not included:
            inner_list = [filter_source(v, includes, excludes, path + ".") for v in value if isinstance(v, dict)]
            inner_list = [v for v in inner_list if v]
            if inner_list:
                out[key] = inner_list
        elif included:
            out[key] = value
    return out


# -- execution -----------------------------------------------------------------------------------

def _sort_column(meta: IndexMeta, key: SortKey, position: int) -> Tuple[str, List[Any]]:
    if key.field == "_score":
        return "q.score", []
    if key.field == "_doc":
        return "q.rid", []
    if key.field == "_shard_doc":
        return f"({position * SHARD_DOC_SHIFT} + q.rid)", []
    if key.field == "_id":
        return f"(SELECT id FROM {meta.docs} WHERE rid = q.rid)", []
    fld = meta.fields.get(key.field)
    if fld is None:
        if key.unmapped_type:
            return "NULL", []
        raise QueryShardError(f"No mapping found for [{key.field}] in order to sort on",
                              index_uuid=meta.uuid, index=meta.name)
    if fld.kind == "text":
        raise IllegalArgument(
            f"Text fields are not optimised for operations that require per-document field data like "
            f"aggregations and sorting, so these operations are disabled by default. Please use a keyword "
            f"field instead. Alternatively, set fielddata=true on [{key.field}] in order to load field data by "
            f"uninverting the inverted index. Note that this can use significant memory.")
    table = meta.keywords if fld.kind == "keyword" else meta.numbers if fld.kind in ("number", "date") else None
    if table is None:
        return "NULL", []
    # Elasticsearch sorts a multi-valued field by its min ascending and its max descending.
    agg = "max" if key.desc else "min"
    return f"(SELECT {agg}(value) FROM {table} WHERE rid = q.rid AND field = ?)", [fld.name]


def _sort_value(meta: IndexMeta, key: SortKey, value: Any) -> Any:
    if value is None:
        return None
    fld = meta.fields.get(key.field)
    if key.field in ("_score",):
        return float(value)
    if key.field in ("_doc", "_shard_doc"):
        return int(value)
    if fld is not None and fld.kind in ("number", "date"):
        return int(value) if fld.kind == "date" or fld.integer else float(value)
    if fld is not None and fld.type == "boolean":
        return 1 if value == "true" else 0
    return value


def _compare(keys: List[SortKey], a: Sequence[Any], b: Sequence[Any]) -> int:
    for key, x, y in zip(keys, a, b):
        if x == y:
            continue
        if x is None or y is None:
            missing_x = x is None
            return (-1 if missing_x else 1) if key.missing_first else (1 if missing_x else -1)
        result = -1 if x < y else 1
        return -result if key.desc else result
    return 0


@dataclass
class _Page:
    total: int
    relation: str
    max_score: Optional[float]
    rows: List[Tuple[List[Any], Dict[str, Any]]]


def _search_index(conn: sqlite3.Connection, meta: IndexMeta, req: SearchRequest, limit: int, offset: int,
                  keys: List[SortKey], after: Optional[List[Any]] = None, position: int = 0,
                  high_water: Optional[int] = None, count: bool = True) -> _Page:
    compiler = Compiler(conn, meta)
    scoring = req.sort is None or req.track_scores or any(k.field == "_score" for k in keys)
    query = compiler.compile(req.query, scoring)
    if req.min_score is not None:
        query = Sql(f"SELECT rid, score FROM ({query.text}) WHERE score >= ?", query.params + [req.min_score])
    # The total and max score are over every match, before search_after cuts.
    windows = count and (req.track_total is not False or _shows_scores(req))
    bounds, bound_params = [], []  # type: List[str], List[Any]
    if high_water is not None:
        bounds.append("rid <= ?")
        bound_params.append(high_water)
    if after is not None and not windows and keys[0].field in ("_doc", "_shard_doc") and after[0] is not None:
        # PERF: a walk in document order starts each page from its rid, on the
        # primary key, instead of reading every earlier document again.  Measured
        # 2026-12-06 (2 shared cores, SQLite 3.40): an index of 60,000 documents
        # (benchmarks/bench_engine_bulk.py --docs 60000 --data FILE), a page of 100
        # with sort [_doc] and search_after at 50,000 over HTTP, best of 5:
        # 1.9-3.3 ms with the bound, 6.3-10.5 ms without.
        first = int(after[0]) - (position * SHARD_DOC_SHIFT if keys[0].field == "_shard_doc" else 0)
        bounds.append("rid <= ?" if keys[0].desc else "rid >= ?")
        bound_params.append(first)
    if bounds:
        query = Sql(f"SELECT rid, score FROM ({query.text}) WHERE {' AND '.join(bounds)}",
                    query.params + bound_params)
    columns, col_params, order = [], [], []
    for i, key in enumerate(keys):
        expr, params = _sort_column(meta, key, position)
        columns.append(f"{expr} AS s{i}")
        col_params += params
        if key.field in ("_doc", "_shard_doc"):
            # PERF: within one index both orders are rid's, never null; said so, SQLite
            # reads a document-order page straight off the primary key and stops at the limit.
            # Measured as above (first page of 100, sort [_doc], best of 5): 1.8-2.1 ms,
            # against 30-44 ms with the generic NULL-ordered sort column.
            order.append(f"rid {'DESC' if key.desc else 'ASC'}")
            continue
        null_order = f"s{i} IS NOT NULL" if key.missing_first else f"s{i} IS NULL"
        order.append(f"{null_order}, s{i} {'DESC' if key.desc else 'ASC'}")
    order.append("rid ASC")
    where, where_params = "", []  # type: str, List[Any]
    if after is not None:
        where, where_params = _search_after(keys, after)
    # NOTE: the query runs once; the window functions count and take the best
    # score over every match before the page is cut (a second COUNT statement
    # would run the full-text match again), and only the page is joined to the
    # stored documents.  A design choice, not measured against the alternative.
    window = ", count(*) OVER () AS _total, max(q.score) OVER () AS _max" if windows else ""
    ranked = (f"SELECT q.rid AS rid, q.score AS score{''.join(', ' + c for c in columns)}{window} "
              f"FROM ({query.text}) AS q")
    page = f"SELECT * FROM ({ranked}) {where} ORDER BY {', '.join(order)} LIMIT ? OFFSET ?"
    sql = (f"SELECT d.id, d.source, d.version, d.seq_no, p.* FROM ({page}) AS p "
           f"JOIN {meta.docs} AS d ON d.rid = p.rid ORDER BY {', '.join(order)}")
    rows = []
    total: Optional[int] = None
    max_score = None
    n_keys = len(keys)
    for row in conn.execute(sql, col_params + query.params + where_params + [limit, offset]):
        doc_id, source, version, seq_no, _rid, score = row[:6]
        sort_values = [_sort_value(meta, key, v) for key, v in zip(keys, row[6:6 + n_keys])]
        if windows:
            total, max_score = row[6 + n_keys], row[7 + n_keys]
        rows.append((sort_values, {"_index": meta.name, "_id": doc_id, "_score": score, "_source": source,
                                   "_version": version, "_seq_no": seq_no}))
    if total is None and windows:
        # An empty page (size 0, or past the end): count and score separately.
        total, max_score = conn.execute(f"SELECT count(*), max(score) FROM ({query.text})",
                                        query.params).fetchone()
    total = total or 0
    relation = "eq"
    if req.track_total is False:
        total = 0
    elif req.track_total is not True and total > int(req.track_total):
        total, relation = int(req.track_total), "gte"
    return _Page(total, relation, max_score if _shows_scores(req) else None, rows)


def _search_after(keys: List[SortKey], after: List[Any]) -> Tuple[str, List[Any]]:
    if len(after) != len(keys):
        raise IllegalArgument(f"search_after has {len(after)} value(s) but sort has {len(keys)}.")
    # (s0, s1, ...) strictly after the given values in sort order; missing values are not supported.
    ors, params = [], []
    for i in range(len(keys)):
        ands = []
        for j in range(i):
            ands.append(f"s{j} = ?")
            params.append(after[j])
        ands.append(f"s{i} {'<' if keys[i].desc else '>'} ?")
        params.append(after[i])
        ors.append("(" + " AND ".join(ands) + ")")
    return "WHERE " + " OR ".join(ors), params


def _shows_scores(req: SearchRequest) -> bool:
    return req.sort is None or req.track_scores or any(k.field == "_score" for k in req.sort)


def run_search(conn: sqlite3.Connection, metas: List[IndexMeta], req: SearchRequest,
               walk: Optional[Walk] = None) -> Dict[str, Any]:
    started = time.monotonic()
    keys = req.sort if req.sort is not None else [SortKey("_score", True, False)]
    shown = len(keys) if req.sort is not None else 0
    if walk is None:
        if any(k.field == "_shard_doc" for k in keys):
            raise IllegalArgument("[_shard_doc] sort field cannot be used without [point in time]")
        after = req.search_after
        if after is not None and req.sort is None:
            raise IllegalArgument("[search_after] requires a [sort]")
    else:
        if walk.tiebreak and keys[-1].field != "_shard_doc":
            keys = keys + [SortKey("_shard_doc", False, False)]
        if walk.show_tiebreak:
            # A point in time sorts by (sort or _score, then _shard_doc) and shows all of it,
            # so that any hit's sort values can be its next search_after.
            shown = len(keys)
        after = walk.after if walk.after is not None else req.search_after
    count = walk is None or walk.known_total is None
    pages = []
    single = len(metas) == 1
    for i, meta in enumerate(metas):
        high_water = walk.high_water[i] if walk is not None else None
        if single:
            pages.append(_search_index(conn, meta, req, req.size, req.offset, keys, after, i, high_water, count))
        else:
            pages.append(_search_index(conn, meta, req, req.offset + req.size, 0, keys, after, i, high_water,
                                       count))
    rows = [row for page in pages for row in page.rows]
    if not single:
        rows.sort(key=functools.cmp_to_key(lambda a, b: _compare(keys, a[0], b[0])))  # type: ignore[index]
        rows = rows[req.offset:req.offset + req.size]
    if count:
        total = sum(p.total for p in pages)
        relation = "gte" if any(p.relation == "gte" for p in pages) else "eq"
        if req.track_total not in (True, False) and total > int(req.track_total):
            total, relation = int(req.track_total), "gte"
        scores = [p.max_score for p in pages if p.max_score is not None]
        max_score = (max(scores) if scores and req.size > 0 else None) if _shows_scores(req) else None
    else:
        assert walk is not None and walk.known_total is not None
        total, relation, max_score = walk.known_total
    if walk is not None:
        walk.last_sort = rows[-1][0] if rows else None
        if count:
            walk.known_total = (total, relation, max_score)
    hits = []
    for sort_values, hit in rows:
        source = json.loads(hit["_source"])
        out: Dict[str, Any] = {"_index": hit["_index"], "_id": hit["_id"]}
        if req.version:
            out["_version"] = hit["_version"]
        if req.seq_no:
            out["_seq_no"] = hit["_seq_no"]
            out["_primary_term"] = 1
        out["_score"] = hit["_score"] if _shows_scores(req) else None
        if req.source is True:
            out["_source"] = source
        elif req.source is not False:
            out["_source"] = filter_source(source, req.source[0], req.source[1])
        if shown:
            out["sort"] = sort_values[:shown]
        hits.append(out)
    hits_obj: Dict[str, Any] = {}
    if req.track_total is not False:
        hits_obj["total"] = {"value": total, "relation": relation}
    hits_obj["max_score"] = max_score
    hits_obj["hits"] = hits
    return {"took": int((time.monotonic() - started) * 1000), "timed_out": False,
            "_shards": {"total": len(metas), "successful": len(metas), "skipped": 0, "failed": 0},
            "hits": hits_obj}


def run_count(conn: sqlite3.Connection, metas: List[IndexMeta], body: Optional[Mapping[str, Any]],
              params: Mapping[str, str]) -> Dict[str, Any]:
    body = dict(body or {})
    unknown = set(body) - {"query"}
    if unknown:
        raise ParsingError(f"request does not support [{sorted(unknown)[0]}]")
    query = body.get("query", {"match_all": {}})
    if "q" in params:
        query = {"query_string": {"query": params["q"], "default_operator": params.get("default_operator", "or"),
                                  **({"default_field": params["df"]} if "df" in params else {})}}
    count = 0
    for meta in metas:
        sql = Compiler(conn, meta).compile(query, scoring=False)
        count += conn.execute(f"SELECT count(*) FROM ({sql.text})", sql.params).fetchone()[0]
    return {"count": count, "_shards": {"total": len(metas), "successful": len(metas), "skipped": 0, "failed": 0}}


def parse_msearch(raw: bytes) -> List[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(header, body) pairs from an ``_msearch`` NDJSON body."""
    lines = [line for line in raw.split(b"\n") if line.strip()]
    if len(lines) % 2:
        lines.append(b"{}")
    pairs = []
    for i in range(0, len(lines), 2):
        try:
            header = json.loads(lines[i])
            body = json.loads(lines[i + 1])
        except ValueError as exc:
            raise ParsingError(f"[msearch] failed to parse line [{i + 1}]: {exc}") from None
        if not isinstance(header, dict) or not isinstance(body, dict):
            raise ParsingError(f"[msearch] lines [{i + 1}] and [{i + 2}] must be JSON objects")
        pairs.append((header, body))
    return pairs
