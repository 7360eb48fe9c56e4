"""selproxy.rankers.wrap: each library's own objects, built here, ranked
through the wrapper; nothing is downloaded.

The models are tiny and randomly initialised (tests/support/tiny_models.py):
what is checked is that each document gets *its own* score, computed as the
library computes it (asked one document at a time, in another order), and
that results the libraries reorder, cut or leave unscored map back to the
right documents.  Each library is skipped, with the reason, where it is not
installed; the ``test`` extra installs them all.
"""
from __future__ import annotations

import asyncio
import importlib.util
import math
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np
import pytest

from selproxy.rankers import wrap
from selproxy.rankers.adapter import RankerAdapter, RankFailed, RankJob
from selproxy.rankers.wrappers import (BiEncoderWrapper, CrossEncoderWrapper, FlashRankWrapper, LangChainWrapper,
                                       LlamaIndexWrapper, RerankersWrapper, scores_from_order)

QUERY = "where is the cat"
DOCS = ["the dog sat on the mat", "the cat sat on the mat", "a bird flew over the rug",
        "cat cat cat", "where is the dog", "cats"]


def installed(*modules: str) -> Any:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed "
                                                    "(pip install '.[test]')")


def through_adapter(ranker: Any, docs: Sequence[str] = DOCS, keys: Optional[Sequence[Any]] = None,
                    engine_scores: Optional[Sequence[float]] = None) -> List[float]:
    """Scores as the proxy gets them: RankerAdapter, its worker thread, a deadline."""
    adapter = RankerAdapter(ranker)

    async def main() -> List[float]:
        scores, _timing = await adapter.rank([RankJob(QUERY, docs, keys, engine_scores)], 60.0)
        return scores[0]

    try:
        return asyncio.run(main())
    finally:
        adapter.close()


# -- mapping results back -------------------------------------------------------------

def test_scores_map_back_by_index() -> None:
    assert scores_from_order(3, [(2, 0.9), (0, 0.5), (1, -1.0)]) == [0.5, -1.0, 0.9]


def test_documents_left_out_score_below_all_kept() -> None:
    assert scores_from_order(4, [(3, 2.5), (1, 0.25)]) == [-0.75, 0.25, -0.75, 2.5]


def test_rank_only_results_score_by_order() -> None:
    assert scores_from_order(4, [(2, None), (0, None), (3, None)]) == [3.0, 0.0, 4.0, 2.0]
    # One score missing is as good as none: the order decides.
    assert scores_from_order(3, [(1, 0.2), (0, None), (2, 0.9)]) == [2.0, 3.0, 1.0]
    assert scores_from_order(2, [(1, float("nan")), (0, 1.0)]) == [1.0, 2.0]


def test_ids_selproxy_did_not_send_are_refused() -> None:
    for bad in ([(3, 1.0)], [(-1, 1.0)], [("x", 1.0)], [(None, 1.0)], [(1.5, 1.0)], [(True, 1.0)]):
        with pytest.raises(ValueError, match="did not send"):
            scores_from_order(3, bad)
    with pytest.raises(ValueError, match="twice"):
        scores_from_order(3, [(1, 1.0), ("1", 0.5)])
    assert scores_from_order(3, [("2", 1.0)]) == [0.0, 0.0, 1.0]  # string ids, as LangChain's


def test_wrap_refuses_what_it_cannot_rank_with() -> None:
    with pytest.raises(TypeError, match="cannot tell how to rank with a builtins.object.*kind="):
        wrap(object())
    with pytest.raises(ValueError, match="unknown kind 'gpt'"):
        wrap(object(), kind="gpt")


def test_a_selproxy_ranker_comes_back_as_it_is() -> None:
    class Mine:
        def rank(self, query: str, docs: Sequence[str]) -> List[float]:
            return [0.0] * len(docs)

    mine = Mine()
    assert wrap(mine) is mine
    wrapped = wrap(mine, kind="langchain") if importlib.util.find_spec("langchain_core") else None
    assert wrapped is None or isinstance(wrapped, LangChainWrapper)


