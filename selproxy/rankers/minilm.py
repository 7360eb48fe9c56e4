"""The default neural ranker: all-MiniLM-L6-v2, a bi-encoder, on onnxruntime.

Query and documents are embedded separately (mean pooling, L2-normalised) and
scored by cosine similarity.  Because a document's embedding does not depend
on the query, it is cached under the key the proxy passes for it
(``(index, _id, sha1-of-text)``); a document seen before costs one dict
lookup, and a search whose whole window is cached costs one short forward pass
for the query.

The weights and tokenizer come from installed packages (see
:func:`selproxy.rankers._onnx.default_model_files`); nothing is downloaded.
Every method here blocks: the proxy runs ``rank`` and ``batch_rank`` in worker
threads, never on the event loop.
"""
from __future__ import annotations

import collections
import hashlib
import threading
from pathlib import Path
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._onnx import Encoder, default_model_files

__all__ = ("MiniLMRanker", "EmbeddingCache", "fuse_scores")


class EmbeddingCache:
    """A thread-safe LRU map from document key to embedding, bounded in entries."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: "collections.OrderedDict[Hashable, np.ndarray]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[Hashable]) -> List[Optional[np.ndarray]]:
        found: List[Optional[np.ndarray]] = []
        with self._lock:
            for key in keys:
                vector = self._entries.get(key)
                if vector is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                else:
                    self.misses += 1
                found.append(vector)
        return found

    def count_missing(self, keys: Sequence[Hashable]) -> int:
        """How many of ``keys`` are not cached, without touching the LRU order."""
        with self._lock:
            return sum(1 for key in keys if key not in self._entries)

    def put_many(self, items: Sequence[Tuple[Hashable, np.ndarray]]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            for key, vector in items:
                self._entries[key] = vector
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def fuse_scores(model: Sequence[float], engine: Sequence[float], weight: float) -> List[float]:
    """``weight * engine + (1 - weight) * model``, each min-max normalised over
    the window, so the engine's unbounded BM25 and the model's cosine mix on
    one scale."""
    if len(model) != len(engine):
        raise ValueError(f"{len(engine)} engine scores for {len(model)} documents")
    m = _minmax(np.asarray(model, dtype=np.float64))
    e = _minmax(np.asarray(engine, dtype=np.float64))
    return [float(x) for x in weight * e + (1.0 - weight) * m]


def _text_key(text: str) -> Tuple[str, bytes]:
    return ("text", hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest())


class MiniLMRanker:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings.

    ``model_path``/``tokenizer_path`` override the packaged files (any
    sentence-transformers bi-encoder exported to ONNX with mean pooling works).
    ``threads`` is onnxruntime's intra-op thread count (default: the usable
    cores, at most 4).  ``cache_size`` bounds the document-embedding cache in
    entries (1.5 kB each), ``query_cache_size`` that of query embeddings.
    ``fusion_weight`` > 0 mixes in the engine's score
    when the caller passes ``engine_scores``.
    """

    name = "minilm"
    #: resolve_ranker wraps it in a MicroBatcher: concurrent searches share calls.
    micro_batching = True

    def __init__(self, model_path: Union[str, Path, None] = None,
                 tokenizer_path: Union[str, Path, None] = None, *,
                 threads: Optional[int] = None, cache_size: int = 50_000,
                 query_cache_size: int = 1024, max_length: int = 256,
                 fusion_weight: float = 0.0, pooling: str = "mean", normalize: bool = True) -> None:
        if model_path is None or tokenizer_path is None:
            default_model, default_tokenizer = default_model_files()
            model_path = model_path or default_model
            tokenizer_path = tokenizer_path or default_tokenizer
        if not 0.0 <= fusion_weight <= 1.0:
            raise ValueError("fusion_weight must be within [0, 1]")
        self.encoder = Encoder(model_path, tokenizer_path, threads=threads, max_length=max_length,
                               pooling=pooling, normalize=normalize)
        #: What turns a text into a vector here (see _onnx.model_identity).
        self.model_identity: str = self.encoder.model_identity
        self.cache = EmbeddingCache(cache_size)
        # Popular queries repeat; their embeddings are as reusable as documents'.
        self.query_cache = EmbeddingCache(query_cache_size)
        self.fusion_weight = fusion_weight

    def warmup(self) -> None:
        """Run the model once, so the first search does not pay for allocation."""
        self.encoder.embed(["warm up", "a somewhat longer passage to warm up the model " * 8])

    def embed_documents(self, docs: Sequence[str],
                        keys: Optional[Sequence[Hashable]] = None) -> np.ndarray:
        """Document embeddings, from the cache where possible."""
        if keys is None:
            keys = [_text_key(d) for d in docs]
        elif len(keys) != len(docs):
            raise ValueError(f"{len(keys)} keys for {len(docs)} documents")
        found = self.cache.get_many(keys)
        # One forward pass per distinct missing text, even if it repeats.
        todo: Dict[Hashable, int] = {}
        for i, vector in enumerate(found):
            if vector is None and keys[i] not in todo:
                todo[keys[i]] = i
        if todo:
            fresh = self.encoder.embed([docs[i] for i in todo.values()])
            computed = dict(zip(todo, fresh))
            self.cache.put_many(list(computed.items()))
            found = [v if v is not None else computed[k] for k, v in zip(keys, found)]
        if not found:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(found)  # type: ignore[arg-type]

    def embed_queries(self, queries: Sequence[str]) -> Dict[str, np.ndarray]:
        """Query embeddings by text, each distinct text embedded at most once."""
        distinct = list(dict.fromkeys(queries))
        found = dict(zip(distinct, self.query_cache.get_many(distinct)))
        todo = [q for q, v in found.items() if v is None]
        if todo:
            fresh = list(zip(todo, self.encoder.embed(todo)))
            self.query_cache.put_many(fresh)
            found.update(fresh)
        return found  # type: ignore[return-value]

    def model_inputs(self, query: str, docs: Sequence[str],
                     keys: Optional[Sequence[Hashable]] = None) -> int:
        """Texts the model would have to embed for this search now: the query
        and the uncached documents.  :class:`MicroBatcher` sizes batches and
        estimates waits with it."""
        if keys is None or len(keys) != len(docs):
            keys = [_text_key(d) for d in docs]
        return self.query_cache.count_missing([query]) + self.cache.count_missing(keys)

    def rank(self, query: str, docs: Sequence[str], *,
             keys: Optional[Sequence[Hashable]] = None,
             engine_scores: Optional[Sequence[float]] = None) -> List[float]:
        """One cosine score per document (fused with ``engine_scores`` if
        ``fusion_weight`` is set)."""
        return self.batch_rank([(query, docs)], keys=[keys],
                               engine_scores=[engine_scores])[0]

    def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]], *,
                   keys: Optional[Sequence[Optional[Sequence[Hashable]]]] = None,
                   engine_scores: Optional[Sequence[Optional[Sequence[float]]]] = None,
                   ) -> List[List[float]]:
        """Scores for many searches, with all their queries and all their
        uncached documents embedded in shared model calls."""
        if not requests:
            return []
        all_docs: List[str] = []
        all_keys: List[Hashable] = []
        for n, (_query, docs) in enumerate(requests):
            request_keys = keys[n] if keys is not None else None
            if request_keys is not None and len(request_keys) != len(docs):
                raise ValueError(f"{len(request_keys)} keys for {len(docs)} documents")
            all_docs.extend(docs)
            all_keys.extend(request_keys if request_keys is not None
                            else [_text_key(d) for d in docs])
        query_vectors = self.embed_queries([q for q, d in requests if d])
        doc_vectors = self.embed_documents(all_docs, all_keys)
        results: List[List[float]] = []
        offset = 0
        for n, (query, docs) in enumerate(requests):
            if not docs:
                results.append([])
                continue
            scores = doc_vectors[offset:offset + len(docs)] @ query_vectors[query]
            offset += len(docs)
            engine = engine_scores[n] if engine_scores is not None else None
            if self.fusion_weight > 0.0 and engine is not None:
                results.append(fuse_scores(scores, engine, self.fusion_weight))
            else:
                results.append(scores.astype(np.float64).tolist())
        return results

    def stats(self) -> Dict[str, Any]:
        return {"cache_entries": len(self.cache), "cache_hits": self.cache.hits,
                "cache_misses": self.cache.misses, "query_cache_hits": self.query_cache.hits}
