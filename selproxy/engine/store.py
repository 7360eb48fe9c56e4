"""The SQLite store: indices, documents, and the threads SQLite runs on.

Layout, for the index numbered ``n`` (``indices.num``):

- ``d{n}``: one row per document (``rid`` is the rowid every other table keys
  on, ``id`` the Elasticsearch ``_id``, plus ``version``, ``seq_no`` and the
  ``_source`` JSON);
- ``t{n}_{j}``: one FTS5 table per ``text`` field, so that BM25's document
  counts and average lengths are per index and per field, as in Lucene (FTS5's
  bm25() reads its statistics from the whole table it is called on);
- ``k{n}``: (field, value, rid) for keyword and boolean values;
- ``n{n}``: (field, value, rid) for numbers and dates (epoch milliseconds).

Threads: every write runs on one writer thread with its own connection, inside
one ``BEGIN IMMEDIATE`` transaction per request; reads run on a small pool of
reader threads, each with its own connection, inside a read transaction so a
search sees one snapshot.  With a file the database is in WAL mode, so readers
never wait for the writer.  ``:memory:`` uses SQLite's ``memdb`` VFS, which
shares one in-memory database between the connections of this process (readers
then briefly wait while a write commits).

Index metadata (mappings and the FTS table of each text field) is cached in
:attr:`Store.indices`, replaced as a whole only after the transaction that
changed it commits, so readers always see a mapping whose tables exist.
"""
from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
import os
import sqlite3
import tempfile
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, TypeVar

from .analysis import TOKENIZE
from .errors import (ActionRequestValidation, DocumentMissing, DocumentParsingError, EngineError,
                     IllegalArgument, IndexNotFound, InvalidIndexName, ParsingError, ResourceAlreadyExists,
                     UnsupportedFeature, VersionConflict)
from .mapping import (ROOT_KEYS, Field, analyse_document, dynamic_mode, flatten, leaf_plans, merge_properties,
                      validate_properties, validate_root)

__all__ = ("Store", "IndexMeta")

T = TypeVar("T")

SHARDS_OK = {"total": 2, "successful": 1, "failed": 0}
PRIMARY_TERM = 1


