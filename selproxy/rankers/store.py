"""Persistent document embeddings: encode each document once, find it everywhere.

A bi-encoder's document vector does not depend on the query, so it is worth
keeping.  :class:`SQLiteVectorStore` keeps vectors in one SQLite file in WAL
mode: every worker process on the machine opens the same file, readers never
wait for the writer, and the vectors survive restarts.  It is bounded in rows;
past the bound the least recently used rows go.

Keys.  A vector is found under ``(model identity, index, _id)`` and is valid
only while the hash of the exact text that was encoded (after field selection
and truncation) is the one stored with it: a changed document misses and is
encoded again, and its new vector replaces the old row, so stale vectors do not
pile up.  The model identity (name, a hash of weights, tokenizer and settings)
selects a table namespace, so a changed model never reuses a vector.  Hits
without an ``_id`` are keyed by their text hash alone.

Vectors are stored as int8 with one float scale per vector (``v ~ q * scale``),
a quarter of fp32; ``dtype="float16"`` keeps half precision instead.  The
relevance cost of each is measured in ``benchmarks/RESULTS.md``.

Every method blocks on disk.  Callers run them in the ranker's threads, never
on the event loop.  Each thread gets its own connection.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

__all__ = ("DocKey", "VectorStore", "SQLiteVectorStore", "default_store_path", "encode_vector",
           "decode_vector", "open_store")

#: ``(index, _id, text_hash)``: index and id may be empty strings; the text
#: hash is a short hex digest of the encoded text.
DocKey = Tuple[str, str, str]

#: Seconds between refreshes of a row's last-use time: reads then cost a write
#: at most once in this long per row, not on every search.
TOUCH_INTERVAL = 3600


class VectorStore(Protocol):
    """Where document vectors persist.  All methods block."""

    def get_many(self, keys: Sequence[DocKey]) -> List[Optional[np.ndarray]]:
        """One vector or None per key, in order."""
        ...

    def known(self, keys: Sequence[DocKey]) -> List[bool]:
        """Whether each key has a current vector."""
        ...

    def put_many(self, items: Sequence[Tuple[DocKey, np.ndarray]]) -> None:
        ...

    def stats(self) -> Dict[str, Any]:
        ...

    def close(self) -> None:
        ...


def encode_vector(vector: np.ndarray, dtype: str) -> Tuple[bytes, float]:
    """``(bytes, scale)`` of a float vector in the store's compact form."""
    if dtype == "int8":
        peak = float(np.max(np.abs(vector))) if vector.size else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0
        return np.round(vector / scale).astype(np.int8).tobytes(), scale
    if dtype == "float16":
        return vector.astype(np.float16).tobytes(), 1.0
    raise ValueError(f"unknown vector dtype {dtype!r}; use int8 or float16")


def decode_vector(blob: bytes, scale: float, dtype: str) -> np.ndarray:
    if dtype == "int8":
        return np.frombuffer(blob, dtype=np.int8).astype(np.float32) * np.float32(scale)
    return np.frombuffer(blob, dtype=np.float16).astype(np.float32)


def default_store_path(model_name: str, identity: str) -> Path:
    """``$XDG_CACHE_HOME/selproxy/embeddings/<model>-<identity hash>.sqlite3``
    (``~/.cache`` without XDG): one file per model."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)[:64] or "model"
    return Path(base, "selproxy", "embeddings", f"{safe}-{digest}.sqlite3")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE,
    dtype TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
    model INTEGER NOT NULL,
    idx TEXT NOT NULL,
    id TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    scale REAL NOT NULL,
    vec BLOB NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (model, idx, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vectors_used ON vectors (model, used);
"""

#: SQLite caps host parameters per statement; windows are read in slices.
_MAX_PARAMS = 500


