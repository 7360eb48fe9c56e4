"""Any local sentence-transformers bi-encoder exported to ONNX.

``--ranker bi-encoder --model-dir DIR`` reads the directory the way
sentence-transformers saves it, and scores like ``minilm`` (same caches, same
fusion), with the model's own pooling, normalisation and length:

* ``modules.json``: the module chain.  Supported: one ``Transformer`` (the
  ONNX graph), one ``Pooling``, and an optional ``Normalize``.  Any other
  module (``Dense``, ...) holds weights outside the ONNX file, so loading
  stops with an error rather than computing different embeddings.
* ``1_Pooling/config.json`` (the Pooling module's folder): exactly one of
  ``pooling_mode_mean_tokens``, ``_cls_token``, ``_max_tokens`` or
  ``_lasttoken``.
* ``sentence_bert_config.json``: ``max_seq_length``, the truncation length,
  and ``do_lower_case`` (texts are lower-cased before tokenizing).
* ``onnx/model.onnx`` (where ``SentenceTransformer(..., backend="onnx")``
  saves the export, beside its optimised and quantised variants) or
  ``model.onnx``; ``file_name=onnx/model_O3.onnx`` picks a variant.  Weights
  in an external-data file beside it are found by onnxruntime.
* ``tokenizer.json`` (or ``onnx/tokenizer.json``).

The ONNX graph is the Transformer module alone (its first output, the token
embeddings); pooling and normalisation run here, in numpy.  A directory
without ``modules.json`` (a plain Hugging Face export) pools as
``1_Pooling/config.json`` says, or as the ``pooling`` option says, and is
L2-normalised unless ``normalize=false``.  ``pooling``, ``normalize`` and
``max_length`` given as options override the files.  Nothing is downloaded.

Not applied: ``prompts`` from ``config_sentence_transformers.json`` (models
such as e5 or arctic-embed expect a query prefix).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ._onnx import POOLING_MODES, ModelNotFound
from .minilm import MiniLMRanker

__all__ = ("BiEncoderRanker", "read_model_dir")

_ONNX_CANDIDATES = ("onnx/model.onnx", "model.onnx")
_TOKENIZER_CANDIDATES = ("tokenizer.json", "onnx/tokenizer.json")
#: sentence-transformers' Pooling config keys, by our pooling mode names.
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
_FALLBACK_MAX_LENGTH = 512


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON: {exc}") from None


def _pooling_from_config(path: Path) -> str:
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    named = config.get("pooling_mode")
    if isinstance(named, str):
        enabled = [named]
    else:
        enabled = [mode for key, mode in _POOLING_KEYS.items() if config.get(key)]
    if len(enabled) != 1:
        raise ValueError(f"{path} enables the pooling modes {enabled or 'none'}; "
                         f"exactly one of {', '.join(POOLING_MODES)} is supported")
    if enabled[0] not in POOLING_MODES:
        raise ValueError(f"{path}: pooling mode {enabled[0]!r} is not supported "
                         f"(supported: {', '.join(POOLING_MODES)})")
    return enabled[0]


def read_model_dir(model_dir: Union[str, Path], file_name: Optional[str] = None) -> Dict[str, Any]:
    """What a sentence-transformers directory says about its model:
    ``model``, ``tokenizer`` (paths), ``pooling``, ``normalize`` and
    ``max_length`` (None where the directory does not say), ``lowercase``, and
    ``config_files`` (relative name -> path, for the model's identity).

    Raises ModelNotFound for a missing directory or file, ValueError for a
    layout it cannot run as the directory describes it."""
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise ModelNotFound(f"bi-encoder: no model directory at {root}")
    if file_name is not None:
        model = root / file_name
        if not model.is_file():
            raise ModelNotFound(f"bi-encoder: {model} not found (file_name={file_name!r})")
    else:
        found = next((root / c for c in _ONNX_CANDIDATES if (root / c).is_file()), None)
        if found is None:
            raise ModelNotFound(f"bi-encoder: {root} has no {' or '.join(_ONNX_CANDIDATES)} "
                                "(export it with SentenceTransformer(..., backend='onnx').save(DIR))")
        model = found
    tokenizer = next((root / c for c in _TOKENIZER_CANDIDATES if (root / c).is_file()), None)
    if tokenizer is None:
        raise ModelNotFound(f"bi-encoder: {root} has no tokenizer.json")

    config_files: Dict[str, Path] = {}
    pooling: Optional[str] = None
    normalize: Optional[bool] = None
    pooling_dir = "1_Pooling"
    modules_path = root / "modules.json"
    if modules_path.is_file():
        config_files["modules.json"] = modules_path
        modules = _read_json(modules_path)
        if not isinstance(modules, list):
            raise ValueError(f"{modules_path} is not a list of modules")
        kinds: List[Tuple[str, str]] = []
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1] if isinstance(module, dict) else ""
            kinds.append((kind, str(module.get("path", "")) if isinstance(module, dict) else ""))
        unsupported = [f"{kind or '?'} ({path or '.'})" for kind, path in kinds
                       if kind not in ("Transformer", "Pooling", "Normalize")]
        if unsupported:
            raise ValueError(f"bi-encoder: {modules_path} has modules the ONNX file does not hold: "
                             f"{', '.join(unsupported)}; supported are Transformer, Pooling, Normalize")
        names = [kind for kind, _ in kinds]
        if names.count("Transformer") != 1 or names.count("Pooling") != 1:
            raise ValueError(f"bi-encoder: {modules_path} must list one Transformer and one Pooling "
                             f"module, it lists {names}")
        if names.index("Pooling") < names.index("Transformer") or (
                "Normalize" in names and names.index("Normalize") < names.index("Pooling")):
            raise ValueError(f"bi-encoder: {modules_path} lists its modules out of order: {names}")
        pooling_dir = next(path for kind, path in kinds if kind == "Pooling") or pooling_dir
        normalize = "Normalize" in names
    pooling_config = root / pooling_dir / "config.json"
    if pooling_config.is_file():
        config_files[f"{pooling_dir}/config.json"] = pooling_config
        pooling = _pooling_from_config(pooling_config)
    elif modules_path.is_file():
        raise ModelNotFound(f"bi-encoder: {pooling_config} not found (modules.json names it)")

    max_length: Optional[int] = None
    lowercase = False
    if (root / "sentence_bert_config.json").is_file():
        st_config = _read_json(root / "sentence_bert_config.json")
        lowercase = isinstance(st_config, dict) and st_config.get("do_lower_case") is True
    for name, key in (("sentence_bert_config.json", "max_seq_length"),
                      ("tokenizer_config.json", "model_max_length")):
        path = root / name
        if not path.is_file():
            continue
        config_files[name] = path
        value = _read_json(path)
        value = value.get(key) if isinstance(value, dict) else None
        # tokenizer_config.json says 1e30 when it does not know.
        if max_length is None and isinstance(value, int) and 0 < value <= 1_000_000:
            max_length = value
    if (root / "config.json").is_file():
        config_files["config.json"] = root / "config.json"
    return {"model": model, "tokenizer": tokenizer, "pooling": pooling, "normalize": normalize,
            "max_length": max_length, "lowercase": lowercase, "config_files": config_files}


class BiEncoderRanker(MiniLMRanker):
    """Cosine (or, unnormalised, dot-product) scores of a local bi-encoder.

    ``model_dir`` is a sentence-transformers directory with an ONNX export
    (see the module docstring).  The other options are :class:`MiniLMRanker`'s
    (``threads``, ``cache_size``, ``query_cache_size``, ``fusion_weight``).
    """

    name = "bi-encoder"

    def __init__(self, model_dir: Union[str, Path, None] = None, *, file_name: Optional[str] = None,
                 max_length: Optional[int] = None, pooling: Optional[str] = None,
                 normalize: Optional[bool] = None, **options: Any) -> None:
        if model_dir is None:
            raise ValueError("the bi-encoder ranker needs --model-dir DIR "
                             "(a sentence-transformers directory with an ONNX export)")
        layout = read_model_dir(model_dir, file_name)
        pooling = pooling or layout["pooling"]
        if pooling is None:
            raise ValueError(f"bi-encoder: {model_dir} has no modules.json or 1_Pooling/config.json; "
                             f"give the pooling (--ranker-option pooling={'|'.join(POOLING_MODES)})")
        normalize = normalize if normalize is not None else layout["normalize"]
        self.model_dir = Path(model_dir)
        super().__init__(layout["model"], layout["tokenizer"],
                         max_length=max_length or layout["max_length"] or _FALLBACK_MAX_LENGTH,
                         pooling=pooling, normalize=True if normalize is None else bool(normalize),
                         **options)
        self.encoder.lowercase = layout["lowercase"]
        self.model_identity = self.encoder.identify(
            self.model_dir.resolve().name, layout["config_files"])
