"""One line to rank with the model objects Python users already have.

``selproxy.rankers.wrap(obj)`` looks at ``obj`` and returns a selproxy ranker
(``rank(query, docs)``, see :mod:`selproxy.rankers.base`) around it:

=====================================================  ==========================================
``obj``                                                how it is asked
=====================================================  ==========================================
sentence-transformers ``CrossEncoder``                 ``predict([(query, doc), ...])``, one
                                                       score per pair (the last label's, for a
                                                       multi-label head)
sentence-transformers ``SentenceTransformer``          the cosine of ``encode_query(query)`` and
                                                       ``encode_document(docs)`` (``encode`` where
                                                       those are missing); document vectors are
                                                       kept by the proxy's per-document keys
``rerankers`` models (``Reranker(...)``, any           ``rank(query, docs, doc_ids=[0..n-1])``;
``BaseRanker``)                                        results mapped back by ``doc_id``
FlashRank ``Ranker``                                   ``rerank(RerankRequest(query, passages))``
                                                       with ``passages[i]["id"] = i``
LangChain ``BaseDocumentCompressor`` (Cohere,          ``compress_documents(documents, query)``
FlashRank, cross-encoder rerankers...)                 with the index in each document's
                                                       metadata and ``id``
LlamaIndex ``BaseNodePostprocessor``                   ``postprocess_nodes(nodes, query_str=)``
(``SentenceTransformerRerank``, ``LLMRerank``...)      with the engine's score as each node's
                                                       starting score, mapped back by ``node_id``
=====================================================  ==========================================

Detection is by the class's lineage (class names and the modules they come
from), then by the method names that only one of these libraries uses
(``compress_documents``, ``postprocess_nodes``); ``kind=`` names it when an
object looks like none of them.  Nothing here imports a library until an
object of it is wrapped, and then only the library the object itself came
from (a FlashRank ``RerankRequest``, a LangChain ``Document``...).

Libraries that return a reordered list rather than a score per input are
mapped back by the id selproxy gave each document.  Where the list carries
no scores (listwise, rank-only models: RankGPT, an LLM reranker, FlashRank's
listwise models, a compressor that only reorders) the order is the score: the
first document scores ``n``, the next ``n - 1``, and so on.  A document the
library leaves out (a ``top_n`` cut, a relevance filter) scores below every
one it kept; an id selproxy did not send, or one that comes back twice, is a
failure, and the search falls back to the engine's order.

Every wrapper's ``rank`` is a plain ``def``: the proxy runs it in its ranker
threads (:class:`~selproxy.rankers.adapter.RankerAdapter`), never on the event
loop.  The sentence-transformers wrappers also have ``batch_rank`` and ask to
be micro-batched, as the built-in local models do, when they are built by
name (``--ranker sentence-transformers --model-dir DIR``, see
:mod:`selproxy.rankers.sbert`); to batch a wrapped object from code, pass
``selproxy.rankers.batching.MicroBatcher(wrap(model))``.
"""
from __future__ import annotations

import collections
import functools
import importlib
import inspect
import math
import sys
import threading
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

from .base import batch_rank_pairs

__all__ = ("wrap", "KINDS", "CrossEncoderWrapper", "BiEncoderWrapper", "RerankersWrapper",
           "FlashRankWrapper", "LangChainWrapper", "LlamaIndexWrapper", "scores_from_order")

#: The metadata key that carries a document's position in the window
#: through a LangChain compressor.
INDEX_KEY = "selproxy_index"


def scores_from_order(count: int, returned: Iterable[Tuple[Any, Any]]) -> List[float]:
    """One score per document from what a library returned: ``(index,
    score)`` pairs, best first, where ``score`` may be None.

    All scores given and finite: those, and a document left out scores one
    below the lowest.  Any score missing: the order alone, ``count`` for the
    first down to ``count - len + 1``, and 0 for one left out.  An index
    that is not one of ``0..count-1``, or comes twice, is a
    :class:`ValueError`."""
    order: List[int] = []
    given: List[Optional[float]] = []
    seen = set()
    for raw_index, raw_score in returned:
        try:
            index = int(raw_index)
        except (TypeError, ValueError):
            raise ValueError(f"the ranker returned an id selproxy did not send: {raw_index!r}") from None
        if not 0 <= index < count or str(index) != str(raw_index).strip():
            raise ValueError(f"the ranker returned an id selproxy did not send: {raw_index!r}")
        if index in seen:
            raise ValueError(f"the ranker returned document {index} twice")
        seen.add(index)
        order.append(index)
        score = None if raw_score is None else float(raw_score)
        given.append(score if score is not None and math.isfinite(score) else None)
    scored = [s for s in given if s is not None]
    if order and len(scored) == len(order):
        floor = min(scored) - 1.0
        scores = [floor] * count
        for index, score in zip(order, scored):
            scores[index] = score
        return scores
    scores = [0.0] * count
    for position, index in enumerate(order):
        scores[index] = float(count - position)
    return scores