def test_kind_names_an_object_that_looks_like_nothing_known() -> None:
    class Pairs:
        def predict(self, pairs: Any, **_: Any) -> Any:
            return np.array([[0.0, float(len(doc))] for _q, doc in pairs])  # two labels

    ranker = wrap(Pairs(), kind="cross-encoder")
    assert isinstance(ranker, CrossEncoderWrapper)
    assert ranker.rank("q", ["ab", "a", "abcd"]) == [2.0, 1.0, 4.0]
    assert through_adapter(ranker, ["ab", "a"]) == [2.0, 1.0]


def test_kind_bi_encoder_takes_a_bare_encode_and_scores_the_cosine() -> None:
    class Letters:
        """encode(texts) and nothing else: counts of a, b and c."""

        def encode(self, texts: List[str]) -> List[List[float]]:
            return [[float(t.count("a")), float(t.count("b")), float(t.count("c"))] for t in texts]

    ranker = wrap(Letters(), kind="bi-encoder")
    assert isinstance(ranker, BiEncoderWrapper)
    scores = ranker.rank("ab", ["aabb", "c", "a", ""])
    assert scores == pytest.approx([1.0, 0.0, math.sqrt(0.5), 0.0])


# -- sentence-transformers ------------------------------------------------------------

@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="torch not installed (pip install '.[test]')")
    pytest.importorskip("transformers", reason="transformers not installed (pip install '.[test]')")
    from support.tiny_models import bert_cross_encoder

    return bert_cross_encoder(tmp_path_factory.mktemp("models") / "cross-encoder")


@pytest.fixture(scope="module")
def bi_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    from support.tiny_models import bert_bi_encoder

    return bert_bi_encoder(tmp_path_factory.mktemp("models") / "bi-encoder")


@installed("sentence_transformers", "torch")
def test_cross_encoder_scores_each_pair_as_predict_does(cross_encoder_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(cross_encoder_dir), device="cpu", local_files_only=True)
    ranker = wrap(model)
    assert isinstance(ranker, CrossEncoderWrapper) and ranker.name == "cross-encoder:CrossEncoder"
    one_by_one = [float(model.predict([(QUERY, doc)])[0]) for doc in reversed(DOCS)][::-1]
    assert len(set(np.round(one_by_one, 4))) == len(DOCS)  # the model tells the documents apart
    assert ranker.rank(QUERY, DOCS) == pytest.approx(one_by_one, abs=1e-5)
    assert through_adapter(ranker) == pytest.approx(one_by_one, abs=1e-5)
    both = ranker.batch_rank([(QUERY, DOCS[:2]), ("dog", DOCS[2:])])
    assert both[0] == pytest.approx(one_by_one[:2], abs=1e-5)
    assert both[1] == pytest.approx([float(model.predict([("dog", d)])[0]) for d in DOCS[2:]], abs=1e-5)
    assert ranker.rank(QUERY, []) == []


@installed("sentence_transformers", "torch")
def test_bi_encoder_scores_the_cosine_and_keeps_document_vectors(bi_encoder_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(bi_encoder_dir), device="cpu", local_files_only=True)
    ranker = wrap(model, cache_size=100)
    assert isinstance(ranker, BiEncoderWrapper)
    query = model.encode_query([QUERY])[0]
    expected = [float(np.dot(query, d) / (np.linalg.norm(query) * np.linalg.norm(d)))
                for d in (model.encode_document([doc])[0] for doc in DOCS)]
    assert all(-1.0 <= e <= 1.0 for e in expected) and len(set(np.round(expected, 4))) == len(DOCS)
    keys = [("books", str(n)) for n in range(len(DOCS))]
    assert through_adapter(ranker, keys=keys) == pytest.approx(expected, abs=1e-5)
    assert (ranker.cache.hits, ranker.cache.misses, len(ranker.cache)) == (0, len(DOCS), len(DOCS))

    encoded: List[int] = []
    original = ranker._encode_document
    ranker._encode_document = lambda texts, **kw: (encoded.append(len(texts)), original(texts, **kw))[1]
    # Two kept, one new: only the new one is encoded, and each keeps its own score.
    again = ranker.rank(QUERY, [DOCS[3], "the bird", DOCS[0]], keys=[keys[3], ("books", "new"), keys[0]])
    assert encoded == [1]
    assert again[0] == pytest.approx(expected[3], abs=1e-5) and again[2] == pytest.approx(expected[0], abs=1e-5)
    assert ranker.cache.hits == 2
    assert ranker.rank(QUERY, DOCS) == pytest.approx(expected, abs=1e-5)  # no keys: nothing kept, all encoded
    assert encoded == [1, len(DOCS)]