class SQLiteVectorStore:
    """Vectors of one model in a SQLite file; see the module docstring.

    ``max_entries`` bounds the rows of this model; inserting past it evicts the
    least recently used tenth.  ``path=":memory:"`` keeps a private in-memory
    database (tests).
    """

    def __init__(self, path: Union[str, Path], identity: str, *, dtype: str = "int8",
                 max_entries: int = 1_000_000, busy_timeout: float = 5.0) -> None:
        if dtype not in ("int8", "float16"):
            raise ValueError(f"unknown vector dtype {dtype!r}; use int8 or float16")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.path = str(path)
        self.identity = identity
        self.dtype = dtype
        self.max_entries = max_entries
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        self._connections: List[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._memory: Optional[sqlite3.Connection] = None
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.evictions = 0
        conn = self._conn()
        conn.executescript(_SCHEMA)
        with self._writing(conn):
            conn.execute("INSERT OR IGNORE INTO models (identity, dtype) VALUES (?, ?)",
                         (identity, dtype))
        self.model_id, stored_dtype = conn.execute(
            "SELECT id, dtype FROM models WHERE identity = ?", (identity,)).fetchone()
        # Rows already there were written in their own form; read them in it.
        self.dtype = stored_dtype
        self._rows = self._count()

    # -- connections -------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            # One shared connection: a second one would be another database.
            with self._lock:
                if self._memory is None:
                    self._memory = sqlite3.connect(":memory:", check_same_thread=False,
                                                   isolation_level=None)
                    self._connections.append(self._memory)
                return self._memory
        conn: Optional[sqlite3.Connection] = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_ms / 1000,
                                   check_same_thread=False, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL with NORMAL sync loses at most the last transactions on a
            # power cut, never the database: right for a cache.
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
            self._memory = None
        for conn in connections:
            try:
                conn.close()
            except sqlite3.ProgrammingError:  # made in another thread, already gone
                pass
        self._local = threading.local()

    @staticmethod
    @contextlib.contextmanager
    def _writing(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One write transaction (the connection is in autocommit mode, so
        ``with conn`` alone would not begin one)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _count(self) -> int:
        row = self._conn().execute("SELECT count(*) FROM vectors WHERE model = ?",
                                   (self.model_id,)).fetchone()
        return int(row[0])

    # -- reads and writes --------------------------------------------------

    def _select(self, keys: Sequence[DocKey]) -> List[Optional[Tuple[float, bytes]]]:
        """``(scale, blob)`` of each key's current row, or None: a window is
        read with one query per index (in slices of the parameter limit)."""
        found: List[Optional[Tuple[float, bytes]]] = [None] * len(keys)
        wanted: Dict[Tuple[str, str], List[int]] = {}
        for n, (index, doc_id, text_hash) in enumerate(keys):
            wanted.setdefault((index or "", doc_id or text_hash), []).append(n)
        by_index: Dict[str, List[str]] = {}
        for index, doc_id in wanted:
            by_index.setdefault(index, []).append(doc_id)
        now = int(time.time())
        stale: List[Tuple[int, str, str]] = []
        conn = self._conn()
        # One read transaction: every slice sees the same snapshot (in WAL
        # mode a reader never waits for the writer).
        conn.execute("BEGIN")
        try:
            self._select_rows(conn, by_index, wanted, keys, found, now, stale)
        finally:
            conn.execute("COMMIT")
        if stale:
            self._touch(stale)
        return found

    def _select_rows(self, conn: sqlite3.Connection, by_index: Dict[str, List[str]],
                     wanted: Dict[Tuple[str, str], List[int]], keys: Sequence[DocKey],
                     found: List[Optional[Tuple[float, bytes]]], now: int,
                     stale: List[Tuple[int, str, str]]) -> None:
        for index, ids in by_index.items():
            for start in range(0, len(ids), _MAX_PARAMS):
                part = ids[start:start + _MAX_PARAMS]
                marks = ",".join("?" * len(part))
                rows = conn.execute(
                    f"SELECT id, text_hash, scale, vec, used FROM vectors "
                    f"WHERE model = ? AND idx = ? AND id IN ({marks})",
                    (self.model_id, index, *part)).fetchall()
                for doc_id, text_hash, scale, blob, used in rows:
                    current = False
                    for n in wanted[(index, doc_id)]:
                        # A different hash: the document changed since it was encoded.
                        if keys[n][2] == text_hash:
                            found[n] = (scale, blob)
                            current = True
                    if current and now - used > TOUCH_INTERVAL:
                        stale.append((now, index, doc_id))

    def get_many(self, keys: Sequence[DocKey]) -> List[Optional[np.ndarray]]:
        if not keys:
            return []
        rows = self._select(keys)
        decoded: Dict[int, np.ndarray] = {}
        found: List[Optional[np.ndarray]] = []
        for row in rows:
            if row is None:
                found.append(None)
                continue
            vector = decoded.get(id(row[1]))
            if vector is None:
                vector = decoded[id(row[1])] = decode_vector(row[1], row[0], self.dtype)
            found.append(vector)
        hits = sum(1 for row in rows if row is not None)
        self.hits += hits
        self.misses += len(keys) - hits
        return found

    def known(self, keys: Sequence[DocKey]) -> List[bool]:
        """Whether each key has a current vector (no decoding, no counting)."""
        return [row is not None for row in self._select(keys)] if keys else []

    def _touch(self, rows: Sequence[Tuple[int, str, str]]) -> None:
        try:
            with self._writing(self._conn()) as conn:
                conn.executemany("UPDATE vectors SET used = ? WHERE model = ? AND idx = ? AND id = ?",
                                 [(t, self.model_id, i, d) for t, i, d in rows])
        except sqlite3.OperationalError:
            pass  # busy: the last-use time is a hint, a later read retries

    def put_many(self, items: Sequence[Tuple[DocKey, np.ndarray]]) -> None:
        if not items:
            return
        now = int(time.time())
        rows = []
        for (index, doc_id, text_hash), vector in items:
            blob, scale = encode_vector(np.asarray(vector, dtype=np.float32), self.dtype)
            rows.append((self.model_id, index or "", doc_id or text_hash, text_hash, scale, blob, now))
        conn = self._conn()
        with self._writing(conn):
            conn.executemany(
                "INSERT INTO vectors (model, idx, id, text_hash, scale, vec, used) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, idx, id) DO UPDATE SET "
                "text_hash = excluded.text_hash, scale = excluded.scale, vec = excluded.vec, "
                "used = excluded.used", rows)
        self.writes += len(rows)
        self._rows += len(rows)  # an upper bound: replaced rows count twice until recounted
        if self._rows > self.max_entries:
            self._rows = self._count()
            if self._rows > self.max_entries:
                self._evict(conn)

    def _evict(self, conn: sqlite3.Connection) -> None:
        # Down to 90 % of the bound, so eviction runs once per tenth, not per insert.
        excess = self._rows - int(self.max_entries * 0.9)
        with self._writing(conn):
            conn.execute(
                "DELETE FROM vectors WHERE model = ? AND (idx, id) IN ("
                "SELECT idx, id FROM vectors WHERE model = ? ORDER BY used LIMIT ?)",
                (self.model_id, self.model_id, excess))
        self.evictions += excess
        self._rows = self._count()

    def __len__(self) -> int:
        return self._count()

    def stats(self) -> Dict[str, Any]:
        return {"backend": "sqlite", "path": self.path, "dtype": self.dtype, "entries": self._rows,
                "max_entries": self.max_entries, "hits": self.hits, "misses": self.misses,
                "writes": self.writes, "evictions": self.evictions}


def open_store(spec: Optional[str], model_name: str, identity: str, *,
               upstream: Optional[str] = None, ca_file: Optional[str] = None, verify: bool = True,
               **options: Any) -> Optional[VectorStore]:
    """The store a ``--embedding-store`` value names: None or ``":memory:"``
    for none, ``"default"`` for the per-model file under the cache directory,
    ``"engine"`` for a sidecar index of the engine at ``upstream``, anything
    else a file path."""
    if spec is None or spec == ":memory:" or spec == "none":
        return None
    if spec == "engine":
        if not upstream:
            raise ValueError("embedding_store='engine' needs the engine's URL (store_upstream)")
        from .engine_store import EngineVectorStore
        return EngineVectorStore(upstream, model_name, identity, dtype=options.get("dtype", "int8"),
                                 ca_file=ca_file, verify=verify)
    path = default_store_path(model_name, identity) if spec == "default" else Path(spec)
    return SQLiteVectorStore(path, identity, **options)
