"""BiEncoderRanker on tiny sentence-transformers directories the test builds.

The model (``support/tiny_bi_encoder.py``) is a small stand-in for a
transformer whose every token depends on the whole text and whose padded
positions hold non-zero values; the same computation in numpy is the
reference each pooling mode is checked against.  Nothing is downloaded.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

from selproxy.rankers._onnx import ModelNotFound  # noqa: E402
from selproxy.rankers.bi_encoder import BiEncoderRanker, read_model_dir  # noqa: E402
from selproxy.rankers.registry import resolve_ranker  # noqa: E402
from support.tiny_bi_encoder import (  # noqa: E402
    DIM, MAX_SEQ_LENGTH, TEXTS, build_model, build_st_dir, build_tokenizer, expected,
)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "lasttoken"])
@pytest.mark.parametrize("normalize", [True, False])
def test_embeddings_match_the_numpy_reference(tmp_path: Path, pooling: str, normalize: bool) -> None:
    model_dir = build_st_dir(tmp_path / f"tiny-{pooling}", pooling, normalize)
    ranker = BiEncoderRanker(model_dir, threads=1, embedding_store=":memory:")  # exact fp32 scores
    assert (ranker.encoder.pooling, ranker.encoder.normalize) == (pooling, normalize)
    assert ranker.encoder.max_length == MAX_SEQ_LENGTH
    # One batch with texts of every length: padding must not leak into pooling.
    vectors = ranker.encoder.embed(TEXTS)
    want = expected(model_dir, TEXTS, pooling, normalize)
    assert vectors.shape == (len(TEXTS), DIM) and vectors.dtype == np.float32
    assert np.allclose(vectors, want, atol=2e-5), np.abs(vectors - want).max()
    norms = np.linalg.norm(vectors, axis=1)
    if normalize:
        assert np.allclose(norms, 1.0, atol=1e-5)
    else:
        assert not np.allclose(norms, 1.0, atol=1e-2)
    # rank(): the query's vector against the documents', dot product.
    scores = ranker.rank(TEXTS[0], TEXTS[1:])
    assert np.allclose(scores, want[1:] @ want[0], atol=5e-5)


def test_the_pooling_modes_differ(tmp_path: Path) -> None:
    """The reference check above is only worth something if the modes give
    different vectors on this model."""
    vectors = {mode: BiEncoderRanker(build_st_dir(tmp_path / mode, mode, True), threads=1)
               .encoder.embed(TEXTS[:3]) for mode in ("mean", "cls", "max", "lasttoken")}
    modes = list(vectors)
    for i, a in enumerate(modes):
        for b in modes[i + 1:]:
            assert not np.allclose(vectors[a], vectors[b], atol=1e-3), (a, b)


def test_layout_is_read_from_the_files(tmp_path: Path) -> None:
    model_dir = build_st_dir(tmp_path / "m", "cls", False, max_seq_length=9)
    layout = read_model_dir(model_dir)
    assert layout["model"] == model_dir / "onnx" / "model.onnx"
    assert layout["tokenizer"] == model_dir / "tokenizer.json"
    assert (layout["pooling"], layout["normalize"], layout["max_length"]) == ("cls", False, 9)
    assert sorted(layout["config_files"]) == [
        "1_Pooling/config.json", "config.json", "modules.json", "sentence_bert_config.json"]


def test_options_override_the_files(tmp_path: Path) -> None:
    model_dir = build_st_dir(tmp_path / "m", "cls", False)
    ranker = BiEncoderRanker(model_dir, threads=1, pooling="mean", normalize=True, max_length=7)
    assert (ranker.encoder.pooling, ranker.encoder.normalize, ranker.encoder.max_length) == ("mean", True, 7)
    want = expected(model_dir, TEXTS, "mean", True, max_length=7)
    assert np.allclose(ranker.encoder.embed(TEXTS), want, atol=2e-5)


IDENTITY = re.compile(r"^(?P<name>[^@;]+)@sha256:[0-9a-f]{16};max_length=\d+;"
                      r"pooling=(mean|cls|max|lasttoken);normalize=(true|false)(;lowercase=true)?$")


def test_model_identity_changes_with_everything_that_changes_a_vector(tmp_path: Path) -> None:
    def identity(model_dir: Path, **options: object) -> str:
        return BiEncoderRanker(model_dir, threads=1, **options).model_identity  # type: ignore[arg-type]

    base_dir = build_st_dir(tmp_path / "tiny-model", "mean", True)
    base = identity(base_dir)
    match = IDENTITY.match(base)
    assert match and match.group("name") == "tiny-model", base
    assert base.endswith(";max_length=12;pooling=mean;normalize=true")
    assert identity(base_dir) == base  # stable across loads
    assert identity(base_dir, max_length=8) != base
    assert identity(base_dir, pooling="cls") != base
    assert identity(base_dir, normalize=False) != base
    # Same name, same settings, other weights.
    other_weights = build_st_dir(tmp_path / "b" / "tiny-model", "mean", True, seed=4)
    assert identity(other_weights) != base
    # Same weights, another tokenizer.
    other_tokenizer = build_st_dir(tmp_path / "c" / "tiny-model", "mean", True)
    data = json.loads((other_tokenizer / "tokenizer.json").read_text())
    data["normalizer"]["lowercase"] = False
    (other_tokenizer / "tokenizer.json").write_text(json.dumps(data))
    assert identity(other_tokenizer) != base
    # A config file that shaped the model, even with the same pooling.
    other_config = build_st_dir(tmp_path / "d" / "tiny-model", "mean", True)
    (other_config / "config.json").write_text(json.dumps({"architectures": ["Other"]}))
    assert identity(other_config) != base
    # The same files elsewhere under the same name: the same model.
    assert identity(build_st_dir(tmp_path / "e" / "tiny-model", "mean", True)) == base


def test_external_weights_are_part_of_the_identity(tmp_path: Path) -> None:
    model_dir = build_st_dir(tmp_path / "m", "mean", True)
    base = BiEncoderRanker(model_dir, threads=1).model_identity
    # onnxruntime would read model.onnx_data for a graph saved with external
    # data; the identity covers the file whenever it is there.
    (model_dir / "onnx" / "model.onnx_data").write_bytes(b"\0" * 64)
    assert BiEncoderRanker(model_dir, threads=1).model_identity != base


def test_plain_export_without_modules_json(tmp_path: Path) -> None:
    build_tokenizer(tmp_path / "tokenizer.json")
    build_model(tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="pooling=mean"):
        BiEncoderRanker(tmp_path, threads=1)
    ranker = BiEncoderRanker(tmp_path, threads=1, pooling="max", max_length=MAX_SEQ_LENGTH)
    assert ranker.encoder.normalize is True
    assert np.allclose(ranker.encoder.embed(TEXTS), expected(tmp_path, TEXTS, "max", True), atol=2e-5)


def test_file_name_picks_a_variant(tmp_path: Path) -> None:
    model_dir = build_st_dir(tmp_path / "m", "mean", True)
    build_model(model_dir / "onnx" / "model_O3.onnx", seed=5)
    ranker = BiEncoderRanker(model_dir, threads=1, file_name="onnx/model_O3.onnx")
    assert np.allclose(ranker.encoder.embed(TEXTS[:2]),
                       expected(model_dir, TEXTS[:2], "mean", True, seed=5), atol=2e-5)


def test_resolves_by_name_with_micro_batching(tmp_path: Path) -> None:
    model_dir = build_st_dir(tmp_path / "m", "mean", True)
    ranker = resolve_ranker("bi-encoder", {"model_dir": str(model_dir), "threads": 1,
                                           "embedding_store": ":memory:"})  # exact fp32 scores
    assert type(ranker).__name__ == "MicroBatcher"
    assert isinstance(ranker.ranker, BiEncoderRanker)
    scores = ranker.ranker.rank("the cat", ["the cat sat", "a bird flew"])
    want = expected(model_dir, ["the cat", "the cat sat", "a bird flew"], "mean", True)
    assert np.allclose(scores, want[1:] @ want[0], atol=5e-5)


def _module(kind: str, path: str) -> dict:
    return {"idx": 0, "name": path, "path": path, "type": f"sentence_transformers.models.{kind}"}


@pytest.mark.parametrize("setup, error, message", [
    (None, ModelNotFound, "no model directory"),
    ("no-onnx", ModelNotFound, "has no onnx/model.onnx or model.onnx"),
    ("no-tokenizer", ModelNotFound, "has no tokenizer.json"),
    ("dense", ValueError, r"Dense \(2_Dense\)"),
    ("weightedmean", ValueError, "'weightedmean' is not supported"),
    ("two-modes", ValueError, r"pooling modes \['mean', 'cls'\]"),
    ("no-pooling-config", ModelNotFound, "1_Pooling/config.json not found"),
    ("variant", ModelNotFound, "model_O4.onnx not found"),
])
def test_invalid_directories_say_what_is_wrong(tmp_path: Path, setup: Optional[str],
                                               error: type, message: str) -> None:
    model_dir = tmp_path / "m"
    options: dict = {}
    if setup is not None:
        build_st_dir(model_dir, "mean", True)
    if setup == "no-onnx":
        (model_dir / "onnx" / "model.onnx").unlink()
    elif setup == "no-tokenizer":
        (model_dir / "tokenizer.json").unlink()
    elif setup == "dense":
        modules = json.loads((model_dir / "modules.json").read_text())
        modules.insert(2, _module("Dense", "2_Dense"))
        (model_dir / "modules.json").write_text(json.dumps(modules))
    elif setup in ("weightedmean", "two-modes"):
        config_path = model_dir / "1_Pooling" / "config.json"
        config = json.loads(config_path.read_text())
        config["pooling_mode_weightedmean_tokens" if setup == "weightedmean" else "pooling_mode_cls_token"] = True
        if setup == "weightedmean":
            config["pooling_mode_mean_tokens"] = False
        config_path.write_text(json.dumps(config))
    elif setup == "no-pooling-config":
        (model_dir / "1_Pooling" / "config.json").unlink()
    elif setup == "variant":
        options["file_name"] = "onnx/model_O4.onnx"
    with pytest.raises(error, match=message) as caught:
        BiEncoderRanker(model_dir, threads=1, **options)
    assert "\n" not in str(caught.value)


def test_missing_model_dir_option() -> None:
    with pytest.raises(ValueError, match="needs --model-dir DIR"):
        BiEncoderRanker()


def test_do_lower_case_lowers_the_texts(tmp_path: Path) -> None:
    """The tiny tokenizer does not lower-case by itself here, so upper-case
    words are [UNK] unless the config's do_lower_case applies."""
    model_dir = build_st_dir(tmp_path / "m", "mean", True)
    data = json.loads((model_dir / "tokenizer.json").read_text())
    data["normalizer"]["lowercase"] = False
    (model_dir / "tokenizer.json").write_text(json.dumps(data))
    texts = ["THE CAT SAT", "Where is the Dog"]
    cased = BiEncoderRanker(model_dir, threads=1)
    assert cased.encoder.lowercase is False
    assert np.allclose(cased.encoder.embed(texts), expected(model_dir, texts, "mean", True), atol=2e-5)
    config = model_dir / "sentence_bert_config.json"
    config.write_text(json.dumps({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": True}))
    lowered = BiEncoderRanker(model_dir, threads=1)
    assert lowered.encoder.lowercase is True
    assert lowered.model_identity != cased.model_identity
    assert lowered.model_identity.endswith(";normalize=true;lowercase=true")
    want = expected(model_dir, [t.lower() for t in texts], "mean", True)
    assert np.allclose(lowered.encoder.embed(texts), want, atol=2e-5)
    assert not np.allclose(want, expected(model_dir, texts, "mean", True), atol=1e-3)
