"""The default neural ranker: all-MiniLM-L6-v2, a bi-encoder, on onnxruntime.

Query and documents are embedded separately (mean pooling, L2-normalised) and
scored by cosine similarity, optionally fused with the engine's score.

The cost model.  Embedding a passage costs the model tens of milliseconds of
CPU, fixed by its FLOPs; a query is short and costs a few.  A document's
embedding does not depend on the query, so it is computed once and kept:

* in memory, in an LRU bounded in entries (:class:`EmbeddingCache`);
* behind it, in a persistent store shared by every worker and restart
  (:mod:`selproxy.rankers.store`), filled ahead of time by ``selproxy embed``
  or by traffic.

A search with a deadline (``deadlines``, from the micro-batcher) never
computes past it.  It scores the longest prefix of the engine's window whose
documents are known, or can be embedded in the time left at the measured cost
per token, and returns scores for that prefix only (the proxy leaves the rest
in engine order).  The documents it had no time for go on a bounded background
queue, embedded by one thread while no search is computing, so a corpus that
is queried converges to fully cached.

The weights and tokenizer come from installed packages (see
:func:`selproxy.rankers._onnx.default_model_files`); nothing is downloaded.
Every method here blocks: the proxy runs them in worker threads, never on the
event loop.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Dict, Hashable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ._onnx import Encoder, default_model_files
from .._threads import DaemonThreadPool
from .base import Scores
from .store import DocKey, VectorStore, decode_vector, encode_vector, open_store

__all__ = ("MiniLMRanker", "EmbeddingCache", "fuse_scores", "estimate_tokens")

log = logging.getLogger("selproxy.rankers")


class EmbeddingCache:
    """A thread-safe LRU map from document key to embedding, bounded in entries."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: "collections.OrderedDict[Hashable, np.ndarray]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

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

    def contains(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

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
                self.evictions += 1

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


def _text_key(text: str) -> Tuple[str, str]:
    return ("text", hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest())


def _store_key(key: Hashable) -> DocKey:
    """The persistent store's ``(index, _id, text hash)`` for a ranker key:
    the proxy's keys are already that; a text key has no index or id."""
    if isinstance(key, tuple) and len(key) == 3:
        index, doc_id, text_hash = key
        return (str(index or ""), str(doc_id or ""), str(text_hash))
    if isinstance(key, tuple) and len(key) == 2 and key[0] == "text":
        return ("", "", str(key[1]))
    return ("", "", hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest())


def estimate_tokens(text: str, max_length: int) -> int:
    """Tokens the model will see for ``text``, estimated without tokenizing:
    WordPiece averages about four characters a token on English prose.  Only
    the budget uses it, and the cost per token is calibrated on the same
    estimate, so a steady bias cancels out."""
    return min(max_length, 2 + len(text) // 4)


class _Plan:
    """What one search of a batch needs: its keys, the vectors found, and the
    positions still missing, in window order."""

    __slots__ = ("query", "docs", "keys", "engine", "deadline", "reserve", "vectors", "missing")

    def __init__(self, query: str, docs: Sequence[str], keys: List[Hashable],
                 engine: Optional[Sequence[float]], deadline: Optional[float], now: float) -> None:
        self.query = query
        # Kept free before the deadline: scoring, fusion, the answer's encoding.
        self.reserve = (MiniLMRanker.DEADLINE_RESERVE + 0.05 * max(0.0, deadline - now)
                        if deadline is not None else 0.0)
        self.docs = docs
        self.keys = keys
        self.engine = engine
        self.deadline = deadline
        self.vectors: List[Optional[np.ndarray]] = []
        self.missing: List[int] = []


class MiniLMRanker:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings; see the module docstring.

    ``model_path``/``tokenizer_path`` override the packaged files (any
    sentence-transformers bi-encoder exported to ONNX with mean pooling works).
    ``threads`` is onnxruntime's intra-op thread count (default: the usable
    cores, at most 4).  ``max_length`` truncates each text, in tokens.
    ``cache_size`` bounds the in-memory document-embedding LRU in entries
    (1.5 kB each), ``query_cache_size`` that of query embeddings.
    ``fusion_weight`` mixes in the engine's min-max normalised score when the
    caller passes ``engine_scores`` (0 turns fusion off).
    ``embedding_store`` is the persistent store: a
    :class:`~selproxy.rankers.store.VectorStore`, a path, ``"default"`` (a
    file per model under the user's cache directory), ``"engine"`` (a sidecar
    index of the engine at ``store_upstream``, verified with ``store_ca_file``
    unless ``store_verify`` is false) or ``":memory:"`` (none);
    ``store_max_entries`` bounds it and ``store_dtype`` (``int8`` or
    ``float16``) is how vectors are kept.
    ``background_queue`` bounds the documents waiting to be embedded in the
    background (0: no background embedding).
    """

    name = "minilm"
    #: resolve_ranker wraps it in a MicroBatcher: concurrent searches share calls.
    micro_batching = True
    #: It may return scores for a prefix of the window only (a deadline).
    partial_results = True
    #: Seconds kept in reserve before a deadline, besides a twentieth of the budget:
    #: scoring, fusion and the answer's encoding.
    DEADLINE_RESERVE = 0.005
    #: A background batch is cut at about this many seconds of model time.  A
    #: search that arrives meanwhile stops it (onnxruntime's terminate flag)
    #: and takes the model at once; the batch's documents go back to the queue.
    BACKGROUND_SLICE = 0.06
    #: Documents a search with a deadline embeds per model call, call after
    #: call (then the last size again), choosing the next ones with the cost
    #: measured on the last.  A call still running at the deadline is stopped.
    FOREGROUND_CHUNKS = (2, 4)
    #: Queries waiting to be embedded ahead of their searches, at most.
    PREFETCH_QUEUE = 64
    #: Seconds per token assumed until a call has been measured (about three
    #: times what 2 cores of a current x86 server take).
    UNMEASURED_COST_PER_TOKEN = 0.001

    def __init__(self, model_path: Union[str, Path, None] = None,
                 tokenizer_path: Union[str, Path, None] = None, *,
                 threads: Optional[int] = None, cache_size: int = 50_000,
                 query_cache_size: int = 1024, max_length: int = 128,
                 fusion_weight: float = 0.3, pooling: str = "mean", normalize: bool = True,
                 embedding_store: Union[str, VectorStore, None] = "default",
                 store_max_entries: int = 1_000_000, store_dtype: str = "int8",
                 store_upstream: Optional[str] = None, store_ca_file: Optional[str] = None,
                 store_verify: bool = True, background_queue: int = 20_000) -> None:
        if model_path is None or tokenizer_path is None:
            default_model, default_tokenizer = default_model_files()
            model_path = model_path or default_model
            tokenizer_path = tokenizer_path or default_tokenizer
        if not 0.0 <= fusion_weight <= 1.0:
            raise ValueError("fusion_weight must be within [0, 1]")
        if max_length < 3:
            raise ValueError("max_length must be >= 3 tokens ([CLS], one token, [SEP])")
        self.encoder = Encoder(model_path, tokenizer_path, threads=threads, max_length=max_length,
                               pooling=pooling, normalize=normalize)
        self.max_length = max_length
        self.cache = EmbeddingCache(cache_size)
        # Popular queries repeat; their embeddings are as reusable as documents'.
        self.query_cache = EmbeddingCache(query_cache_size)
        self.fusion_weight = fusion_weight
        self.model_identity = self._identity()
        if isinstance(embedding_store, str) or embedding_store is None:
            self.store: Optional[VectorStore] = open_store(
                embedding_store, self.name, self.model_identity,
                max_entries=store_max_entries, dtype=store_dtype, upstream=store_upstream,
                ca_file=store_ca_file, verify=store_verify)
        else:
            self.store = embedding_store
        #: The cost of one call that embeds documents, fitted to the last calls:
        #: ``cost_per_call + cost_per_token * tokens`` seconds (estimated tokens).
        self.cost_per_token = 0.0
        self.cost_per_call = 0.0
        self._costs: "collections.deque[Tuple[int, float]]" = collections.deque(maxlen=64)
        self._preemptible: Any = None  # the background call's RunOptions while it runs
        self._prefetching: Set[str] = set()
        self._prefetcher: Optional[DaemonThreadPool] = None
        # The model runs one call at a time; a search holds it for its whole
        # embedding step, the background between slices only.
        self._model_lock = threading.Lock()
        self._foreground = 0
        self._state = threading.Condition()
        self._backlog: "collections.OrderedDict[Hashable, str]" = collections.OrderedDict()
        self._backlog_max = background_queue
        self._background: Optional[threading.Thread] = None
        self._closed = False
        self.counters: Dict[str, int] = {"encoded_foreground": 0, "encoded_background": 0,
                                         "queued_background": 0, "dropped_background": 0,
                                         "preempted_background": 0, "stopped_at_deadline": 0,
                                         "prefetched_queries": 0}

    def _identity(self) -> str:
        identity = getattr(self.encoder, "model_identity", None)
        if isinstance(identity, str) and identity:
            return identity
        path = Path(self.encoder.model_path)
        stat = path.stat()
        return f"{self.name}:{path.name}:{stat.st_size}:{int(stat.st_mtime)}:len{self.max_length}"

    # -- model calls --------------------------------------------------------

    def warmup(self) -> None:
        """Run the model once, so the first search neither pays for allocation
        nor lacks a cost estimate."""
        passage = "a somewhat longer passage, of about the length of an abstract, to warm up the model " * 8
        # Under the model's lock: a search that arrives meanwhile waits, and
        # its budget counts the wait.
        with self._model_lock:
            self.encoder.embed(["warm up", passage])
            self._embed([passage] * 4)

    def _embed(self, texts: Sequence[str], *, documents: bool = True,
               run_options: Any = None) -> np.ndarray:
        """Embed ``texts``; a call that embeds documents updates the cost model."""
        started = time.perf_counter()
        if run_options is None:
            vectors = self.encoder.embed(list(texts))
        else:
            vectors = self.encoder.embed(list(texts), run_options)
        if documents:
            tokens = sum(estimate_tokens(t, self.max_length) for t in texts)
            self._record_cost(tokens, time.perf_counter() - started)
        return vectors

    def _record_cost(self, tokens: int, seconds: float) -> None:
        """Refit ``cost_per_call + cost_per_token * tokens`` to the recent
        calls (least squares; one call's overhead, then tokens).  A batch of
        two costs less than twice one, so a per-token rate alone would
        overestimate the larger batches a search makes."""
        self._costs.append((tokens, seconds))
        x = np.array([c[0] for c in self._costs], dtype=np.float64)
        y = np.array([c[1] for c in self._costs], dtype=np.float64)
        if len(x) >= 3 and float(x.max() - x.min()) >= 64:
            slope, intercept = np.polyfit(x, y, 1)
            if slope > 0:
                self.cost_per_token = float(slope)
                self.cost_per_call = float(max(0.0, intercept))
                return
        self.cost_per_token = float(y.sum() / max(1.0, x.sum()))
        self.cost_per_call = 0.0

    def close(self) -> None:
        """Stop the background thread (after its current slice) and close the store."""
        with self._state:
            self._closed = True
            self._backlog.clear()
            if self._preemptible is not None:
                self._preemptible.terminate = True
            self._state.notify_all()
        thread = self._background
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1)  # a daemon: a stuck model call cannot hold the exit
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=False, cancel_futures=True)
        if self.store is not None:
            self.store.close()

    # -- lookups ------------------------------------------------------------

    def _lookup(self, keys: Sequence[Hashable]) -> List[Optional[np.ndarray]]:
        """Vectors from the LRU, then the store for what the LRU lacks."""
        found = self.cache.get_many(keys)
        if self.store is not None:
            absent = [n for n, v in enumerate(found) if v is None]
            if absent:
                stored = self.store.get_many([_store_key(keys[n]) for n in absent])
                fresh = []
                for n, vector in zip(absent, stored):
                    if vector is not None:
                        found[n] = vector
                        fresh.append((keys[n], vector))
                self.cache.put_many(fresh)
        return found

    def _remember(self, items: Sequence[Tuple[Hashable, np.ndarray]]) -> Dict[Hashable, np.ndarray]:
        """Keep fresh vectors in the LRU and the store; returns them as the
        store gives them back (int8 or fp16), so that a document scores the
        same whether it was embedded now, read from the store, or embedded
        ahead of time by ``selproxy embed``."""
        dtype = getattr(self.store, "dtype", None)
        if dtype is not None:
            items = [(k, decode_vector(*encode_vector(v, dtype), dtype)) for k, v in items]
        self.cache.put_many(items)
        if self.store is not None and items:
            try:
                self.store.put_many([(_store_key(k), v) for k, v in items])
            except Exception as exc:  # a full disk must not fail searches
                log.warning("embedding store write failed: %s", type(exc).__name__)
        return dict(items)

    def embed_documents(self, docs: Sequence[str],
                        keys: Optional[Sequence[Hashable]] = None) -> np.ndarray:
        """Document embeddings, from the caches where possible; every missing
        one is embedded now (no deadline)."""
        if keys is None:
            keys = [_text_key(d) for d in docs]
        elif len(keys) != len(docs):
            raise ValueError(f"{len(keys)} keys for {len(docs)} documents")
        found = self._lookup(keys)
        self._fill(found, keys, docs, [n for n, v in enumerate(found) if v is None])
        if not found:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(found)  # type: ignore[arg-type]

    def _fill(self, found: List[Optional[np.ndarray]], keys: Sequence[Hashable],
              docs: Sequence[str], positions: Sequence[int], run_options: Any = None) -> int:
        """Embed the documents at ``positions`` (one model input per distinct
        key) and put them into ``found``; returns how many were embedded."""
        todo: Dict[Hashable, str] = {}
        for n in positions:
            if found[n] is None:
                todo.setdefault(keys[n], docs[n])
        if not todo:
            return 0
        computed = self._embed_keyed(todo, run_options)
        for n in positions:
            if found[n] is None:
                found[n] = computed[keys[n]]
        return len(todo)

    def _embed_keyed(self, todo: Dict[Hashable, str], run_options: Any = None) -> Dict[Hashable, np.ndarray]:
        """One model call for ``{key: text}``; the vectors, kept (as the
        store gives them back) by key."""
        return self._remember(list(zip(todo, self._embed(list(todo.values()), run_options=run_options))))

    def embed_queries(self, queries: Sequence[str]) -> Dict[str, np.ndarray]:
        """Query embeddings by text, each distinct text embedded at most once."""
        distinct = list(dict.fromkeys(queries))
        found = dict(zip(distinct, self.query_cache.get_many(distinct)))
        todo = [q for q, v in found.items() if v is None]
        if todo:
            fresh = list(zip(todo, self._embed(todo, documents=False)))
            self.query_cache.put_many(fresh)
            found.update(fresh)
        return found  # type: ignore[return-value]

    def prefetch_query(self, query: str) -> None:
        """Embed ``query`` in the background now, so that the search it
        belongs to finds it cached (the proxy calls this as it sends the
        search to the engine).  Never blocks; at most
        :attr:`PREFETCH_QUEUE` queries wait, more are dropped (the search
        then embeds its query itself)."""
        if self._closed or self.query_cache.contains(query):
            return
        with self._state:
            if query in self._prefetching or len(self._prefetching) >= self.PREFETCH_QUEUE:
                return
            self._prefetching.add(query)
        if self._prefetcher is None:
            self._prefetcher = DaemonThreadPool(1, thread_name_prefix="selproxy-query-prefetch")
        self._prefetcher.submit(self._prefetch_now, query)

    def _prefetch_now(self, query: str) -> None:
        try:
            with self._state:
                self._foreground += 1  # a search's work: the background yields
                if self._preemptible is not None:
                    self._preemptible.terminate = True
            try:
                with self._model_lock:
                    self.embed_queries([query])
            finally:
                with self._state:
                    self._foreground -= 1
                    self._state.notify_all()
            self.counters["prefetched_queries"] += 1
        finally:
            with self._state:
                self._prefetching.discard(query)

    def model_inputs(self, query: str, docs: Sequence[str],
                     keys: Optional[Sequence[Hashable]] = None) -> int:
        """Texts the model would have to embed for this search now, by the
        in-memory caches alone (it runs on the event loop, so it never reads
        the store): :class:`MicroBatcher` sizes batches with it."""
        if keys is None or len(keys) != len(docs):
            keys = [_text_key(d) for d in docs]
        return self.query_cache.count_missing([query]) + self.cache.count_missing(keys)

    # -- ranking ------------------------------------------------------------

    def rank(self, query: str, docs: Sequence[str], *,
             keys: Optional[Sequence[Hashable]] = None,
             engine_scores: Optional[Sequence[float]] = None) -> List[float]:
        """One score per document (fused with ``engine_scores`` if
        ``fusion_weight`` is set); no deadline, so every document is scored."""
        return self.batch_rank([(query, docs)], keys=[keys],
                               engine_scores=[engine_scores])[0]

    def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]], *,
                   keys: Optional[Sequence[Optional[Sequence[Hashable]]]] = None,
                   engine_scores: Optional[Sequence[Optional[Sequence[float]]]] = None,
                   deadlines: Optional[Sequence[Optional[float]]] = None,
                   ) -> List[List[float]]:
        """Scores for many searches, their queries and missing documents
        embedded in shared model calls.

        ``deadlines`` holds one ``time.perf_counter()`` instant per search (or
        None: no deadline).  A search with one gets :class:`Scores` for the
        longest prefix of its window that could be scored by then."""
        if not requests:
            return []
        started = time.perf_counter()
        plans: List[_Plan] = []
        for n, (query, docs) in enumerate(requests):
            request_keys = keys[n] if keys is not None else None
            if request_keys is not None and len(request_keys) != len(docs):
                raise ValueError(f"{len(request_keys)} keys for {len(docs)} documents")
            engine = engine_scores[n] if engine_scores is not None else None
            if engine is not None and len(engine) != len(docs):
                raise ValueError(f"{len(engine)} engine scores for {len(docs)} documents")
            plans.append(_Plan(query, docs, list(request_keys) if request_keys is not None
                               else [_text_key(d) for d in docs], engine,
                               deadlines[n] if deadlines is not None else None, started))
        with self._state:
            self._foreground += 1
            if self._preemptible is not None:
                self._preemptible.terminate = True  # the background yields the model
        try:
            with self._model_lock:
                waited = time.perf_counter() - started
                return self._rank_plans(plans, started, waited)
        finally:
            with self._state:
                self._foreground -= 1
                self._state.notify_all()

    def _rank_plans(self, plans: List[_Plan], started: float, waited: float) -> List[List[float]]:
        all_keys = [k for p in plans for k in p.keys]
        found = self._lookup(all_keys)
        offset = 0
        for plan in plans:
            plan.vectors = found[offset:offset + len(plan.keys)]
            offset += len(plan.keys)
            plan.missing = [i for i, v in enumerate(plan.vectors) if v is None]
        lookup_done = time.perf_counter()
        query_vectors = self.embed_queries([p.query for p in plans if p.docs])
        encoded = 0
        # Embed in small chunks, choosing again after each with the cost just
        # measured: the budget follows the machine's load as it is now.  The
        # first chunk is the smallest: the window's top counts most.
        deadlines = [p.deadline - p.reserve / 2 for p in plans if p.deadline is not None]
        cutoff = min(deadlines) if deadlines else None
        sizes = iter(self.FOREGROUND_CHUNKS)
        size = next(sizes)
        while True:
            chosen = self._choose(plans, time.perf_counter())
            if not chosen:
                break
            if cutoff is None:
                encoded += self._embed_chosen(plans, chosen)
            else:
                done = self._embed_before(plans, chosen[:size], cutoff)
                if done is None:
                    break  # the estimate was wrong, and the deadline came first
                encoded += done
                size = next(sizes, size)
            for plan in plans:
                plan.missing = [i for i in plan.missing if plan.vectors[i] is None]
        self.counters["encoded_foreground"] += encoded
        encode_done = time.perf_counter()
        results: List[List[float]] = []
        for n, plan in enumerate(plans):
            if not plan.docs:
                results.append(Scores())
                continue
            prefix = next((i for i, v in enumerate(plan.vectors) if v is None), len(plan.docs))
            if prefix < len(plan.docs):
                self._defer(plan, prefix)
            results.append(self._score(plan, prefix, query_vectors[plan.query]))
        finished = time.perf_counter()
        for scores in results:
            assert isinstance(scores, Scores)
            scores.timing.update(wait=waited, lookup=lookup_done - started - waited,
                                 encode=encode_done - lookup_done, score=finished - encode_done)
            scores.encoded = encoded
        return results

    def _embed_before(self, plans: Sequence[_Plan], chosen: Sequence[Tuple[int, int]],
                      cutoff: float) -> Optional[int]:
        """:meth:`_embed_chosen`, stopped at ``cutoff`` (a ``perf_counter``
        instant) if it runs that long: onnxruntime's terminate flag, set by a
        timer.  None when it was stopped (its documents stay missing)."""
        from onnxruntime import RunOptions

        left = cutoff - time.perf_counter()
        if left <= 0:
            return None
        options = RunOptions()
        timer = threading.Timer(left, setattr, (options, "terminate", True))
        timer.daemon = True
        timer.start()
        try:
            return self._embed_chosen(plans, chosen, options)
        except Exception:
            if options.terminate:
                self.counters["stopped_at_deadline"] += 1
                return None
            raise
        finally:
            timer.cancel()

    def _embed_chosen(self, plans: Sequence[_Plan], chosen: Sequence[Tuple[int, int]],
                      run_options: Any = None) -> int:
        """One model call for the chosen ``(search, position)`` documents, each
        distinct key once; returns how many texts were embedded."""
        todo: Dict[Hashable, str] = {}
        for n, i in chosen:
            todo.setdefault(plans[n].keys[i], plans[n].docs[i])
        fresh = self._embed_keyed(todo, run_options)
        for plan in plans:
            for i in plan.missing:
                vector = fresh.get(plan.keys[i])
                if vector is not None:
                    plan.vectors[i] = vector
        return len(todo)

    def _choose(self, plans: Sequence[_Plan], now: float) -> List[Tuple[int, int]]:
        """Which missing documents to embed now, as ``(search, position)``:
        for a search without a deadline, all; with one, round by round
        through the windows (every search's first missing document, then every
        second...), as long as the estimated model time still ends before that
        search's deadline less its reserve."""
        chosen: List[Tuple[int, int]] = []
        # One call embeds everything chosen: its overhead is paid once.
        estimate = self.cost_per_call
        # Before any measurement, a cautious guess: the first call calibrates.
        cost = self.cost_per_token or self.UNMEASURED_COST_PER_TOKEN
        depth = max((len(p.missing) for p in plans), default=0)
        stopped = [False] * len(plans)
        for position in range(depth):
            for n, plan in enumerate(plans):
                if stopped[n] or position >= len(plan.missing):
                    continue
                i = plan.missing[position]
                if plan.deadline is not None:
                    step = estimate_tokens(plan.docs[i], self.max_length) * cost
                    if now + estimate + step > plan.deadline - plan.reserve:
                        # A prefix: nothing after this document is scored.
                        stopped[n] = True
                        continue
                    estimate += step
                chosen.append((n, i))
        return chosen

    def _score(self, plan: _Plan, prefix: int, query_vector: np.ndarray) -> "Scores":
        if prefix == 0:
            return Scores()
        vectors = np.stack(plan.vectors[:prefix])  # type: ignore[arg-type]
        scores = vectors @ query_vector
        out = Scores()
        if self.fusion_weight > 0.0 and plan.engine is not None:
            out.extend(fuse_scores(scores, plan.engine[:prefix], self.fusion_weight))
            out.fusion = "on"
        else:
            out.extend(scores.astype(np.float64).tolist())
            out.fusion = "off" if self.fusion_weight > 0.0 else ""
        return out

    # -- background embedding ------------------------------------------------

    def _defer(self, plan: _Plan, prefix: int) -> None:
        """Queue the window's missing documents past the prefix, once each."""
        if self._backlog_max <= 0:
            return
        with self._state:
            if self._closed:
                return
            for i in range(prefix, len(plan.docs)):
                key = plan.keys[i]
                if plan.vectors[i] is not None or key in self._backlog:
                    continue
                if len(self._backlog) >= self._backlog_max:
                    self.counters["dropped_background"] += 1
                    continue
                self._backlog[key] = plan.docs[i]
                self.counters["queued_background"] += 1
            if self._background is None and self._backlog:
                self._background = threading.Thread(target=self._background_loop, daemon=True,
                                                    name="selproxy-embed-background")
                self._background.start()
            self._state.notify_all()

    def _take_slice(self) -> List[Tuple[Hashable, str]]:
        """Up to :attr:`BACKGROUND_SLICE` of model time from the backlog, once
        no search is computing; empty when closed."""
        with self._state:
            while not self._closed and (not self._backlog or self._foreground):
                self._state.wait()
            if self._closed:
                return []
            budget = self.BACKGROUND_SLICE
            cost = self.cost_per_token or self.UNMEASURED_COST_PER_TOKEN
            taken: List[Tuple[Hashable, str]] = []
            spent = 0.0
            while self._backlog:
                key, text = next(iter(self._backlog.items()))
                step = estimate_tokens(text, self.max_length) * cost
                if taken and spent + step > budget:
                    break
                del self._backlog[key]
                if self.cache.contains(key):
                    continue  # a search embedded it meanwhile
                taken.append((key, text))
                spent += step
            return taken

    def _background_loop(self) -> None:
        from onnxruntime import RunOptions

        while True:
            taken = self._take_slice()
            if not taken:
                with self._state:
                    if self._closed:
                        return
                continue
            keys = [k for k, _ in taken]
            options = RunOptions()
            with self._model_lock:
                with self._state:
                    if self._foreground:  # a search got here first: it goes first
                        self._requeue(taken)
                        continue
                    self._preemptible = options
                try:
                    found = self._lookup(keys)
                    missing = [n for n, v in enumerate(found) if v is None]
                    self.counters["encoded_background"] += self._fill(
                        found, keys, [t for _, t in taken], missing, run_options=options)
                except Exception as exc:  # the next slice tries again; searches never see it
                    if options.terminate:
                        self.counters["preempted_background"] += 1
                        self._requeue(taken)
                    else:
                        log.warning("background embedding failed: %s", type(exc).__name__)
                finally:
                    with self._state:
                        self._preemptible = None

    def _requeue(self, taken: Sequence[Tuple[Hashable, str]]) -> None:
        """Put a slice back at the head of the backlog, in its order."""
        with self._state:
            for key, text in reversed(taken):
                self._backlog[key] = text
                self._backlog.move_to_end(key, last=False)

    def backlog(self) -> int:
        """Documents waiting to be embedded in the background."""
        with self._state:
            return len(self._backlog)

    def stats(self) -> Dict[str, Any]:
        stats: Dict[str, Any] = {
            "model": self.name, "max_length": self.max_length, "fusion_weight": self.fusion_weight,
            "cache_entries": len(self.cache), "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses, "cache_evictions": self.cache.evictions,
            "query_cache_hits": self.query_cache.hits,
            "cost_per_token_ms": round(self.cost_per_token * 1e3, 4),
            "cost_per_call_ms": round(self.cost_per_call * 1e3, 3),
            "background_backlog": self.backlog(),
        }
        stats.update(self.counters)
        if self.store is not None:
            stats["store"] = self.store.stats()
        return stats
