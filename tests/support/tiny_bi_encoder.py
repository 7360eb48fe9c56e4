"""A tiny sentence-transformers bi-encoder, built on the spot: the ONNX graph,
its tokenizer.json, the directory layout, and a numpy reference of the same
computation.

The graph is a small stand-in for a transformer, made with the ``onnx``
helpers: token plus segment embeddings ``x``, then
``tanh(x @ W + masked_mean(x) @ U)`` per token, so that every token (the
first one too) depends on the whole text, and padded positions hold real,
non-zero values that pooling must leave out.  Needs ``onnx`` and
``tokenizers``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "dog", "sat", "on", "mat",
         "a", "where", "is", "rug", "##s", "bird", "flew", "over"]
DIM = 6
MAX_SEQ_LENGTH = 12
TEXTS = ["the cat sat on the mat", "dog", "where is the bird",
         "a cat a dog a bird a rug a mat the cat sat on the dog over the rug", "", "cats flew"]


def weights(seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"words": rng.normal(0, 1, (len(VOCAB), DIM)).astype(np.float32),
            "segments": rng.normal(0, 0.1, (2, DIM)).astype(np.float32),
            "W": rng.normal(0, 0.7, (DIM, DIM)).astype(np.float32),
            "U": rng.normal(0, 0.7, (DIM, DIM)).astype(np.float32)}


def build_tokenizer(path: Path, vocab: List[str] = VOCAB) -> None:
    """A WordPiece ``tokenizer.json`` over ``vocab`` (``[CLS]`` 2, ``[SEP]`` 3),
    with BERT's single and pair templates."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(path))


def build_model(path: Path, seed: int = 3) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = weights(seed)
    nodes = [
        helper.make_node("Gather", ["words", "input_ids"], ["word_vectors"]),
        helper.make_node("Gather", ["segments", "token_type_ids"], ["segment_vectors"]),
        helper.make_node("Add", ["word_vectors", "segment_vectors"], ["x"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["x", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["summed"], keepdims=1),
        helper.make_node("ReduceSum", ["mask3", "seq_axis"], ["count"], keepdims=1),
        helper.make_node("Div", ["summed", "count"], ["context"]),
        helper.make_node("MatMul", ["x", "W"], ["local"]),
        helper.make_node("MatMul", ["context", "U"], ["mixed"]),
        helper.make_node("Add", ["local", "mixed"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["last_hidden_state"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny-bi-encoder",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
         for name in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                       ["batch", "sequence", DIM])],
        initializer=[numpy_helper.from_array(value, name) for name, value in w.items()]
        + [numpy_helper.from_array(np.array([2], dtype=np.int64), "last_axis"),
           numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def build_st_dir(root: Path, pooling: str, normalize: bool, seed: int = 3,
                 max_seq_length: int = MAX_SEQ_LENGTH) -> Path:
    """The layout ``SentenceTransformer(..., backend="onnx").save(root)`` writes."""
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (root / "2_Normalize").mkdir(parents=True)
    (root / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": DIM,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": pooling == "lasttoken",
        "include_prompt": True}))
    (root / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    (root / "config.json").write_text(json.dumps({"architectures": ["TinyModel"], "hidden_size": DIM}))
    build_tokenizer(root / "tokenizer.json")
    build_model(root / "onnx" / "model.onnx", seed)
    return root


def reference(ids: List[int], pooling: str, normalize: bool, seed: int = 3) -> np.ndarray:
    """The tiny model and sentence-transformers' pooling, one text at a time
    (no padding), in float64."""
    w = {k: v.astype(np.float64) for k, v in weights(seed).items()}
    x = w["words"][ids] + w["segments"][0]
    hidden = np.tanh(x @ w["W"] + x.mean(axis=0) @ w["U"])
    pooled = {"mean": hidden.mean(axis=0), "cls": hidden[0], "max": hidden.max(axis=0),
              "lasttoken": hidden[-1]}[pooling]
    return pooled / np.linalg.norm(pooled) if normalize else pooled


def expected(model_dir: Path, texts: List[str], pooling: str, normalize: bool,
             max_length: int = MAX_SEQ_LENGTH, seed: int = 3) -> np.ndarray:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rows = []
    for text in texts:
        ids = tokenizer.encode(text).ids
        if len(ids) > max_length:  # truncation keeps [CLS] ... and the final [SEP]
            ids = ids[:max_length - 1] + [VOCAB.index("[SEP]")]
        rows.append(reference(ids, pooling, normalize, seed))
    return np.stack(rows)
