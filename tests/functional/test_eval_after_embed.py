"""The README's relevance steps on a judged collection, in order: ``selproxy
eval load``, ``selproxy embed``, a proxy at its defaults, ``selproxy eval
run``.  The first run after embedding gets the model's whole gain: every
search fully reranked, and nDCG@10 as with no deadline at all.

Cranfield (../shared/data, read in place) cut to its first 300 documents and
the 30 first queries judged on them, so the test takes seconds."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from support.engine import engine_in_thread
from support.proxy import ProxyProcess

pytest.importorskip("onnxruntime")

CRANFIELD = Path(__file__).resolve().parents[3] / "shared" / "data" / "cranfield"
DOCS, TOPICS = 300, 30


def selproxy(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "selproxy", *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


def subset(tmp: Path) -> Dict[str, Path]:
    records = re.findall(r"<doc>.*?</doc>", (CRANFIELD / "cran.all.1400.xml").read_text(), re.S)[:DOCS]
    kept = {re.search(r"<docno>\s*(\d+)\s*</docno>", r).group(1) for r in records}  # type: ignore[union-attr]
    qrels: Dict[str, List[str]] = {}
    for line in (CRANFIELD / "cranqrel.trec.txt").read_text().splitlines():
        qid, _, doc, rel = line.split()
        if doc in kept:
            qrels.setdefault(qid, []).append(line)
    topics = re.findall(r"<top>.*?</top>", (CRANFIELD / "cran.qry.xml").read_text(), re.S)
    # Cranfield's qrels number the queries by position (1, 2, 3...).
    chosen = [str(n) for n in range(1, len(topics) + 1) if str(n) in qrels][:TOPICS]
    paths = {"docs": tmp / "docs.trec", "topics": tmp / "topics.tsv", "qrels": tmp / "qrels.txt"}
    paths["docs"].write_text("\n".join(records) + "\n")
    titles = [" ".join(re.search(r"<title>(.*?)</title>", t, re.S).group(1).split())  # type: ignore[union-attr]
              for t in topics]
    paths["topics"].write_text("".join(f"{n}\t{titles[int(n) - 1]}\n" for n in chosen))
    paths["qrels"].write_text("".join(line + "\n" for n in chosen for line in qrels[n]))
    return paths


@pytest.mark.skipif(not CRANFIELD.is_dir(), reason="the shared Cranfield data is not beside the checkout")
def test_the_first_eval_run_after_embed_gets_the_full_gain(tmp_path):
    files = subset(tmp_path)
    store = str(tmp_path / "vectors.sqlite3")
    with engine_in_thread() as engine_url:
        selproxy("eval", "load", "--upstream", engine_url, "--index", "cranfield", str(files["docs"]))
        selproxy("embed", "--upstream", engine_url, "--index", "cranfield", "--embedding-store", store)
        reports = {}
        for label, extra in (("embedded", ["--embedding-store", store]),
                             ("no deadline", ["--embedding-store", ":memory:", "--rank-deadline", "600"])):
            with ProxyProcess(["--upstream", engine_url, *extra], timeout=60, passthrough_only=False) as proxy:
                out = selproxy("eval", "run", "--upstream", engine_url, "--proxy", f"{label}={proxy.url}",
                               "--index", "cranfield", "--topics", str(files["topics"]),
                               "--qrels", str(files["qrels"]), "--json")
                reports[label] = {run["label"]: run for run in json.loads(out)["runs"]}
    embedded = reports["embedded"]["embedded"]
    unlimited = reports["no deadline"]["no deadline"]
    engine = reports["embedded"]["engine"]
    assert embedded["queries"] == unlimited["queries"] == TOPICS
    assert embedded["rerank"] == {"applied": TOPICS} == unlimited["rerank"]
    # The model's whole gain on the first run (int8 vectors against fp32: within rounding).
    assert embedded["ndcg"] > engine["ndcg"]
    assert abs(embedded["ndcg"] - unlimited["ndcg"]) < 0.002, (embedded["ndcg"], unlimited["ndcg"])
    # Searching cost no embedding: the rank time is the query's alone.
    assert embedded["encode_p50_ms"] < unlimited["encode_p50_ms"]
