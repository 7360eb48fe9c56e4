"""Tiny, randomly initialised models built on the spot, in the layouts the
ranking libraries load from disk; nothing is downloaded.

* :func:`bert_cross_encoder` and :func:`bert_bi_encoder`: a 2-layer BERT
  (hidden size 32) from ``transformers.BertConfig``, its weights
  drawn wide enough (``initializer_range``) that texts score apart, with a WordPiece vocab
  of a few words, saved as sentence-transformers and Hugging Face save them.
* :func:`flashrank_model`: a FlashRank cache directory (its model name, its
  ``.onnx`` file name, ``tokenizer.json`` and the three JSON configs it
  reads) holding an ONNX graph made with the ``onnx`` helpers: mean-pooled
  token embeddings, and a logit that counts the word ``cat``.
* :func:`pair_scorer_model`: that graph, with the weights given (the
  cross-encoder tests build theirs on it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "sat", "on", "mat",
         "a", "where", "is", "rug", "##s", "bird", "flew", "over"]
HIDDEN = 32


def _bert_config(labels: int = 0) -> object:
    from transformers import BertConfig

    extra = {"num_labels": labels} if labels else {}
    return BertConfig(vocab_size=len(VOCAB), hidden_size=HIDDEN, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                      initializer_range=0.3, **extra)


def _wordpiece() -> Any:
    """BERT's WordPiece tokenizer over :data:`VOCAB` (``tokenizers``), with its
    ``[CLS] a [SEP] b [SEP]`` pair template."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", VOCAB.index("[CLS]")), ("[SEP]", VOCAB.index("[SEP]"))])
    return tokenizer


def _tokenizer(directory: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=_wordpiece(), unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                            model_max_length=64).save_pretrained(str(directory))


def bert_cross_encoder(directory: Path, seed: int = 3) -> Path:
    """A Hugging Face sequence-classification model (one label), as
    ``CrossEncoder(DIR)`` and ``rerankers`` load it."""
    import torch
    from transformers import BertForSequenceClassification

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BertForSequenceClassification(_bert_config(labels=1)).save_pretrained(str(directory))
    _tokenizer(directory)
    return directory


def bert_bi_encoder(directory: Path, seed: int = 5) -> Path:
    """A sentence-transformers bi-encoder (BERT and mean pooling), saved with
    ``SentenceTransformer.save``: ``modules.json``, ``1_Pooling``..."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    raw = directory.parent / (directory.name + "-raw")
    raw.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BertModel(_bert_config()).save_pretrained(str(raw))
    _tokenizer(raw)
    SentenceTransformer(str(raw), device="cpu", local_files_only=True).save(str(directory))
    return directory


FLASHRANK_MODEL = "ms-marco-TinyBERT-L-2-v2"
FLASHRANK_FILE = "flashrank-TinyBERT-L-2-v2.onnx"
DIM = 4


def pair_scorer_model(path: Path, graph_name: str, words: np.ndarray, segments: np.ndarray,
                      head: np.ndarray) -> None:
    """An ONNX cross-encoder graph, saved at ``path``: ``words`` and
    ``segments`` embed the tokens, which are mean-pooled over the attention
    mask; ``head`` maps the pooled vector to ``head.shape[1]`` logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Gather", ["word_embeddings", "input_ids"], ["words"]),
        helper.make_node("Gather", ["segment_embeddings", "token_type_ids"], ["segments"]),
        helper.make_node("Add", ["words", "segments"], ["hidden"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["hidden", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "seq_axis"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "classifier"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, graph_name,
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
         for name in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", head.shape[1]])],
        initializer=[numpy_helper.from_array(words, "word_embeddings"),
                     numpy_helper.from_array(segments, "segment_embeddings"),
                     numpy_helper.from_array(head, "classifier"),
                     numpy_helper.from_array(np.array([2], dtype=np.int64), "last_axis"),
                     numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def flashrank_model(cache_dir: Path) -> Path:
    """FlashRank's default model name, laid out in ``cache_dir`` as its
    download would be, with a tiny graph: a passage scores by its share
    of ``cat`` tokens."""
    directory = cache_dir / FLASHRANK_MODEL
    directory.mkdir(parents=True, exist_ok=True)
    _wordpiece().save(str(directory / "tokenizer.json"))
    (directory / "config.json").write_text(json.dumps({"pad_token_id": 0}))
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64, "pad_token": "[PAD]"}))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]"}))

    words = np.zeros((len(VOCAB), DIM), dtype=np.float32)
    words[VOCAB.index("cat"), 0] = 8.0
    words[:, 1] = 0.1
    segments = np.zeros((2, DIM), dtype=np.float32)
    head = np.zeros((DIM, 1), dtype=np.float32)
    head[0, 0] = 1.0
    head[1, 0] = -1.0
    pair_scorer_model(directory / FLASHRANK_FILE, "tiny-flashrank", words, segments, head)
    return cache_dir
