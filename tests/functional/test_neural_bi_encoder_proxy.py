"""``selproxy --ranker bi-encoder --model-dir DIR`` end to end: the command
line, a tiny sentence-transformers directory the test builds, the embedded
engine, real loopback sockets.  The reranked order must be the one the numpy
reference of the same model gives."""
import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

from support.engine import engine_in_thread  # noqa: E402
from support.proxy import ProxyProcess  # noqa: E402
from support.tiny_bi_encoder import build_st_dir, expected  # noqa: E402

DOCS = {"1": "the dog sat on the mat", "2": "a bird flew over the rug", "3": "the cat sat on the cat",
        "4": "where is the mat"}
QUERY = "the cat"


def post(url: str, body: dict) -> tuple:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as res:
        return res.headers, json.loads(res.read())


@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("cls", False)])
def test_the_proxy_reranks_with_the_model_in_the_directory(tmp_path, pooling, normalize):
    model_dir = build_st_dir(tmp_path / "tiny-model", pooling, normalize)
    vectors = expected(model_dir, [QUERY] + list(DOCS.values()), pooling, normalize)
    scores = vectors[1:] @ vectors[0]
    want = [doc_id for _, doc_id in sorted(zip(-scores, DOCS))]
    with engine_in_thread() as engine_url:
        for doc_id, body in DOCS.items():
            post(f"{engine_url}/docs/_doc/{doc_id}?refresh=true", {"body": body})
        # Every document has "the": the engine returns all four, in another order.
        _, direct = post(f"{engine_url}/docs/_search", {"query": {"match": {"body": QUERY}}})
        assert len(direct["hits"]["hits"]) == len(DOCS)
        assert [hit["_id"] for hit in direct["hits"]["hits"]] != want
        args = ["--upstream", engine_url, "--ranker", "bi-encoder", "--model-dir", str(model_dir),
                "--ranker-option", "threads=1", "--ranker-option", "fusion_weight=0",
                "--rank-deadline", "30", "--text-field", "body"]
        with ProxyProcess(args, timeout=60) as proxy:
            headers, found = post(f"{proxy.url}/docs/_search", {"query": {"match": {"body": QUERY}}})
    assert headers["X-Selproxy-Rerank"].startswith("applied"), headers["X-Selproxy-Rerank"]
    assert [hit["_id"] for hit in found["hits"]["hits"]] == want
    assert len(set(np.round(scores, 4))) == len(DOCS)  # no ties: the order is the model's


def test_without_model_dir_the_proxy_stops_with_one_clear_line():
    done = subprocess.run([sys.executable, "-m", "selproxy", "--listen", "127.0.0.1:0", "--upstream",
                           "http://127.0.0.1:9", "--ranker", "bi-encoder"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "cannot build the ranker 'bi-encoder': the bi-encoder ranker needs --model-dir DIR" in done.stderr
