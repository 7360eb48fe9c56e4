"""``_mget``: many documents by id, in one read transaction.

The request is parsed here without I/O (:func:`parse_mget`); :func:`run_mget`
runs on a reader thread and reads each index's documents with one
``WHERE id IN (...)`` per 500 ids, so a 50-id window costs one query.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import ActionRequestValidation, ElasticsearchParseError, EngineError, IndexNotFound, ParsingError
from .search import filter_source, parse_source
from .store import PRIMARY_TERM, IndexMeta

__all__ = ("MgetItem", "parse_mget", "run_mget")

# Accepted per document and ignored: one node, one shard, no stored fields.
_IGNORED_ITEM_KEYS = {"routing", "stored_fields", "version", "version_type"}
_CHUNK = 500  # ids per query, well under SQLite's bound on variables


@dataclass
class MgetItem:
    index: str
    id: str
    source: Any  # True, False or (includes, excludes), as parse_source gives


def _param_source(params: Mapping[str, str]) -> Any:
    source = parse_source(params.get("_source", True))
    if "_source_includes" in params or "_source_excludes" in params:
        includes = [v for v in params.get("_source_includes", "").split(",") if v]
        excludes = [v for v in params.get("_source_excludes", "").split(",") if v]
        if source is not False:
            source = (includes or (source[0] if isinstance(source, tuple) else []), excludes)
    return source


def parse_mget(body: Any, params: Mapping[str, str], default_index: Optional[str]) -> List[MgetItem]:
    """The documents a ``_mget`` body asks for, in order."""
    if not isinstance(body, dict):
        raise ParsingError("request body is required" if body is None else "request body must be a JSON object")
    for key in body:
        if key not in ("docs", "ids"):
            raise ElasticsearchParseError(f"unknown parameter [{key}] in request body or parameter is of the wrong "
                                          "type[START_ARRAY] ")
    default_source = _param_source(params)
    items: List[MgetItem] = []
    problems: List[str] = []
    entries: List[Any] = []
    if "ids" in body:
        if not isinstance(body["ids"], list):
            raise ParsingError("[ids] must be an array of ids")
        entries += [{"_id": value} for value in body["ids"]]
    if "docs" in body:
        if not isinstance(body["docs"], list):
            raise ParsingError("[docs] must be an array of objects")
        entries += body["docs"]
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ParsingError(f"docs array element should include an object, found [{entry!r}]")
        unknown = set(entry) - {"_index", "_id", "_source"} - _IGNORED_ITEM_KEYS
        if unknown:
            raise ParsingError(f"Unknown key for a VALUE_STRING in [{sorted(unknown)[0]}].")
        index = entry.get("_index", default_index)
        doc_id = entry.get("_id")
        if index is None:
            problems.append(f"index is missing for doc {i}")
        if doc_id is None or isinstance(doc_id, (dict, list, bool)):
            problems.append(f"id is missing for doc {i}")
        source = parse_source(entry["_source"]) if "_source" in entry else default_source
        items.append(MgetItem(str(index), str(doc_id), source))
    if not entries:
        problems.append("no documents to get")
    if problems:
        raise ActionRequestValidation("Validation Failed: " + "".join(
            f"{n}: {problem};" for n, problem in enumerate(problems, 1)))
    return items


def run_mget(conn: sqlite3.Connection, indices: Dict[str, IndexMeta], items: List[MgetItem]) -> Dict[str, Any]:
    """``{"docs": [...]}`` as Elasticsearch answers ``_mget``; runs on a reader thread."""
    wanted: Dict[str, List[str]] = {}
    for item in items:
        wanted.setdefault(item.index, []).append(item.id)
    found: Dict[Tuple[str, str], Tuple[int, int, str]] = {}
    for index, ids in wanted.items():
        meta = indices.get(index)
        if meta is None:
            continue
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for doc_id, version, seq_no, source in conn.execute(
                    f"SELECT id, version, seq_no, source FROM {meta.docs} WHERE id IN ({marks})", chunk):
                found[(index, doc_id)] = (version, seq_no, source)
    docs: List[Dict[str, Any]] = []
    for item in items:
        if item.index not in indices:
            error: EngineError = IndexNotFound(item.index)
            docs.append({"_index": item.index, "_id": item.id, "error": error.body()["error"]})
            continue
        row = found.get((item.index, item.id))
        if row is None:
            docs.append({"_index": item.index, "_id": item.id, "found": False})
            continue
        doc: Dict[str, Any] = {"_index": item.index, "_id": item.id, "_version": row[0], "_seq_no": row[1],
                               "_primary_term": PRIMARY_TERM, "found": True}
        if item.source is True:
            doc["_source"] = json.loads(row[2])
        elif item.source is not False:
            doc["_source"] = filter_source(json.loads(row[2]), item.source[0], item.source[1])
        docs.append(doc)
    return {"docs": docs}
