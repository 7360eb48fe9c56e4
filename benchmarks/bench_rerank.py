"""The neural ranker at the CLI's defaults on Cranfield: cold store, warm
store, after ``selproxy embed``, concurrent clients, and the store at scale.

Everything runs as its own process over loopback: the embedded engine
(``selproxy engine``), and selproxy exactly as ``selproxy --upstream URL``
starts it; the only flag added is ``--embedding-store PATH``, so that each
phase starts from a store of its own (the default is the same kind of file
under ~/.cache).  Cranfield's 225 queries go in sequence, as a user's would.

    python benchmarks/bench_rerank.py                      # all phases, 10-20 min on 2 cores
    python benchmarks/bench_rerank.py --phases cold,embed  # some of them
    python benchmarks/bench_rerank.py --scale 1000000      # store rows for the scale phase

Phases:

- ``cold``: a fresh store.  Per search: rank time against the deadline, the
  outcome (applied, partial, fallback), and the prefix scored against what the
  budget allowed (the time the search had for embedding, over the per-document
  cost it measured).  Then, once the background backlog is empty, a second pass
  of the same queries.
- ``embed``: a fresh store filled by ``selproxy embed``, then a pass: outcomes,
  rank p50/p99 and nDCG@10, against a pass with an unlimited deadline
  (``--rank-deadline 600``: every window embedded at query time) and the engine's
  own order.  Also at 8 and 32 concurrent clients, against the engine directly.
- ``scale``: a store of ``--scale`` synthetic vectors: 50-key window lookups, and
  the proxy's RSS with that store against an empty one.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from relevance import CRANFIELD, free_port  # noqa: E402

from selproxy.evaluation._client import SearchClient  # noqa: E402
from selproxy.evaluation.loader import load_collection  # noqa: E402
from selproxy.evaluation.metrics import ndcg_at, percentile  # noqa: E402
from selproxy.evaluation.run import search_body  # noqa: E402
from selproxy.evaluation.trec import read_collection, read_qrels, read_topics  # noqa: E402
from selproxy.search.config import SearchConfig  # noqa: E402

INDEX = "cranfield"


class Process:
    """A child process started for the benchmark and stopped by its PID."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def rss_mb(self) -> float:
        total = 0
        for pid in [self.proc.pid] + children(self.proc.pid):
            try:
                with open(f"/proc/{pid}/status") as status:
                    for line in status:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def children(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


async def wait_ready(url: str, timeout: float = 180.0) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    async with SearchClient(url, timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                reply = await client.request("GET", "/_selproxy/status")
                if reply.body.get("ready"):
                    return reply.body  # type: ignore[no-any-return]
            except Exception:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready")


async def status(url: str) -> Dict[str, Any]:
    async with SearchClient(url, timeout=10) as client:
        return (await client.request("GET", "/_selproxy/status")).body  # type: ignore[no-any-return]


def start_proxy(engine_url: str, store: str, *extra: str) -> Tuple[Process, str]:
    port = free_port()
    proc = Process([sys.executable, "-m", "selproxy", "--listen", f"127.0.0.1:{port}",
                    "--upstream", engine_url, "--embedding-store", store, *extra])
    return proc, f"http://127.0.0.1:{port}"


def timing(values: Sequence[str]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for value in values:
        for metric in value.split(","):
            name, _, dur = metric.strip().partition(";dur=")
            try:
                out[name] = float(dur)
            except ValueError:
                pass
    return out


async def one_pass(url: str, topics: Sequence[Any], concurrency: int = 1) -> List[Dict[str, Any]]:
    """Every topic once; ``concurrency`` clients share the list."""
    results: List[Optional[Dict[str, Any]]] = [None] * len(topics)
    queue = list(range(len(topics)))

    async def client() -> None:
        async with SearchClient(url, timeout=120) as upstream:
            while queue:
                n = queue.pop(0)
                body = search_body(topics[n].text, ("title", "text"), 10)
                started = time.perf_counter()
                reply = await upstream.request("POST", f"/{INDEX}/_search", json_body=body)
                wall = (time.perf_counter() - started) * 1e3
                header = reply.header_values("X-Selproxy-Rerank")
                results[n] = {"topic": topics[n].id, "wall_ms": wall,
                              "ids": [h["_id"] for h in reply.body["hits"]["hits"]],
                              "rerank": header[0] if header else None,
                              "timing": timing(reply.header_values("Server-Timing"))}

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    done = [r for r in results if r is not None]
    for r in done:
        r["pass_seconds"] = elapsed
    return done


def outcome(value: Optional[str]) -> str:
    if value is None:
        return "none"
    if value.startswith("applied") and "partial=" in value:
        return "partial"
    return value.split(";")[0] if value.startswith("applied") else value


def summary(label: str, results: Sequence[Dict[str, Any]], qrels: Dict[str, Dict[str, int]],
            deadline_ms: float) -> Dict[str, Any]:
    kinds: Dict[str, int] = {}
    for r in results:
        kinds[outcome(r["rerank"])] = kinds.get(outcome(r["rerank"]), 0) + 1
    rank = [r["timing"].get("rank", 0.0) for r in results]
    wall = [r["wall_ms"] for r in results]
    judged = [r for r in results if r["topic"] in qrels]
    ndcg = sum(ndcg_at(r["ids"], qrels[r["topic"]], 10) for r in judged) / max(1, len(judged))
    over = sum(1 for x in rank if x > deadline_ms + 50)
    seconds = results[0]["pass_seconds"] if results else 0.0
    fallbacks = [r["timing"] for r in results if (r["rerank"] or "").startswith("fallback")]
    return {"fallback_timings": fallbacks[:8], "label": label, "searches": len(results), "outcomes": kinds,
            "applied_or_partial": round((kinds.get("applied", 0) + kinds.get("partial", 0))
                                        / max(1, len(results)), 4),
            "fully_applied": round(kinds.get("applied", 0) / max(1, len(results)), 4),
            "over_deadline_50ms": over, "rank_p50_ms": round(percentile(rank, 50), 2),
            "rank_p99_ms": round(percentile(rank, 99), 2), "search_p50_ms": round(percentile(wall, 50), 2),
            "search_p99_ms": round(percentile(wall, 99), 2), "ndcg10": round(ndcg, 4),
            "searches_per_s": round(len(results) / seconds, 1) if seconds else None}


def prefix_against_budget(results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """For searches that embedded documents: what they embedded against what
    their budget allowed at the per-document cost they measured."""
    ratios = []
    for r in results:
        value = r["rerank"] or ""
        if "partial=" not in value:
            continue
        scored = int(value.split("partial=")[1].split("/")[0].split(";")[0])
        t = r["timing"]
        encode, rank = t.get("encode", 0.0), t.get("rank", 0.0)
        if encode <= 0 or scored == 0:
            continue
        per_doc = encode / scored  # an upper bound: the query is in encode too
        allowed = scored + (r["deadline_ms"] - rank) / per_doc
        ratios.append(scored / allowed)
    if not ratios:
        return {"searches": 0}
    return {"searches": len(ratios), "scored_over_allowed_p50": round(statistics.median(ratios), 3),
            "p10": round(percentile(ratios, 10), 3)}


async def drain(url: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        model = (await status(url)).get("search", {}).get("model", {})
        if model.get("background_backlog", 0) == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    return -1.0


async def load(engine_url: str, data: str) -> None:
    async with SearchClient(engine_url, timeout=120) as upstream:
        docs = read_collection(os.path.join(data, "cran.all.1400.xml"))
        await load_collection(upstream, INDEX, docs, recreate=True)


async def phase_cold(engine_url: str, topics: Sequence[Any], qrels: Any, work: str,
                     deadline_ms: float, flags: Sequence[str] = ()) -> Dict[str, Any]:
    proc, url = start_proxy(engine_url, os.path.join(work, f"cold{deadline_ms:.0f}.sqlite3"), *flags)
    try:
        await wait_ready(url)
        first = await one_pass(url, topics)
        for r in first:
            r["deadline_ms"] = deadline_ms
        drained = await drain(url, 600)
        second = await one_pass(url, topics)
        return {"first": summary("cold, first pass", first, qrels, deadline_ms),
                "prefix": prefix_against_budget(first), "backlog_drained_s": round(drained, 1),
                "second": summary("cold, second pass", second, qrels, deadline_ms),
                "rss_mb": round(proc.rss_mb(), 1)}
    finally:
        proc.stop()


def run_embed(engine_url: str, store: str) -> Dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "selproxy", "embed", "--upstream", engine_url,
                           "--index", INDEX, "--embedding-store", store],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return {"exit": done.returncode, "seconds": round(time.perf_counter() - started, 1),
            "last_lines": done.stdout.strip().splitlines()[-3:] + done.stderr.strip().splitlines()[-2:]}


async def phase_embed(engine_url: str, topics: Sequence[Any], qrels: Any, work: str,
                      deadline_ms: float) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    store = os.path.join(work, "embedded.sqlite3")
    out["embed"] = run_embed(engine_url, store)
    proc, url = start_proxy(engine_url, store)
    try:
        await wait_ready(url)
        out["embedded"] = summary("after embed", await one_pass(url, topics), qrels, deadline_ms)
        for clients in (8, 32):
            out[f"embedded_c{clients}"] = summary(f"after embed, {clients} clients",
                                                  await one_pass(url, topics, clients), qrels, deadline_ms)
        out["rss_mb"] = round(proc.rss_mb(), 1)
    finally:
        proc.stop()
    for clients in (1, 8, 32):
        out[f"engine_c{clients}"] = summary(f"engine directly, {clients} clients",
                                            await one_pass(engine_url, topics, clients), qrels, deadline_ms)
    proc, url = start_proxy(engine_url, ":memory:", "--rank-deadline", "600")
    try:
        await wait_ready(url)
        out["unlimited"] = summary("no store, deadline 600 s", await one_pass(url, topics), qrels, 600e3)
    finally:
        proc.stop()
    return out


def phase_scale(engine_url: str, rows: int, work: str) -> Dict[str, Any]:
    import numpy as np

    from selproxy.rankers.minilm import MiniLMRanker
    from selproxy.rankers.store import SQLiteVectorStore, default_store_path

    # The store file the default ranker would open, filled in place.
    identity = MiniLMRanker(embedding_store=":memory:", threads=1).model_identity
    os.environ["XDG_CACHE_HOME"] = os.path.join(work, "xdg")
    path = default_store_path("minilm", identity)
    store = SQLiteVectorStore(path, identity, max_entries=max(rows, 1_000_000))
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    batch = 10_000
    for start in range(0, rows, batch):
        vectors = rng.standard_normal((batch, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.put_many([(("synthetic", str(start + n), "h"), vectors[n]) for n in range(batch)])
    fill = time.perf_counter() - started
    lookups = []
    for _ in range(200):
        ids = rng.integers(0, rows, 50)
        keys = [("synthetic", str(int(i)), "h") for i in ids]
        t = time.perf_counter()
        found = store.get_many(keys)
        lookups.append((time.perf_counter() - t) * 1e3)
        assert all(v is not None for v in found)
    store.close()
    size_mb = os.path.getsize(path) / 2 ** 20
    return {"rows": rows, "fill_s": round(fill, 1), "file_mb": round(size_mb, 1),
            "lookup50_p50_ms": round(percentile(lookups, 50), 3),
            "lookup50_p99_ms": round(percentile(lookups, 99), 3)}


async def phase_scale_rss(engine_url: str, topics: Sequence[Any], qrels: Any, work: str,
                          deadline_ms: float) -> Dict[str, Any]:
    out = {}
    for label, env_cache in (("empty store", os.path.join(work, "xdg-empty")),
                             ("full store", os.path.join(work, "xdg"))):
        os.environ["XDG_CACHE_HOME"] = env_cache
        proc, url = start_proxy(engine_url, "default")
        try:
            await wait_ready(url)
            await one_pass(url, topics[:50])
            out[label] = round(proc.rss_mb(), 1)
        finally:
            proc.stop()
    return out


async def engine_windows(engine_url: str, topics: Sequence[Any]) -> Dict[str, Tuple[List[str], List[float]]]:
    windows = {}
    async with SearchClient(engine_url, timeout=60) as upstream:
        for topic in topics:
            reply = await upstream.request("POST", f"/{INDEX}/_search",
                                           json_body=search_body(topic.text, ("title", "text"), 50))
            hits = reply.body["hits"]["hits"]
            windows[topic.id] = ([h["_id"] for h in hits], [float(h["_score"]) for h in hits])
    return windows


async def phase_quality(engine_url: str, topics: Sequence[Any], qrels: Any, data: str) -> Dict[str, Any]:
    """nDCG@10 of the rerank the proxy computes (the engine's top 50, cosine
    fused with the engine's min-max-normalised score), offline, for token
    limits, fusion weights and the store's vector forms."""
    import numpy as np

    from selproxy.rankers.minilm import MiniLMRanker, fuse_scores
    from selproxy.rankers.store import decode_vector, encode_vector
    from selproxy.search.extract import document_text

    windows = await engine_windows(engine_url, topics)
    docs = {str(d["id"] if "id" in d else d.get("_id")): d for d in read_collection(
        os.path.join(data, "cran.all.1400.xml"))}
    texts = {doc_id: document_text({"_source": {k: v for k, v in d.items() if k not in ("id", "_id")}},
                                   None, 2000) for doc_id, d in docs.items()}
    judged = [t for t in topics if t.id in qrels]
    rows = []
    engine_ndcg = sum(ndcg_at(windows[t.id][0], qrels[t.id], 10) for t in judged) / len(judged)
    rows.append({"setting": "engine order", "ndcg10": round(engine_ndcg, 4)})
    for max_length in (128, 256):
        model = MiniLMRanker(threads=None, max_length=max_length, embedding_store=":memory:")
        ids = sorted(texts)
        started = time.process_time()
        matrix = model.encoder.embed([texts[i] for i in ids])
        cpu = time.process_time() - started
        vectors = dict(zip(ids, matrix))
        queries = dict(zip([t.id for t in judged], model.encoder.embed([t.text for t in judged])))
        forms = ("fp32", "int8", "float16") if max_length == 128 else ("fp32",)
        for form in forms:
            if form == "fp32":
                table = vectors
            else:
                table = {i: decode_vector(*encode_vector(v, form), form) for i, v in vectors.items()}
            for weight in (0.0, 0.3, 0.5):
                total = 0.0
                for t in judged:
                    window, engine = windows[t.id]
                    cos = np.stack([table[i] for i in window]) @ queries[t.id]
                    scores = fuse_scores(cos, engine, weight) if weight else cos.tolist()
                    order = [window[n] for n in sorted(range(len(window)), key=lambda n: -scores[n])]
                    total += ndcg_at(order, qrels[t.id], 10)
                rows.append({"setting": f"{max_length} tokens, {form}, fusion {weight}",
                             "ndcg10": round(total / len(judged), 4),
                             "cpu_s_per_50_docs": round(cpu / len(ids) * 50, 2)})
        model.close()
    return {"rows": rows}


async def benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    topics = read_topics(os.path.join(args.data, "cran.qry.xml"), ids="ordinal")
    qrels = read_qrels(os.path.join(args.data, "cranqrel.trec.txt"))
    deadline_ms = SearchConfig().rank_deadline * 1e3
    engine, engine_url = start_engine()
    results: Dict[str, Any] = {"deadline_ms": deadline_ms}
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as work:
        os.environ["XDG_CACHE_HOME"] = os.path.join(work, "xdg-default")
        try:
            await load_when_up(engine_url, args.data)
            phases = args.phases.split(",")
            if "cold" in phases:
                results["cold"] = await phase_cold(engine_url, topics, qrels, work, deadline_ms)
                print(json.dumps(results["cold"], indent=1), file=sys.stderr)
            for other in args.other_deadline or ():
                # Not the default: labelled with the flag it needs.
                label = f"cold --rank-deadline {other}"
                results[label] = await phase_cold(engine_url, topics, qrels, work, float(other) * 1e3,
                                                  ["--rank-deadline", str(other)])
                print(json.dumps(results[label], indent=1), file=sys.stderr)
            if "embed" in phases:
                results["embed"] = await phase_embed(engine_url, topics, qrels, work, deadline_ms)
                print(json.dumps(results["embed"], indent=1), file=sys.stderr)
            if "quality" in phases:
                results["quality"] = await phase_quality(engine_url, topics, qrels, args.data)
                print(json.dumps(results["quality"], indent=1), file=sys.stderr)
            if "scale" in phases:
                results["scale"] = phase_scale(engine_url, args.scale, work)
                results["scale"]["proxy_rss_mb"] = await phase_scale_rss(engine_url, topics, qrels, work,
                                                                         deadline_ms)
                print(json.dumps(results["scale"], indent=1), file=sys.stderr)
        finally:
            engine.stop()
    return results


async def status_engine(url: str) -> None:
    async with SearchClient(url, timeout=2) as client:
        await client.request("GET", "/")


def start_engine() -> Tuple[Process, str]:
    """``selproxy engine`` on a free port, and its URL."""
    port = free_port()
    return (Process([sys.executable, "-m", "selproxy", "engine", "--listen", f"127.0.0.1:{port}"]),
            f"http://127.0.0.1:{port}")


async def load_when_up(engine_url: str, data: str) -> None:
    """Cranfield from ``data`` indexed, once the engine answers (it has 20 s)."""
    for _ in range(200):
        try:
            await status_engine(engine_url)
            break
        except Exception:
            await asyncio.sleep(0.1)
    await load(engine_url, data)


def report(results: Dict[str, Any], json_path: Optional[str], **meta: Any) -> None:
    """``results`` with a ``meta`` entry (date, commit, machine, Python, and
    ``meta``), printed, and written to ``json_path`` when there is one."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    results["meta"] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                       "commit": commit, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                       "python": platform.python_version(), **meta}
    print(json.dumps(results, indent=1))
    if json_path:
        with open(json_path, "w") as out:
            json.dump(results, out, indent=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=CRANFIELD)
    parser.add_argument("--phases", default="cold,embed,quality,scale")
    parser.add_argument("--scale", type=int, default=1_000_000, help="rows in the scale phase's store")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--other-deadline", action="append", metavar="S",
                        help="also a cold phase with --rank-deadline S (to compare with the default)")
    args = parser.parse_args()
    import uvloop
    report(uvloop.run(benchmark(args)), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