def _lineage(obj: Any) -> List[Tuple[str, str]]:
    """``(top-level module, class name)`` of each class ``obj`` is an instance of."""
    return [(str(getattr(c, "__module__", "")).partition(".")[0], c.__name__)
            for c in type(obj).__mro__]


def _descends(obj: Any, package: str, *names: str) -> bool:
    return any(module == package and name in names for module, name in _lineage(obj))


def _has(obj: Any, method: str) -> bool:
    return callable(getattr(obj, method, None))


def _with_supported(method: Callable[..., Any], **wanted: Any) -> Callable[..., Any]:
    """``method`` with those of ``wanted`` keywords it takes (all of them if
    it takes ``**kwargs``): the libraries' own methods take them all, an
    object named with ``kind=`` may take none."""
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return method
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        taken = wanted
    else:
        taken = {name: value for name, value in wanted.items() if name in parameters}
    return functools.partial(method, **taken) if taken else method


class _Wrapper:
    """What every wrapper has: the object it wraps, and a name for the
    status page and logs."""

    kind = ""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.name = f"{self.kind}:{type(wrapped).__name__}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.wrapped).__name__})"


class CrossEncoderWrapper(_Wrapper):
    """A sentence-transformers ``CrossEncoder`` (or any object whose
    ``predict`` takes ``[(query, doc), ...]`` and returns one score per
    pair, or one row of label scores per pair)."""

    kind = "cross-encoder"
    micro_batching = True

    def __init__(self, model: Any, *, batch_size: int = 32) -> None:
        super().__init__(model)
        self.batch_size = batch_size
        self._predict_pairs = _with_supported(model.predict, batch_size=batch_size, show_progress_bar=False)

    def warmup(self) -> None:
        self.batch_rank([("warm up", ["a passage to warm the model up"])])

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        return self.batch_rank([(query, docs)])[0]

    def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]]) -> List[List[float]]:
        """Every search's pairs go through ``predict`` in one call."""
        return batch_rank_pairs(requests, self._predict)

    def _predict(self, pairs: List[Tuple[str, str]]) -> List[float]:
        import numpy as np

        raw = self._predict_pairs(pairs)
        scores = np.asarray(raw, dtype=np.float64)
        if scores.ndim == 2:
            scores = scores[:, -1]  # a two-label head: the last label is "relevant"
        if scores.shape != (len(pairs),):
            raise ValueError(f"predict gave scores of shape {scores.shape} for {len(pairs)} pairs")
        return [float(s) for s in scores]