@installed("sentence_transformers", "torch")
def test_named_ranker_loads_a_model_directory_of_either_kind(cross_encoder_dir: Path,
                                                             bi_encoder_dir: Path) -> None:
    from selproxy.rankers.batching import MicroBatcher
    from selproxy.rankers.registry import check_ranker, resolve_ranker
    from selproxy.rankers.sbert import SentenceTransformersRanker, guess_kind

    assert (guess_kind(cross_encoder_dir), guess_kind(bi_encoder_dir)) == ("cross-encoder", "bi-encoder")
    assert check_ranker("sentence-transformers", {"model_dir": str(cross_encoder_dir), "batch_size": 8}) == {
        "model_dir": str(cross_encoder_dir), "batch_size": 8}
    built = resolve_ranker("sentence-transformers", {"model_dir": str(cross_encoder_dir)})
    assert isinstance(built, MicroBatcher) and isinstance(built.ranker, SentenceTransformersRanker)
    assert built.ranker.kind == "cross-encoder"
    direct = wrap(built.ranker.model).rank(QUERY, DOCS)
    assert through_adapter(built) == pytest.approx(direct, abs=1e-6)

    bi = SentenceTransformersRanker(bi_encoder_dir, max_length=16)
    assert bi.kind == "bi-encoder" and bi.model.max_seq_length == 16
    assert bi.rank(QUERY, DOCS) == pytest.approx(wrap(bi.model).rank(QUERY, DOCS), abs=1e-6)
    with pytest.raises(ValueError, match="unknown kind"):
        SentenceTransformersRanker(bi_encoder_dir, kind="colbert")


