"""A cross-encoder from a local Hugging Face model directory.

A cross-encoder reads query and document together and outputs one relevance
logit per pair: more accurate than a bi-encoder, and nothing to cache, since
every pair is new.  ``--ranker cross-encoder --model-dir PATH`` loads:

* ``PATH/model.onnx`` (or ``PATH/onnx/model.onnx``) and ``PATH/tokenizer.json``
  through onnxruntime, the default; or
* any directory ``sentence_transformers.CrossEncoder`` can load, when the
  ``sentence-transformers`` extra is installed and there is no ONNX file (or
  ``backend="sentence-transformers"``).

To use, say, an MS MARCO MiniLM cross-encoder you already have, export it once
where it lives (``optimum-cli export onnx --model DIR --task
text-classification DIR``) or install ``selproxy[cross-encoder-torch]`` and
point ``--model-dir`` at the directory as it is.  Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._onnx import Encoder, ModelNotFound
from .base import batch_rank_pairs

__all__ = ("CrossEncoderRanker",)

_ONNX_CANDIDATES = ("model.onnx", "onnx/model.onnx", "model_quantized.onnx",
                    "onnx/model_quantized.onnx")


class CrossEncoderRanker:
    """Scores each (query, document) pair with a cross-encoder.

    ``threads`` is onnxruntime's intra-op thread count (default: the usable
    cores, at most 4).  ``max_length`` bounds the pair's tokens; the document
    side is truncated first.
    """

    name = "cross-encoder"
    #: resolve_ranker wraps it in a MicroBatcher: concurrent searches share calls.
    micro_batching = True

    def __init__(self, model_dir: Union[str, Path], *, backend: str = "auto",
                 threads: Optional[int] = None, max_length: int = 512) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelNotFound(f"no model directory at {self.model_dir}")
        if backend not in ("auto", "onnx", "sentence-transformers"):
            raise ValueError(f"unknown cross-encoder backend {backend!r}")
        onnx_file = next((self.model_dir / c for c in _ONNX_CANDIDATES
                          if (self.model_dir / c).is_file()), None)
        self._encoder: Optional[Encoder] = None
        self._st_model: Any = None
        if backend == "onnx" or (backend == "auto" and onnx_file is not None):
            tokenizer = self.model_dir / "tokenizer.json"
            if onnx_file is None or not tokenizer.is_file():
                raise ModelNotFound(f"{self.model_dir} needs model.onnx and tokenizer.json")
            self._encoder = Encoder(onnx_file, tokenizer, threads=threads,
                                    max_length=max_length, pair_strategy="only_second")
            self.backend = "onnx"
        else:
            try:
                from sentence_transformers import CrossEncoder
            except ImportError:
                raise ModelNotFound(
                    f"{self.model_dir} has no model.onnx; loading it as it is needs "
                    "sentence-transformers (pip install 'selproxy[cross-encoder-torch]')") from None
            self._st_model = CrossEncoder(str(self.model_dir), max_length=max_length,
                                          local_files_only=True)
            self.backend = "sentence-transformers"

    def warmup(self) -> None:
        self._score([("warm up", "a passage to warm the model up")])

    def _score(self, pairs: Sequence[Tuple[str, str]]) -> np.ndarray:
        if self._encoder is not None:
            return self._encoder.pair_logits(pairs)
        scores = np.asarray(self._st_model.predict(list(pairs), show_progress_bar=False),
                            dtype=np.float32)
        return scores if scores.ndim == 1 else scores[:, -1]

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        """One logit per document, higher is more relevant."""
        return self.batch_rank([(query, docs)])[0]

    def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]]) -> List[List[float]]:
        """All searches' pairs go through the model together."""
        return batch_rank_pairs(requests, lambda pairs: self._score(pairs).astype(np.float64).tolist())