class _VectorCache:
    """A thread-safe LRU of document vectors by the proxy's document keys."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: "collections.OrderedDict[Hashable, Any]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any:
        with self._lock:
            vector = self._entries.get(key)
            if vector is None:
                self.misses += 1
            else:
                self._entries.move_to_end(key)
                self.hits += 1
            return vector

    def put(self, key: Hashable, vector: Any) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = vector
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class BiEncoderWrapper(_Wrapper):
    """A sentence-transformers ``SentenceTransformer`` (or any object with
    ``encode(texts)`` returning one vector per text): the cosine of query
    and document vectors.  With the proxy's per-document ``keys``, document
    vectors are kept (``cache_size`` of them) and a repeated document is
    not encoded again."""

    kind = "bi-encoder"
    micro_batching = True

    def __init__(self, model: Any, *, batch_size: int = 32, cache_size: int = 10000) -> None:
        super().__init__(model)
        self.batch_size = batch_size
        self.cache = _VectorCache(cache_size)
        options = dict(batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
        self._encode_query = _with_supported(getattr(model, "encode_query", None) or model.encode, **options)
        self._encode_document = _with_supported(getattr(model, "encode_document", None) or model.encode,
                                                **options)

    def warmup(self) -> None:
        self.batch_rank([("warm up", ["a passage to warm the model up"])])

    def rank(self, query: str, docs: Sequence[str], *,
             keys: Optional[Sequence[Hashable]] = None) -> List[float]:
        return self.batch_rank([(query, docs)], keys=[keys])[0]

    def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]], *,
                   keys: Optional[Sequence[Optional[Sequence[Hashable]]]] = None) -> List[List[float]]:
        """The queries in one call, the documents not kept in another."""
        import numpy as np

        if not requests:
            return []
        queries = self._unit(self._encode_query, [query for query, _docs in requests])
        per_search = list(keys) if keys is not None else [None] * len(requests)
        vectors: List[List[Any]] = []
        missing: List[Tuple[int, int, Optional[Hashable], str]] = []
        for number, ((_query, docs), doc_keys) in enumerate(zip(requests, per_search)):
            row: List[Any] = []
            for position, doc in enumerate(docs):
                key = doc_keys[position] if doc_keys is not None else None
                vector = self.cache.get(key) if key is not None else None
                if vector is None:
                    missing.append((number, position, key, doc))
                row.append(vector)
            vectors.append(row)
        if missing:
            encoded = self._unit(self._encode_document, [doc for *_, doc in missing])
            for (number, position, key, _doc), vector in zip(missing, encoded):
                vectors[number][position] = vector
                if key is not None:
                    self.cache.put(key, vector)
        results: List[List[float]] = []
        for query_vector, row in zip(queries, vectors):
            if not row:
                results.append([])
                continue
            results.append([float(s) for s in np.stack(row) @ query_vector])
        return results

    def _unit(self, encode: Callable[..., Any], texts: List[str]) -> Any:
        """Unit-length float64 rows, so a dot product is the cosine."""
        import numpy as np

        raw = encode(texts)
        matrix = np.asarray(raw, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != len(texts):
            raise ValueError(f"encode gave vectors of shape {matrix.shape} for {len(texts)} texts")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.where(norms > 0, norms, 1.0)


class RerankersWrapper(_Wrapper):
    """A model of the ``rerankers`` library (what ``Reranker(...)`` returns):
    ``rank(query, docs, doc_ids)`` gives ``RankedResults``, best first, whose
    ``document.doc_id`` is the position selproxy sent; rank-only models
    (``has_scores`` false, ``score`` None) score by their order."""

    kind = "rerankers"

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        if not docs:
            return []
        ranked = self.wrapped.rank(query, list(docs), doc_ids=list(range(len(docs))))
        results = getattr(ranked, "results", ranked)
        if getattr(ranked, "has_scores", True) is False:
            returned = [(result.document.doc_id, None) for result in results]
        else:
            returned = [(result.document.doc_id, result.score) for result in results]
        if returned and all(score is None for _, score in returned):
            # A rank-only model: its order is all there is; use its own ranks.
            ordered = sorted(results, key=lambda r: (r.rank is None, r.rank if r.rank is not None else 0))
            returned = [(result.document.doc_id, None) for result in ordered]
        return scores_from_order(len(docs), returned)


class FlashRankWrapper(_Wrapper):
    """A FlashRank ``Ranker``: ``rerank(RerankRequest(query, passages))``
    returns the passages, best first, each with the ``id`` selproxy gave it
    and, for the pairwise models, a ``score`` (listwise models give none)."""

    kind = "flashrank"

    def __init__(self, ranker: Any) -> None:
        super().__init__(ranker)
        # RerankRequest lives beside Ranker; the library is imported already.
        module = sys.modules.get(type(ranker).__module__)
        request = getattr(module, "RerankRequest", None)
        if request is None:
            request = importlib.import_module("flashrank").RerankRequest
        self._request = request

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        if not docs:
            return []
        passages = [{"id": index, "text": doc} for index, doc in enumerate(docs)]
        results = self.wrapped.rerank(self._request(query=query, passages=passages))
        return scores_from_order(len(docs), [(item["id"], item.get("score")) for item in results])


class LangChainWrapper(_Wrapper):
    """A LangChain ``BaseDocumentCompressor``: ``compress_documents(documents,
    query)`` returns some of the documents, best first; rerankers put the
    score in ``metadata["relevance_score"]``.  Each document carries its
    position as ``metadata["selproxy_index"]`` and as its ``id``, and is
    mapped back by either."""

    kind = "langchain"

    def __init__(self, compressor: Any) -> None:
        super().__init__(compressor)
        self._document = importlib.import_module("langchain_core.documents").Document

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        if not docs:
            return []
        documents = [self._document(page_content=doc, metadata={INDEX_KEY: index}, id=str(index))
                     for index, doc in enumerate(docs)]
        kept = self.wrapped.compress_documents(documents, query)
        returned = []
        for document in kept:
            metadata = getattr(document, "metadata", None) or {}
            index = metadata.get(INDEX_KEY, getattr(document, "id", None))
            returned.append((index, metadata.get("relevance_score")))
        return scores_from_order(len(docs), returned)


class LlamaIndexWrapper(_Wrapper):
    """A LlamaIndex node postprocessor: ``postprocess_nodes(nodes,
    query_str=query)`` returns some of the nodes, best first, with their new
    ``score``.  Each node starts with the engine's score (when the proxy has
    it: a postprocessor that filters by score reads it) and an id that says
    its position."""

    kind = "llamaindex"

    def __init__(self, postprocessor: Any) -> None:
        super().__init__(postprocessor)
        schema = importlib.import_module("llama_index.core.schema")
        self._node_with_score = schema.NodeWithScore
        self._text_node = schema.TextNode

    def rank(self, query: str, docs: Sequence[str], *,
             engine_scores: Optional[Sequence[Optional[float]]] = None) -> List[float]:
        if not docs:
            return []
        starts = list(engine_scores) if engine_scores is not None else [None] * len(docs)
        nodes = [self._node_with_score(node=self._text_node(text=doc, id_=f"selproxy-{index}"), score=start)
                 for index, (doc, start) in enumerate(zip(docs, starts))]
        kept = self.wrapped.postprocess_nodes(nodes, query_str=query)
        returned = []
        for item in kept:
            node_id = str(item.node.node_id)
            prefix, _, index = node_id.partition("-")
            returned.append((index if prefix == "selproxy" else node_id, item.score))
        return scores_from_order(len(docs), returned)


#: ``kind=`` values, for objects that detection does not recognise.
KINDS: Dict[str, Callable[[Any], Any]] = {
    "cross-encoder": CrossEncoderWrapper,
    "bi-encoder": BiEncoderWrapper,
    "rerankers": RerankersWrapper,
    "flashrank": FlashRankWrapper,
    "langchain": LangChainWrapper,
    "llamaindex": LlamaIndexWrapper,
}


def _detect(obj: Any) -> Optional[str]:
    if _descends(obj, "sentence_transformers", "CrossEncoder"):
        return "cross-encoder"
    if _descends(obj, "sentence_transformers", "SentenceTransformer"):
        return "bi-encoder"
    if _descends(obj, "rerankers", "BaseRanker"):
        return "rerankers"
    if _descends(obj, "flashrank", "Ranker") and _has(obj, "rerank"):
        return "flashrank"
    if _descends(obj, "langchain_core", "BaseDocumentCompressor") or _has(obj, "compress_documents"):
        return "langchain"
    if _descends(obj, "llama_index", "BaseNodePostprocessor") or _has(obj, "postprocess_nodes"):
        return "llamaindex"
    return None


def wrap(obj: Any, *, kind: Optional[str] = None, **options: Any) -> Any:
    """A selproxy ranker around ``obj``; see the module docstring.

    ``kind`` (one of :data:`KINDS`) skips detection; ``options`` go to the
    wrapper (``batch_size`` and, for a bi-encoder, ``cache_size``).  An
    object that already has selproxy's ``rank(query, docs)`` comes back as
    it is.  Anything else is a :class:`TypeError` that lists what can be
    wrapped."""
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
        return KINDS[kind](obj, **options)
    if isinstance(obj, _Wrapper):
        return obj
    detected = _detect(obj)
    if detected is not None:
        return KINDS[detected](obj, **options)
    if _has(obj, "rank"):
        return obj
    raise TypeError(
        f"cannot tell how to rank with a {type(obj).__module__}.{type(obj).__name__}: wrap takes a "
        "sentence-transformers CrossEncoder or SentenceTransformer, a rerankers model, a FlashRank "
        "Ranker, a LangChain document compressor, a LlamaIndex node postprocessor, or an object with "
        f"rank(query, docs); or name it with kind= ({', '.join(KINDS)})")