@installed("sentence_transformers", "torch")
def test_named_ranker_downloads_nothing(tmp_path: Path) -> None:
    from selproxy.rankers._onnx import ModelNotFound
    from selproxy.rankers.sbert import SentenceTransformersRanker

    with pytest.raises(ModelNotFound, match="no model directory"):
        SentenceTransformersRanker(tmp_path / "absent")
    (tmp_path / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    with pytest.raises(ModelNotFound, match=f"{tmp_path} is not a loadable cross-encoder model: .*model_type"):
        SentenceTransformersRanker(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    # No weights: an error at once, not a download.
    with pytest.raises(ModelNotFound, match="is not a loadable bi-encoder model: .*no file named model.safetensors"):
        SentenceTransformersRanker(tmp_path)


# -- rerankers --------------------------------------------------------------------------

@installed("rerankers", "transformers", "torch")
def test_rerankers_model_maps_results_back_by_doc_id(cross_encoder_dir: Path) -> None:
    from rerankers import Reranker

    model = Reranker(str(cross_encoder_dir), model_type="cross-encoder", verbose=0, device="cpu")
    ranker = wrap(model)
    assert isinstance(ranker, RerankersWrapper)
    one_by_one = [float(model.rank(QUERY, [doc], doc_ids=[7]).results[0].score) for doc in DOCS]
    assert len(set(np.round(one_by_one, 4))) == len(DOCS)
    # The library answers sorted by score; each score must land on its own document.
    assert through_adapter(ranker) == pytest.approx(one_by_one, abs=1e-4)


@installed("rerankers")
def test_rerankers_rank_only_model_scores_by_its_order() -> None:
    from rerankers.documents import Document
    from rerankers.models.ranker import BaseRanker
    from rerankers.results import RankedResults, Result

    class ListwiseByLength(BaseRanker):
        """As RankGPT answers: ranks, no scores; here the longest text first,
        and the shortest one left out."""

        def __init__(self, model_name_or_path: str = "", verbose: int = 0) -> None:
            pass

        def score(self, query: str, doc: str) -> float:
            raise NotImplementedError

        def rank(self, query: str, docs: Any, doc_ids: Any = None) -> RankedResults:
            documents = [Document(text=t, doc_id=i) for t, i in zip(docs, doc_ids)]
            ordered = sorted(documents, key=lambda d: -len(d.text))[:-1]
            return RankedResults(results=[Result(document=d, rank=r + 1) for r, d in enumerate(ordered)],
                                 query=query, has_scores=False)

    ranker = wrap(ListwiseByLength())
    assert isinstance(ranker, RerankersWrapper)
    scores = through_adapter(ranker, ["bb", "a", "dddd", "ccc"])
    assert scores == [2.0, 0.0, 4.0, 3.0]


# -- FlashRank --------------------------------------------------------------------------

@installed("flashrank", "onnx")
def test_flashrank_ranker_maps_passages_back_by_id(tmp_path: Path) -> None:
    from flashrank import Ranker, RerankRequest

    from support.tiny_models import FLASHRANK_MODEL, flashrank_model

    cache = flashrank_model(tmp_path)
    model = Ranker(model_name=FLASHRANK_MODEL, cache_dir=str(cache))
    ranker = wrap(model)
    assert isinstance(ranker, FlashRankWrapper)
    one_by_one = [float(model.rerank(RerankRequest(query=QUERY, passages=[{"id": 0, "text": d}]))[0]["score"])
                  for d in DOCS]
    scores = through_adapter(ranker)
    assert scores == pytest.approx(one_by_one, abs=1e-6)
    # The graph scores the share of "cat" tokens: the third-from-last text wins.
    assert max(range(len(DOCS)), key=scores.__getitem__) == 3


def test_flashrank_listwise_answer_without_scores_scores_by_order() -> None:
    class Ranker:
        """FlashRank's listwise path: the passages back, reordered, no score."""

        def rerank(self, request: Any) -> List[dict]:
            return sorted(request.passages, key=lambda p: p["text"])

    class RerankRequest:
        def __init__(self, query: Optional[str] = None, passages: Optional[List[dict]] = None) -> None:
            self.query, self.passages = query, passages or []

    Ranker.__module__ = RerankRequest.__module__ = __name__ + ".flashrank_like"
    import sys
    import types

    module = types.ModuleType(Ranker.__module__)
    module.RerankRequest = RerankRequest  # type: ignore[attr-defined]
    sys.modules[Ranker.__module__] = module
    try:
        ranker = wrap(Ranker(), kind="flashrank")
        assert ranker.rank("q", ["b", "c", "a"]) == [2.0, 1.0, 3.0]
    finally:
        del sys.modules[Ranker.__module__]


# -- LangChain --------------------------------------------------------------------------

@installed("langchain_core")
def test_langchain_compressor_scores_from_relevance_score() -> None:
    from langchain_core.documents import BaseDocumentCompressor, Document

    class WordOverlap(BaseDocumentCompressor):
        """As LangChain's Cohere and FlashRank rerankers answer: new Document
        objects, the top_n best, each with metadata["relevance_score"]."""

        top_n: int = 4

        def compress_documents(self, documents: Sequence[Document], query: str,
                               callbacks: Any = None) -> Sequence[Document]:
            words = set(query.split())
            scored = [(len(words & set(d.page_content.split())) + 0.01 * len(d.page_content), d)
                      for d in documents]
            scored.sort(key=lambda pair: -pair[0])
            return [Document(page_content=d.page_content, metadata={**d.metadata, "relevance_score": s})
                    for s, d in scored[:self.top_n]]

    ranker = wrap(WordOverlap())
    assert isinstance(ranker, LangChainWrapper)
    scores = through_adapter(ranker)
    overlap = [len(set(QUERY.split()) & set(d.split())) + 0.01 * len(d) for d in DOCS]
    kept = sorted(range(len(DOCS)), key=lambda i: -overlap[i])[:4]
    floor = min(overlap[i] for i in kept) - 1.0
    assert scores == pytest.approx([overlap[i] if i in kept else floor for i in range(len(DOCS))])


@installed("langchain_core")
def test_langchain_compressor_that_only_reorders_scores_by_order() -> None:
    from langchain_core.documents import BaseDocumentCompressor, Document

    class ShortestFirst(BaseDocumentCompressor):
        """As LangChain's CrossEncoderReranker answers: the same Document
        objects, reordered and cut, no scores; ids only (metadata dropped)."""

        def compress_documents(self, documents: Sequence[Document], query: str,
                               callbacks: Any = None) -> Sequence[Document]:
            ordered = sorted(documents, key=lambda d: len(d.page_content))[:3]
            return [Document(page_content=d.page_content, id=d.id) for d in ordered]

    assert through_adapter(wrap(ShortestFirst()), ["aaa", "a", "aaaa", "aa"]) == [2.0, 4.0, 0.0, 3.0]


# -- LlamaIndex -------------------------------------------------------------------------

@installed("llama_index.core")
def test_llamaindex_postprocessor_gets_engine_scores_and_maps_back_by_node_id() -> None:
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import NodeWithScore, QueryBundle

    seen: List[Optional[float]] = []

    class HalveAndFlip(BaseNodePostprocessor):
        """Rescores from the starting score, answers reversed, drops the last."""

        def _postprocess_nodes(self, nodes: List[NodeWithScore],
                               query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
            assert query_bundle is not None and query_bundle.query_str == QUERY
            seen.extend(n.score for n in nodes)
            for n in nodes:
                n.score = -(n.score or 0.0) / 2
            return list(reversed(nodes))[:-1]

    ranker = wrap(HalveAndFlip())
    assert isinstance(ranker, LlamaIndexWrapper)
    scores = through_adapter(ranker, ["a", "b", "c", "d"], engine_scores=[4.0, 3.0, 2.0, 1.0])
    assert seen == [4.0, 3.0, 2.0, 1.0]
    assert scores == [-2.5, -1.5, -1.0, -0.5]  # "a" was dropped: one below the lowest kept


@installed("llama_index.core", "sentence_transformers", "torch")
def test_llamaindex_sentence_transformer_rerank(cross_encoder_dir: Path) -> None:
    from llama_index.core.postprocessor import SentenceTransformerRerank
    from sentence_transformers import CrossEncoder

    ranker = wrap(SentenceTransformerRerank(model=str(cross_encoder_dir), top_n=4, device="cpu"))
    model = CrossEncoder(str(cross_encoder_dir), device="cpu", local_files_only=True)
    direct = [float(model.predict([(QUERY, doc)])[0]) for doc in DOCS]
    scores = through_adapter(ranker)
    kept = sorted(range(len(DOCS)), key=lambda i: -direct[i])[:4]
    for i in range(len(DOCS)):
        if i in kept:
            assert scores[i] == pytest.approx(direct[i], abs=1e-5)
        else:
            assert scores[i] == pytest.approx(min(direct[k] for k in kept) - 1.0, abs=1e-5)


# -- failures fall back -----------------------------------------------------------------

@installed("langchain_core")
def test_a_library_answering_with_a_stranger_fails_the_call() -> None:
    from langchain_core.documents import BaseDocumentCompressor, Document

    class Inventor(BaseDocumentCompressor):
        def compress_documents(self, documents: Sequence[Document], query: str,
                               callbacks: Any = None) -> Sequence[Document]:
            return [Document(page_content="made up", metadata={"selproxy_index": 99})]

    with pytest.raises(RankFailed) as failed:
        through_adapter(wrap(Inventor()))
    assert failed.value.reason == "error"


def test_wrappers_import_no_library_until_one_is_wrapped() -> None:
    import subprocess
    import sys

    code = ("import sys, selproxy.rankers; "
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'langchain_core', 'llama_index', "
            "'rerankers', 'flashrank', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
