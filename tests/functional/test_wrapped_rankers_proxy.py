"""Rankers from other libraries, end to end: the command line, the embedded
engine, real loopback sockets.

* ``--ranker sentence-transformers --model-dir DIR`` with a tiny cross-encoder
  the test builds: the reranked order is the one ``CrossEncoder.predict``
  gives, asked directly.
* ``--ranker module:factory`` where the factory returns
  ``selproxy.rankers.wrap(...)`` of a LangChain document compressor: the
  order is the compressor's, and the document it leaves out comes last.
"""
import os
from pathlib import Path

import pytest

from support.search_e2e import DOCS, QUERY, engine_and_proxy_orders


def test_the_proxy_reranks_with_a_sentence_transformers_directory(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch not installed (pip install '.[test]')")
    sentence_transformers = pytest.importorskip("sentence_transformers",
                                                reason="sentence-transformers not installed")
    from support.tiny_models import bert_cross_encoder

    model_dir = bert_cross_encoder(tmp_path / "cross-encoder")
    model = sentence_transformers.CrossEncoder(str(model_dir), device="cpu", local_files_only=True)
    scores = {doc_id: float(model.predict([(QUERY, text)])[0]) for doc_id, text in DOCS.items()}
    assert len({round(s, 5) for s in scores.values()}) == len(DOCS)  # no ties: the order is the model's
    want = sorted(DOCS, key=lambda doc_id: -scores[doc_id])
    engine_order, headers, found = engine_and_proxy_orders(
        ["--ranker", "sentence-transformers", "--model-dir", str(model_dir)])
    assert headers["X-Selproxy-Rerank"].startswith("applied"), headers["X-Selproxy-Rerank"]
    assert found == want
    assert engine_order != want  # the proxy changed the order


FACTORY = '''
from langchain_core.documents import BaseDocumentCompressor

from selproxy.rankers import wrap


class ShortestFirstTopThree(BaseDocumentCompressor):
    def compress_documents(self, documents, query, callbacks=None):
        return sorted(documents, key=lambda d: (len(d.page_content), d.page_content))[:3]


def make():
    return wrap(ShortestFirstTopThree())
'''


def test_the_proxy_reranks_with_a_wrapped_langchain_compressor(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("langchain_core", reason="langchain-core not installed (pip install '.[test]')")
    (tmp_path / "lc_ranker.py").write_text(FACTORY)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    # Shortest first: 4 (16 chars), then 1 and 3 (22, "the c" < "the d"), and 2 (24) left out, last.
    want = ["4", "3", "1", "2"]
    engine_order, headers, found = engine_and_proxy_orders(["--ranker", "lc_ranker:make"])
    assert headers["X-Selproxy-Rerank"].startswith("applied"), headers["X-Selproxy-Rerank"]
    assert found == want
    assert engine_order != want
