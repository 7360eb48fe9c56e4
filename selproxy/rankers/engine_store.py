"""Document embeddings kept in the search engine itself (``--embedding-store engine``).

Every proxy replica in front of one cluster then shares one store that
scales, replicates and persists with the cluster, and the proxy keeps no state
of its own.  The vectors live in a sidecar index of their own, one per model
identity::

    .selproxy-vectors-<model>-<12 hex digits of the identity hash>

created on first use as a hidden index (wildcard searches such as ``*`` leave
it out) with this mapping (nothing in it is searchable: the vectors are only
ever fetched by id)::

    {"settings": {"index": {"hidden": true}},
     "mappings": {"dynamic": false, "properties": {
        "v": {"type": "binary"},                   # base64 of the int8 or fp16 vector
        "t": {"type": "keyword", "index": false},  # hash of the text that was encoded
        "s": {"type": "float", "index": false}}}}  # the int8 scale

A document's ``_id`` there is ``<index>/<_id>`` of the user's document (a
SHA-1 of that when it is longer than 256 bytes).  A window is read with one
``_mget`` and new vectors are written with one ``_bulk``.  The proxy never
writes to, reads from or changes any other index: only the sidecar.

All calls block (the ranker's threads make them) and have short timeouts: a
slow or failing engine makes lookups miss, never a search fail.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._engine_http import EngineCallError, EngineHTTP
from .store import DocKey, decode_vector, encode_vector

__all__ = ("EngineVectorStore", "sidecar_index")

log = logging.getLogger("selproxy.rankers")

MAPPING = {"settings": {"index": {"hidden": True}}, "mappings": {"dynamic": False, "properties": {
    "v": {"type": "binary"},
    "t": {"type": "keyword", "index": False},
    "s": {"type": "float", "index": False}}}}


def sidecar_index(model_name: str, identity: str) -> str:
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in model_name.lower())[:48] or "model"
    return f".selproxy-vectors-{safe}-{digest}"


def _doc_id(key: DocKey) -> str:
    index, doc_id, text_hash = key
    raw = f"{index}/{doc_id or text_hash}"
    if len(raw.encode("utf-8", "surrogatepass")) > 256:
        return hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()
    return raw


class EngineVectorStore:
    """A :class:`~selproxy.rankers.store.VectorStore` in a sidecar index; see
    the module docstring."""

    def __init__(self, upstream: str, model_name: str, identity: str, *, dtype: str = "int8",
                 timeout: float = 2.0, ca_file: Optional[str] = None, verify: bool = True) -> None:
        self._client_options: Dict[str, Any] = dict(timeout=timeout, ca_file=ca_file, verify=verify)
        self._upstream = upstream
        EngineHTTP(upstream, **self._client_options)  # a bad URL fails here, at start
        self.index = sidecar_index(model_name, identity)
        self.identity = identity
        self.dtype = dtype
        self.timeout = timeout
        self._local = threading.local()
        self._created = False
        self._create_lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.errors = 0
        self._last_warning = 0.0

    def _call(self, method: str, path: str, body: Optional[bytes] = None,
              content_type: str = "application/json") -> Tuple[int, Any]:
        """One request on this thread's connection (the ranker's threads each
        have their own)."""
        client: Optional[EngineHTTP] = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = EngineHTTP(self._upstream, **self._client_options)
        return client.request(method, path, body, content_type=content_type)

    def _ensure_index(self) -> None:
        if self._created:
            return
        with self._create_lock:
            if self._created:
                return
            status, body = self._call("PUT", "/" + self.index, json.dumps(MAPPING).encode())
            error = body.get("error") if isinstance(body, dict) else None
            kind = error.get("type") if isinstance(error, dict) else None
            if status >= 300 and kind != "resource_already_exists_exception":
                raise EngineCallError(f"cannot create {self.index}: HTTP {status} {kind or ''}".strip())
            self._created = True

    def _warn(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_warning > 30:  # a failing engine must not flood the log
            self._last_warning = now
            log.warning("embedding store in the engine: %s failed (%s)", what, type(exc).__name__)

    # -- the store ----------------------------------------------------------

    def _fetch(self, keys: Sequence[DocKey]) -> List[Optional[Dict[str, Any]]]:
        ids = list(dict.fromkeys(_doc_id(k) for k in keys))
        status, body = self._call("POST", f"/{self.index}/_mget",
                                  json.dumps({"ids": ids}).encode())
        if status == 404:
            return [None] * len(keys)  # no vector stored yet: the index does not exist
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("docs"), list):
            raise EngineCallError(f"_mget answered HTTP {status}")
        by_id = {d.get("_id"): d.get("_source") for d in body["docs"]
                 if isinstance(d, dict) and d.get("found")}
        out: List[Optional[Dict[str, Any]]] = []
        for key in keys:
            source = by_id.get(_doc_id(key))
            out.append(source if isinstance(source, dict) and source.get("t") == key[2] else None)
        return out

    def get_many(self, keys: Sequence[DocKey]) -> List[Optional[np.ndarray]]:
        if not keys:
            return []
        try:
            sources = self._fetch(keys)
        except EngineCallError as exc:
            self._warn("a lookup", exc)
            self.misses += len(keys)
            return [None] * len(keys)
        found: List[Optional[np.ndarray]] = []
        for source in sources:
            vector = None
            if source is not None:
                try:
                    vector = decode_vector(base64.b64decode(source["v"]), float(source.get("s", 1.0)),
                                           self.dtype)
                except (KeyError, ValueError, TypeError):
                    vector = None
            found.append(vector)
        hits = sum(1 for v in found if v is not None)
        self.hits += hits
        self.misses += len(keys) - hits
        return found

    def known(self, keys: Sequence[DocKey]) -> List[bool]:
        if not keys:
            return []
        return [s is not None for s in self._fetch(keys)]

    def put_many(self, items: Sequence[Tuple[DocKey, np.ndarray]]) -> None:
        if not items:
            return
        lines = []
        for key, vector in items:
            blob, scale = encode_vector(np.asarray(vector, dtype=np.float32), self.dtype)
            lines.append(json.dumps({"index": {"_id": _doc_id(key)}}))
            lines.append(json.dumps({"t": key[2], "s": scale, "v": base64.b64encode(blob).decode()}))
        payload = ("\n".join(lines) + "\n").encode()
        try:
            self._ensure_index()
            status, body = self._call("POST", f"/{self.index}/_bulk", payload, "application/x-ndjson")
            if status != 200 or not isinstance(body, dict) or body.get("errors"):
                raise EngineCallError(f"_bulk answered HTTP {status}")
        except EngineCallError as exc:
            self._warn("a write", exc)
            return
        self.writes += len(items)

    def stats(self) -> Dict[str, Any]:
        return {"backend": "engine", "index": self.index, "dtype": self.dtype, "hits": self.hits,
                "misses": self.misses, "writes": self.writes, "errors": self.errors}

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
        self._local = threading.local()
