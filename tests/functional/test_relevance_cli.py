"""The relevance-operations flags: mistakes are one line and exit 2."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("flags,message", [
    (["--interleave", "bm25"], "--interleave takes two arms, A,B, not 'bm25'"),
    (["--interleave", "bm25,bm25"], "--interleave needs two different arms"),
    (["--interleave", "bm25,no-such-ranker"], "unknown ranker 'no-such-ranker'"),
    (["--ranker", "bm25", "--capture", "c.jsonl", "--capture-rate", "2"], "--capture-rate must be within 0..1"),
    (["--ranker", "none", "--capture", "c.jsonl"], "--interleave and --capture need a ranker"),
    (["--interleave", "bm25,engine", "--interleave-ttl", "0"], "--interleave-ttl must be positive"),
])
def test_a_wrong_relevance_flag_is_one_line(flags, message):
    done = subprocess.run([sys.executable, "-m", "selproxy", "--listen", "127.0.0.1:0", "--upstream",
                           "http://127.0.0.1:9", *flags], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("selproxy: error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
