"""CrossEncoderRanker on a tiny model the test builds: loading and the scoring
path, not quality.

The model is an ONNX graph (``support.tiny_models.pair_scorer_model``): token and segment
embeddings, masked mean pooling and one linear layer to a logit.  Its
tokenizer is a WordPiece ``tokenizer.json`` built with ``tokenizers``, with
BERT's ``[CLS] a [SEP] b [SEP]`` pair template, as real cross-encoders have.
Token ``cat`` carries +1 on the scored dimension, so a document with more
cats scores higher: that checks the query/document pairing and the pooling.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
tokenizers = pytest.importorskip("tokenizers")

from selproxy.rankers._onnx import ModelNotFound  # noqa: E402
from selproxy.rankers.cross_encoder import CrossEncoderRanker  # noqa: E402
from support.tiny_bi_encoder import build_tokenizer as build_vocab_tokenizer  # noqa: E402
from support.tiny_models import pair_scorer_model  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "dog", "sat", "on", "mat",
         "a", "where", "is", "rug", "##s"]
DIM = 4


def build_tokenizer(path: Path) -> None:
    build_vocab_tokenizer(path, VOCAB)


def build_model(path: Path, labels: int = 1) -> None:
    rng = np.random.default_rng(7)
    words = rng.normal(0, 0.1, (len(VOCAB), DIM)).astype(np.float32)
    words[:, 0] = 0.0
    words[VOCAB.index("cat"), 0] = 1.0
    segments = np.zeros((2, DIM), dtype=np.float32)
    head = np.zeros((DIM, labels), dtype=np.float32)
    head[0, -1] = 1.0
    pair_scorer_model(path, "tiny-cross-encoder", words, segments, head)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-cross-encoder")
    build_model(directory / "model.onnx")
    build_tokenizer(directory / "tokenizer.json")
    (directory / "config.json").write_text(json.dumps({"architectures": ["TinyForSequenceClassification"]}))
    return directory


def test_scores_follow_the_model(model_dir: Path) -> None:
    ranker = CrossEncoderRanker(model_dir, threads=1)
    ranker.warmup()
    docs = ["the dog sat on the mat", "the cat sat on the cat", "a cat on a rug"]
    scores = ranker.rank("where is the cat", docs)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert scores[1] > scores[2] > scores[0]
    # Deterministic, and independent of the window's order.
    again = ranker.rank("where is the cat", list(reversed(docs)))
    assert np.allclose(again, list(reversed(scores)), atol=1e-6)


def test_pair_encoding_puts_the_document_second(model_dir: Path) -> None:
    ranker = CrossEncoderRanker(model_dir, threads=1)
    encoder = ranker._encoder
    assert encoder is not None
    encoding = encoder.tokenizer.encode("where is the cat", "the dog")
    assert encoding.tokens == ["[CLS]", "where", "is", "the", "cat", "[SEP]", "the", "dog", "[SEP]"]
    assert encoding.type_ids == [0] * 6 + [1] * 3


def test_batch_rank_matches_rank(model_dir: Path) -> None:
    ranker = CrossEncoderRanker(model_dir, threads=1)
    requests = [("cat", ["the cat", "the dog", "cats"]), ("dog", []), ("mat", ["a mat on a rug"])]
    batched = ranker.batch_rank(requests)
    assert [len(r) for r in batched] == [3, 0, 1]
    for (query, docs), scores in zip(requests, batched):
        assert np.allclose(scores, ranker.rank(query, docs), atol=1e-6)


def test_long_documents_are_truncated_not_rejected(model_dir: Path) -> None:
    ranker = CrossEncoderRanker(model_dir, threads=1, max_length=16)
    scores = ranker.rank("where is the cat", ["the cat sat on the mat " * 200, "dog"])
    assert len(scores) == 2 and all(np.isfinite(scores))


def test_two_label_models_score_the_relevant_label(tmp_path: Path) -> None:
    build_model(tmp_path / "model.onnx", labels=2)
    build_tokenizer(tmp_path / "tokenizer.json")
    ranker = CrossEncoderRanker(tmp_path, threads=1)
    scores = ranker.rank("cat", ["cat cat", "dog"])
    assert scores[0] > scores[1]


def test_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        CrossEncoderRanker(tmp_path / "nowhere")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ModelNotFound):
        CrossEncoderRanker(tmp_path, backend="onnx")  # no tokenizer.json
