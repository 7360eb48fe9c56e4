"""``--ranker sentence-transformers --model-dir DIR``: a local
sentence-transformers model, as it is, through PyTorch.

The directory is what ``model.save(DIR)`` (or a Hugging Face snapshot) left:
a cross-encoder (its ``config.json`` names a ``...ForSequenceClassification``
architecture) is scored pair by pair with ``CrossEncoder.predict``; anything
else is loaded as a ``SentenceTransformer`` and scored by cosine.  ``kind``
says which when the guess is wrong.  It is loaded with
``local_files_only=True``: nothing is downloaded, and a directory that is not
complete is an error at start.

This needs ``pip install 'selproxy[cross-encoder-torch]'`` (PyTorch and
sentence-transformers).  The ONNX rankers (``cross-encoder``, ``bi-encoder``)
need neither, and are faster on a CPU; this one takes any model
sentence-transformers can load, unconverted.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from ._onnx import ModelNotFound
from .wrappers import BiEncoderWrapper, CrossEncoderWrapper

__all__ = ("SentenceTransformersRanker", "guess_kind")


def guess_kind(model_dir: Path) -> str:
    """``cross-encoder`` when ``config.json`` names a sequence-classification
    architecture, else ``bi-encoder``."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "bi-encoder"
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if isinstance(architectures, list) and any(
            str(name).endswith("ForSequenceClassification") for name in architectures):
        return "cross-encoder"
    return "bi-encoder"


class SentenceTransformersRanker:
    """A sentence-transformers model directory, scored as its kind is
    (``auto``, ``cross-encoder`` or ``bi-encoder``).  ``device`` is PyTorch's
    (default ``cpu``); ``max_length`` bounds the tokens of a text or pair;
    ``batch_size`` is the model's own batch; ``cache_size`` is how many
    document vectors a bi-encoder keeps."""

    name = "sentence-transformers"
    #: resolve_ranker wraps it in a MicroBatcher: concurrent searches share calls.
    micro_batching = True

    def __init__(self, model_dir: Union[str, Path], *, kind: str = "auto", device: str = "cpu",
                 max_length: Optional[int] = None, batch_size: int = 32,
                 cache_size: int = 10000) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelNotFound(f"no model directory at {self.model_dir}")
        if kind not in ("auto", "cross-encoder", "bi-encoder"):
            raise ValueError(f"unknown kind {kind!r}: use auto, cross-encoder or bi-encoder")
        self.kind = guess_kind(self.model_dir) if kind == "auto" else kind
        import sentence_transformers

        self._model: Union[CrossEncoderWrapper, BiEncoderWrapper]
        try:
            if self.kind == "cross-encoder":
                model: Any = sentence_transformers.CrossEncoder(
                    str(self.model_dir), device=device, max_length=max_length, local_files_only=True)
                self._model = CrossEncoderWrapper(model, batch_size=batch_size)
            else:
                model = sentence_transformers.SentenceTransformer(
                    str(self.model_dir), device=device, local_files_only=True)
                if max_length is not None:
                    model.max_seq_length = max_length
                self._model = BiEncoderWrapper(model, batch_size=batch_size, cache_size=cache_size)
        except (OSError, ValueError) as exc:  # files missing; a config transformers cannot read
            raise ModelNotFound(f"{self.model_dir} is not a loadable {self.kind} model: "
                                f"{' '.join(str(exc).split())[:300]}") from None

    @property
    def model(self) -> Any:
        """The sentence-transformers model itself."""
        return self._model.wrapped

    def warmup(self) -> None:
        self._model.warmup()

    def rank(self, query: str, docs: Sequence[str], *,
             keys: Optional[Sequence[Any]] = None) -> List[float]:
        return self.batch_rank([(query, docs)], keys=[keys])[0]

    def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]], *,
                   keys: Optional[Sequence[Optional[Sequence[Any]]]] = None) -> List[List[float]]:
        if isinstance(self._model, BiEncoderWrapper):
            return self._model.batch_rank(requests, keys=keys)
        return self._model.batch_rank(requests)
