"""A ranker named on the command line is built in each worker, after the fork:
an onnxruntime session's threads would not survive one, and the master never
serves.  Runs ``python -m selproxy --workers 2`` against the embedded engine."""
import os
import subprocess
import sys

import pytest
from support.search_e2e import pid_ranker_workers
from support.sync_http import post_json

import selproxy


def test_a_named_ranker_is_built_in_each_worker_not_in_the_master(tmp_path, monkeypatch):
    marks = tmp_path / "marks"
    with pid_ranker_workers(marks, monkeypatch) as proxy:
        built = sorted(int(name) for name in os.listdir(marks))
        assert proxy.proc is not None
        assert len(built) == 2 and proxy.proc.pid not in built, (built, proxy.proc.pid)
        for _ in range(4):
            headers, found = post_json(f"{proxy.url}/docs/_search", {"query": {"match": {"body": "wings"}}},
                                       timeout=20)
            assert headers["X-Selproxy-Rerank"] == "applied"
            assert [hit["_id"] for hit in found["hits"]["hits"]] == ["2", "1"]


def test_an_unknown_ranker_name_fails_when_the_proxy_is_built():
    with pytest.raises(ValueError, match="unknown ranker"):
        selproxy.Proxy(upstream="http://127.0.0.1:9", ranker="no-such-ranker")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_ranker_that_cannot_be_built_stops_the_proxy_with_one_clear_line(tmp_path, workers):
    missing = tmp_path / "no-model-here"
    done = subprocess.run([sys.executable, "-m", "selproxy", "--listen", "127.0.0.1:0", "--upstream",
                           "http://127.0.0.1:9", "--workers", workers, "--ranker", "cross-encoder",
                           "--model-dir", str(missing)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert f"cannot build the ranker 'cross-encoder': no model directory at {missing}" in done.stderr
