"""``selproxy --ranker bi-encoder --model-dir DIR`` end to end: the command
line, a tiny sentence-transformers directory the test builds, the embedded
engine, real loopback sockets.  The reranked order must be the one the numpy
reference of the same model gives."""
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

from support.search_e2e import DOCS, QUERY, engine_and_proxy_orders  # noqa: E402
from support.tiny_bi_encoder import build_st_dir, expected  # noqa: E402


@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("cls", False)])
def test_the_proxy_reranks_with_the_model_in_the_directory(tmp_path, pooling, normalize):
    model_dir = build_st_dir(tmp_path / "tiny-model", pooling, normalize)
    vectors = expected(model_dir, [QUERY] + list(DOCS.values()), pooling, normalize)
    scores = vectors[1:] @ vectors[0]
    want = [doc_id for _, doc_id in sorted(zip(-scores, DOCS))]
    engine_order, headers, found = engine_and_proxy_orders(
        ["--ranker", "bi-encoder", "--model-dir", str(model_dir), "--ranker-option", "threads=1",
         "--ranker-option", "fusion_weight=0", "--rank-deadline", "30"])
    assert headers["X-Selproxy-Rerank"].startswith("applied"), headers["X-Selproxy-Rerank"]
    assert found == want
    assert engine_order != want  # the proxy changed the order
    assert len(set(np.round(scores, 4))) == len(DOCS)  # no ties: the order is the model's


def test_without_model_dir_the_proxy_stops_with_one_clear_line():
    done = subprocess.run([sys.executable, "-m", "selproxy", "--listen", "127.0.0.1:0", "--upstream",
                           "http://127.0.0.1:9", "--ranker", "bi-encoder"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "cannot build the ranker 'bi-encoder': the bi-encoder ranker needs --model-dir DIR" in done.stderr