@dataclasses.dataclass
class IndexMeta:
    name: str
    num: int
    uuid: str
    created: int
    props: Dict[str, Any]
    settings: Dict[str, Any]
    fts: Dict[str, int]
    seq_no: int
    fields: Dict[str, Field] = dataclasses.field(default_factory=dict)
    specs: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    plans: Dict[str, List[Field]] = dataclasses.field(default_factory=dict)
    # The mapping's root attributes beside "properties" (mapping.ROOT_KEYS).
    root: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.set_props(self.props)

    @property
    def hidden(self) -> bool:
        """``index.hidden``: left out of wildcard and ``_all`` expansion."""
        return _setting(self.settings, "hidden") in (True, "true")

    def mappings(self) -> Dict[str, Any]:
        """The mapping as ``GET /<index>/_mapping`` shows it."""
        out: Dict[str, Any] = {key: self.root[key] for key in ROOT_KEYS if key in self.root}
        if self.props:
            out["properties"] = self.props
        return out

    def set_props(self, props: Dict[str, Any]) -> None:
        self.props = props
        self.fields, self.specs = flatten(props)
        self.plans = leaf_plans(self.fields)

    @property
    def docs(self) -> str:
        return f"d{self.num}"

    @property
    def keywords(self) -> str:
        return f"k{self.num}"

    @property
    def numbers(self) -> str:
        return f"n{self.num}"

    def fts_table(self, field: str) -> str:
        return f"t{self.num}_{self.fts[field]}"

    def error_meta(self) -> Dict[str, Any]:
        return {"index_uuid": self.uuid, "shard": "0", "index": self.name}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS indices (
    num INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    uuid TEXT NOT NULL,
    created INTEGER NOT NULL,
    seq_no INTEGER NOT NULL,
    mapping TEXT NOT NULL,
    settings TEXT NOT NULL,
    fts TEXT NOT NULL,
    mapping_root TEXT NOT NULL DEFAULT '{}'
);
"""


def _setting(settings: Dict[str, Any], name: str) -> Any:
    """An index setting given as ``{"index": {name: v}}``, ``{"index.name": v}`` or ``{name: v}``."""
    index = settings.get("index")
    if isinstance(index, dict) and name in index:
        return index[name]
    return settings.get("index." + name, settings.get(name))


_BAD_NAME_CHARS = set('\\/*?"<>| ,#:')


def check_index_name(name: str) -> None:
    if not name or name in (".", ".."):
        raise InvalidIndexName(f"Invalid index name [{name}], must not be '.' or '..'",
                               **{"index_uuid": "_na_", "index": name})
    if name.lower() != name:
        raise InvalidIndexName(f"Invalid index name [{name}], must be lowercase",
                               **{"index_uuid": "_na_", "index": name})
    if name[0] in "_-+":
        raise InvalidIndexName(f"Invalid index name [{name}], must not start with '_', '-', or '+'",
                               **{"index_uuid": "_na_", "index": name})
    if any(c in _BAD_NAME_CHARS for c in name):
        raise InvalidIndexName(
            f"Invalid index name [{name}], must not contain the following characters "
            "['\\\\','/','*','?','\"','<','>','|',' ',',','#',':']", **{"index_uuid": "_na_", "index": name})
    if len(name.encode()) > 255:
        raise InvalidIndexName(f"Invalid index name [{name}], index name is too long,",
                               **{"index_uuid": "_na_", "index": name})


def new_doc_id() -> str:
    # Elasticsearch's auto ids are 20 URL-safe base64 characters.
    stamp = int(time.time() * 1000).to_bytes(6, "big")
    return base64.urlsafe_b64encode(stamp + os.urandom(9)).decode()


def deep_merge(base: Dict[str, Any], patch: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class Txn:
    """One write transaction: the connection, and copy-on-write index metadata
    that the store publishes only if the transaction commits."""

    def __init__(self, store: "Store", conn: sqlite3.Connection) -> None:
        self.store = store
        self.conn = conn
        self.indices = dict(store.indices)
        self._touched: Dict[str, IndexMeta] = {}
        # PERF: index rows are buffered per table and written with one
        # executemany each; flush() runs before anything reads or deletes them.
        # Measured 2026-12-06 (timeit, best of 5, 2 shared cores): 20,000 rows
        # of three columns into one table, 58 ms by executemany, 106 ms by one
        # execute per row.
        self._rows: Dict[str, List[Tuple[Any, ...]]] = {}

    def add_rows(self, table: str, rows: List[Tuple[Any, ...]]) -> None:
        buf = self._rows.get(table)
        if buf is None:
            self._rows[table] = list(rows)
        else:
            buf.extend(rows)

    def flush(self) -> None:
        for table, rows in self._rows.items():
            if table[0] == "t":
                self.conn.executemany(f"INSERT INTO {table} (rowid, body) VALUES (?, ?)", rows)
            else:
                self.conn.executemany(f"INSERT INTO {table} (field, value, rid) VALUES (?, ?, ?)", rows)
        self._rows = {}

    def meta(self, name: str, create: bool = False) -> IndexMeta:
        touched = self._touched.get(name)
        if touched is not None:
            return touched
        current = self.indices.get(name)
        if current is None:
            if not create:
                raise IndexNotFound(name)
            current = self.store._create_index(self, name, {}, {})
        touched = dataclasses.replace(current, props=current.props)
        self._touched[name] = touched
        self.indices[name] = touched
        return touched

    def forget(self, name: str) -> None:
        self._touched.pop(name, None)
        self.indices.pop(name, None)

    def finish(self) -> None:
        self.flush()
        for meta in self._touched.values():
            self.conn.execute("UPDATE indices SET seq_no = ?, mapping = ?, fts = ?, mapping_root = ? WHERE num = ?",
                              (meta.seq_no, json.dumps(meta.props), json.dumps(meta.fts), json.dumps(meta.root),
                               meta.num))


class Store:
    """The engine's data: open with :meth:`start`, close with :meth:`close`."""

    def __init__(self, data: str = ":memory:", readers: int = 4) -> None:
        self.data = data
        # The memdb VFS (SQLite 3.36+) lets several connections share one
        # in-memory database; older SQLite gets a private temporary file instead.
        self.memory = data == ":memory:" and sqlite3.sqlite_version_info >= (3, 36)
        self._temp_dir: Optional[tempfile.TemporaryDirectory[str]] = None
        if self.memory:
            self._uri = f"file:/selproxy-engine-{uuid.uuid4().hex}?vfs=memdb"
        else:
            path = data
            if data == ":memory:":
                self._temp_dir = tempfile.TemporaryDirectory(prefix="selproxy-engine-")
                path = os.path.join(self._temp_dir.name, "engine.sqlite3")
            self._uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rwc"
        self.indices: Dict[str, IndexMeta] = {}
        self._local = threading.local()
        self._conns: List[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="selproxy-engine-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="selproxy-engine-reader")
        self.uuid = uuid.uuid4().hex[:22]

    # -- threads and connections ---------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._uri, uri=True, isolation_level=None, check_same_thread=False,
                                   cached_statements=512)
            conn.execute("PRAGMA busy_timeout = 30000")
            if not self.memory:
                conn.execute("PRAGMA journal_mode = WAL")
                # WAL with synchronous=NORMAL: a commit survives a process crash;
                # only a power loss may lose the last transactions.
                conn.execute("PRAGMA synchronous = NORMAL")
                # PERF: a 64 MB page cache instead of the default 2 MB, for index
                # b-trees larger than that.  Measured 2026-12-06 (2 shared cores):
                # benchmarks/bench_engine_bulk.py --docs 60000 --data FILE gave
                # 1860-2403 docs/s with it and 1912-2309 without, within noise at
                # that size; a larger index is where it should tell (not measured).
                conn.execute("PRAGMA cache_size = -65536")
            with self._conns_lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(txn, *args)`` in one write transaction on the writer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._write_sync, fn, args)

    def _write_sync(self, fn: Callable[..., T], args: Tuple[Any, ...]) -> T:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        txn = Txn(self, conn)
        try:
            result = fn(txn, *args)
            txn.finish()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.indices = txn.indices
        return result

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, indices, *args)`` in one read transaction on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_sync, fn, args)

    def _read_sync(self, fn: Callable[..., T], args: Tuple[Any, ...]) -> T:
        conn = self._conn()
        indices = self.indices
        conn.execute("BEGIN")
        try:
            return fn(conn, indices, *args)
        except sqlite3.OperationalError as exc:
            # An index deleted between our snapshot of the metadata and the query.
            if "no such table" in str(exc):
                missing = [name for name in indices if name not in self.indices]
                if missing:
                    raise IndexNotFound(missing[0]) from None
            raise
        finally:
            conn.execute("COMMIT")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._load)

    def _load(self) -> None:
        conn = self._conn()
        conn.executescript(_SCHEMA)
        # Databases written before mappings kept root attributes get the column.
        if "mapping_root" not in {row[1] for row in conn.execute("PRAGMA table_info(indices)")}:
            conn.execute("ALTER TABLE indices ADD COLUMN mapping_root TEXT NOT NULL DEFAULT '{}'")
        indices = {}
        for num, name, uid, created, seq_no, mapping, settings, fts, root in conn.execute(
                "SELECT num, name, uuid, created, seq_no, mapping, settings, fts, mapping_root FROM indices"):
            indices[name] = IndexMeta(name, num, uid, created, json.loads(mapping), json.loads(settings),
                                      json.loads(fts), seq_no, root=json.loads(root))
        self.indices = indices

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.close_sync)

    def close_sync(self) -> None:
        self._readers.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        with self._conns_lock:
            # Readers first: the writer's connection keeps a memdb database alive.
            for conn in reversed(self._conns):
                conn.close()
            self._conns.clear()
        if self._temp_dir is not None:
            self._temp_dir.cleanup()
            self._temp_dir = None

    # -- index names ---------------------------------------------------------------------------

    def resolve(self, expr: Optional[str], indices: Optional[Dict[str, IndexMeta]] = None,
                allow_missing: bool = False, hidden: bool = False) -> List[IndexMeta]:
        """The indices an index expression (``a,b``, ``logs-*``, ``_all``) names.

        Wildcards and ``_all`` skip hidden indices unless ``hidden`` (the
        ``expand_wildcards=all|hidden`` of Elasticsearch) or, for a dot-prefixed
        index, unless the pattern itself starts with a dot; a name always works."""
        indices = self.indices if indices is None else indices
        if not expr or expr in ("_all", "*"):
            return [indices[name] for name in sorted(indices) if hidden or not indices[name].hidden]
        out: Dict[str, IndexMeta] = {}
        excluded: Set[str] = set()
        import fnmatch
        for part in expr.split(","):
            if part.startswith("-") and "*" in part:
                excluded.update(n for n in indices if fnmatch.fnmatchcase(n, part[1:]))
            elif "*" in part:
                for name in sorted(indices):
                    meta = indices[name]
                    if meta.hidden and not hidden and not (part.startswith(".") and name.startswith(".")):
                        continue
                    if fnmatch.fnmatchcase(name, part):
                        out[name] = meta
            elif part in indices:
                out[part] = indices[part]
            elif not allow_missing:
                raise IndexNotFound(part)
        return [meta for name, meta in out.items() if name not in excluded]

    # -- index management (writer thread) ------------------------------------------------------

    def _create_index(self, txn: Txn, name: str, props: Dict[str, Any], settings: Dict[str, Any]) -> IndexMeta:
        check_index_name(name)
        created = int(time.time() * 1000)
        uid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]
        cur = txn.conn.execute(
            "INSERT INTO indices (name, uuid, created, seq_no, mapping, settings, fts) VALUES (?,?,?,?,?,?,?)",
            (name, uid, created, -1, json.dumps(props), json.dumps(settings), "{}"))
        num = cur.lastrowid
        assert num is not None
        # Not executescript(): it would COMMIT the transaction we are in.
        for statement in (
                f"CREATE TABLE d{num} (rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
                f"version INTEGER NOT NULL, seq_no INTEGER NOT NULL, source TEXT NOT NULL)",
                f"CREATE TABLE k{num} (field TEXT NOT NULL, value TEXT NOT NULL, rid INTEGER NOT NULL)",
                f"CREATE INDEX k{num}_fv ON k{num} (field, value, rid)",
                f"CREATE INDEX k{num}_r ON k{num} (rid, field, value)",
                f"CREATE TABLE n{num} (field TEXT NOT NULL, value NOT NULL, rid INTEGER NOT NULL)",
                f"CREATE INDEX n{num}_fv ON n{num} (field, value, rid)",
                f"CREATE INDEX n{num}_r ON n{num} (rid, field, value)"):
            txn.conn.execute(statement)
        meta = IndexMeta(name, num, uid, created, {}, settings, {}, -1)
        txn.indices[name] = meta
        self._apply_props(txn, meta, props)
        return meta

    def _apply_props(self, txn: Txn, meta: IndexMeta, props: Dict[str, Any]) -> None:
        """Make ``props`` the mapping of ``meta``, creating FTS tables for new text fields."""
        meta.set_props(props)
        for field in meta.fields.values():
            if field.kind == "text" and field.name not in meta.fts:
                number = max(meta.fts.values(), default=-1) + 1
                meta.fts = {**meta.fts, field.name: number}
                txn.conn.execute(
                    f"CREATE VIRTUAL TABLE t{meta.num}_{number} USING fts5(body, tokenize='{TOKENIZE}')")

    def create_index(self, txn: Txn, name: str, body: Dict[str, Any]) -> Dict[str, Any]:
        if name in txn.indices:
            meta = txn.indices[name]
            raise ResourceAlreadyExists(f"index [{name}/{meta.uuid}] already exists",
                                        index_uuid=meta.uuid, index=name)
        unknown = set(body) - {"mappings", "settings", "aliases"}
        if unknown:
            raise ParsingError(f"unknown key [{sorted(unknown)[0]}] for create index")
        mappings = body.get("mappings") or {}
        if not isinstance(mappings, dict):
            raise ParsingError("Failed to parse mapping: mappings must be an object")
        if "_doc" in mappings and isinstance(mappings["_doc"], dict):
            mappings = mappings["_doc"]
        props = mappings.get("properties", {})
        validate_properties(props)
        root = validate_root(mappings)
        settings = body.get("settings") or {}
        if not isinstance(settings, dict):
            raise ParsingError("Failed to parse settings: settings must be an object")
        self._create_index(txn, name, copy.deepcopy(props), settings)
        meta = txn.meta(name)
        meta.root = copy.deepcopy(root)
        return {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def delete_index(self, txn: Txn, expr: str) -> Dict[str, Any]:
        for meta in self.resolve(expr, txn.indices):
            tables = [f"t{meta.num}_{j}" for j in meta.fts.values()]
            for table in [meta.docs, meta.keywords, meta.numbers] + tables:
                txn.conn.execute(f"DROP TABLE IF EXISTS {table}")
            txn.conn.execute("DELETE FROM indices WHERE num = ?", (meta.num,))
            txn.forget(meta.name)
        return {"acknowledged": True}

    def put_mapping(self, txn: Txn, expr: str, body: Dict[str, Any]) -> Dict[str, Any]:
        props = body.get("properties", {})
        validate_properties(props)
        dynamic = dynamic_mode(body["dynamic"]) if "dynamic" in body else None
        for found in self.resolve(expr, txn.indices):
            meta = txn.meta(found.name)
            self._apply_props(txn, meta, merge_properties(meta.props, props))
            if dynamic is not None:
                meta.root = {**meta.root, "dynamic": dynamic}
        return {"acknowledged": True}

    # -- documents (writer thread) -------------------------------------------------------------

    def _current(self, txn: Txn, meta: IndexMeta, doc_id: str) -> Optional[Tuple[int, int, int, str]]:
        row: Optional[Tuple[int, int, int, str]] = txn.conn.execute(
            f"SELECT rid, version, seq_no, source FROM {meta.docs} WHERE id = ?", (doc_id,)).fetchone()
        return row

    def _check_seq(self, meta: IndexMeta, doc_id: str, current: Optional[Tuple[int, int, int, str]],
                   if_seq_no: Optional[int], if_primary_term: Optional[int]) -> None:
        if if_seq_no is None and if_primary_term is None:
            return
        if if_seq_no is None or if_primary_term is None:
            raise ActionRequestValidation(
                "Validation Failed: 1: ifSeqNo is unassigned, but primary term is [%s];" % if_primary_term
                if if_seq_no is None else
                "Validation Failed: 1: ifSeqNo is set, but primary term is [0];")
        if current is None:
            raise VersionConflict(
                f"[{doc_id}]: version conflict, required seqNo [{if_seq_no}], primary term "
                f"[{if_primary_term}], but no document was found", **meta.error_meta())
        if current[2] != int(if_seq_no) or int(if_primary_term) != PRIMARY_TERM:
            raise VersionConflict(
                f"[{doc_id}]: version conflict, required seqNo [{if_seq_no}], primary term "
                f"[{if_primary_term}]. current document has seqNo [{current[2]}] and primary term "
                f"[{PRIMARY_TERM}]", **meta.error_meta())

    def _write_doc(self, txn: Txn, meta: IndexMeta, doc_id: str, source: Dict[str, Any],
                   current: Optional[Tuple[int, int, int, str]], raw: Optional[str] = None) -> Tuple[int, int]:
        rows, new_props = analyse_document(source, meta.props, meta.fields, meta.specs, doc_id, meta.plans,
                                           meta.root)
        if new_props is not None:
            self._apply_props(txn, meta, new_props)
        conn = txn.conn
        meta.seq_no += 1
        text = raw if raw is not None else json.dumps(source, ensure_ascii=False, separators=(",", ":"))
        if current is None:
            version = 1
            rid = conn.execute(f"INSERT INTO {meta.docs} (id, version, seq_no, source) VALUES (?,?,?,?)",
                               (doc_id, version, meta.seq_no, text)).lastrowid
        else:
            rid, version = current[0], current[1] + 1
            conn.execute(f"UPDATE {meta.docs} SET version = ?, seq_no = ?, source = ? WHERE rid = ?",
                         (version, meta.seq_no, text, rid))
            self._unindex(txn, meta, rid)
        for field, body in rows.texts.items():
            txn.add_rows(meta.fts_table(field), [(rid, body)])
        if rows.keywords:
            txn.add_rows(meta.keywords, [(f, v, rid) for f, v in rows.keywords])
        if rows.numbers:
            txn.add_rows(meta.numbers, [(f, v, rid) for f, v in rows.numbers])
        return version, meta.seq_no

    def _unindex(self, txn: Txn, meta: IndexMeta, rid: int) -> None:
        txn.flush()
        conn = txn.conn
        for number in meta.fts.values():
            conn.execute(f"DELETE FROM t{meta.num}_{number} WHERE rowid = ?", (rid,))
        conn.execute(f"DELETE FROM {meta.keywords} WHERE rid = ?", (rid,))
        conn.execute(f"DELETE FROM {meta.numbers} WHERE rid = ?", (rid,))

    def _result(self, meta: IndexMeta, doc_id: str, version: int, result: str, seq_no: int,
                shards: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
        return {"_index": meta.name, "_id": doc_id, "_version": version, "result": result,
                "_shards": shards or SHARDS_OK, "_seq_no": seq_no, "_primary_term": PRIMARY_TERM}

    def index_doc(self, txn: Txn, index: str, doc_id: Optional[str], source: Any, op_type: str = "index",
                  if_seq_no: Optional[int] = None, if_primary_term: Optional[int] = None,
                  raw: Optional[str] = None) -> Tuple[int, Dict[str, Any]]:
        """Index (or ``create``) one document; (status, result body).  ``raw`` is
        the document's JSON text as received, kept as ``_source`` verbatim."""
        meta = txn.meta(index, create=True)
        if not isinstance(source, dict):
            raise DocumentParsingError("failed to parse, document is empty" if source is None else
                                       "[1:1] failed to parse: expected a JSON object", )
        if doc_id is None:
            doc_id, current = new_doc_id(), None
        else:
            if not doc_id:
                raise ActionRequestValidation("Validation Failed: 1: if _id is specified it must not be empty;")
            current = self._current(txn, meta, doc_id)
            if op_type == "create" and current is not None:
                raise VersionConflict(f"[{doc_id}]: version conflict, document already exists "
                                      f"(current version [{current[1]}])", **meta.error_meta())
            self._check_seq(meta, doc_id, current, if_seq_no, if_primary_term)
        version, seq_no = self._write_doc(txn, meta, doc_id, source, current, raw)
        created = current is None
        return (201 if created else 200), self._result(meta, doc_id, version,
                                                       "created" if created else "updated", seq_no)

    def update_doc(self, txn: Txn, index: str, doc_id: str, body: Any,
                   if_seq_no: Optional[int] = None, if_primary_term: Optional[int] = None,
                   ) -> Tuple[int, Dict[str, Any]]:
        if not isinstance(body, dict):
            raise ActionRequestValidation("Validation Failed: 1: script or doc is missing;")
        if "script" in body:
            raise UnsupportedFeature("scripted updates are not supported by selproxy.engine; send a partial [doc]")
        unknown = set(body) - {"doc", "upsert", "doc_as_upsert", "detect_noop", "_source", "scripted_upsert"}
        if unknown:
            raise IllegalArgument(f"[UpdateRequest] unknown field [{sorted(unknown)[0]}]")
        doc = body.get("doc")
        if not isinstance(doc, dict):
            raise ActionRequestValidation("Validation Failed: 1: script or doc is missing;")
        meta = txn.meta(index, create=bool(body.get("doc_as_upsert") or "upsert" in body))
        current = self._current(txn, meta, doc_id)
        self._check_seq(meta, doc_id, current, if_seq_no, if_primary_term)
        if current is None:
            if body.get("doc_as_upsert"):
                source = doc
            elif isinstance(body.get("upsert"), dict):
                source = body["upsert"]
            else:
                raise DocumentMissing(f"[{doc_id}]: document missing", **meta.error_meta())
            version, seq_no = self._write_doc(txn, meta, doc_id, source, None)
            return 201, self._result(meta, doc_id, version, "created", seq_no)
        old = json.loads(current[3])
        merged = deep_merge(old, doc)
        if merged == old and body.get("detect_noop", True):
            return 200, self._result(meta, doc_id, current[1], "noop", current[2],
                                     {"total": 0, "successful": 0, "failed": 0})
        version, seq_no = self._write_doc(txn, meta, doc_id, merged, current)
        return 200, self._result(meta, doc_id, version, "updated", seq_no)

    def delete_doc(self, txn: Txn, index: str, doc_id: str, if_seq_no: Optional[int] = None,
                   if_primary_term: Optional[int] = None) -> Tuple[int, Dict[str, Any]]:
        meta = txn.meta(index)
        current = self._current(txn, meta, doc_id)
        self._check_seq(meta, doc_id, current, if_seq_no, if_primary_term)
        meta.seq_no += 1
        if current is None:
            return 404, self._result(meta, doc_id, 1, "not_found", meta.seq_no)
        rid = current[0]
        self._unindex(txn, meta, rid)
        txn.conn.execute(f"DELETE FROM {meta.docs} WHERE rid = ?", (rid,))
        return 200, self._result(meta, doc_id, current[1] + 1, "deleted", meta.seq_no)

    def bulk(self, txn: Txn, actions: Iterable[Tuple[str, Dict[str, Any], Any, Optional[str]]]) -> Dict[str, Any]:
        """Apply parsed bulk actions in order; failures are reported per item."""
        started = time.monotonic()
        items: List[Dict[str, Any]] = []
        errors = False
        for op, meta_line, payload, raw in actions:
            index = meta_line["_index"]
            doc_id = meta_line.get("_id")
            doc_id = None if doc_id is None else str(doc_id)
            seq = meta_line.get("if_seq_no"), meta_line.get("if_primary_term")
            try:
                if isinstance(payload, EngineError):
                    raise payload
                if op == "delete":
                    status, result = self.delete_doc(txn, index, str(doc_id), *seq)
                elif op == "update":
                    status, result = self.update_doc(txn, index, str(doc_id), payload, *seq)
                else:
                    status, result = self.index_doc(txn, index, doc_id, payload, op, *seq, raw=raw)
                result["status"] = status
                items.append({op: result})
            except EngineError as exc:
                errors = True
                item: Dict[str, Any] = {"_index": index, "_id": doc_id, "status": exc.status,
                                        "error": exc.cause()}
                if index in txn.indices:
                    item["error"].setdefault("index_uuid", txn.indices[index].uuid)
                    item["error"].setdefault("shard", "0")
                    item["error"].setdefault("index", index)
                items.append({op: item})
        took = int((time.monotonic() - started) * 1000)
        return {"took": took, "errors": errors, "items": items}


# Read-side helpers (reader threads) -------------------------------------------------------------

def get_doc(conn: sqlite3.Connection, indices: Dict[str, IndexMeta], index: str,
            doc_id: str) -> Tuple[int, Dict[str, Any]]:
    meta = indices.get(index)
    if meta is None:
        raise IndexNotFound(index)
    row = conn.execute(f"SELECT version, seq_no, source FROM {meta.docs} WHERE id = ?", (doc_id,)).fetchone()
    if row is None:
        return 404, {"_index": index, "_id": doc_id, "found": False}
    return 200, {"_index": index, "_id": doc_id, "_version": row[0], "_seq_no": row[1],
                 "_primary_term": PRIMARY_TERM, "found": True, "_source": json.loads(row[2])}


def high_waters(conn: sqlite3.Connection, indices: Dict[str, IndexMeta], metas: List[IndexMeta]) -> List[int]:
    """The largest document number (``rid``) in each index: what a scroll or
    point in time opened now sees (see ``contexts.py``)."""
    return [conn.execute(f"SELECT coalesce(max(rid), 0) FROM {meta.docs}").fetchone()[0] for meta in metas]


def index_stats(conn: sqlite3.Connection, indices: Dict[str, IndexMeta],
                metas: List[IndexMeta]) -> List[Tuple[IndexMeta, int, int]]:
    """(meta, document count, approximate bytes) for each index."""
    out = []
    for meta in metas:
        count, size = conn.execute(
            f"SELECT count(*), coalesce(sum(length(source)), 0) FROM {meta.docs}").fetchone()
        out.append((meta, count, size))
    return out
