"""Bulk-indexing throughput of the embedded engine (``selproxy.engine``).

Starts ``selproxy engine`` in a subprocess on a free loopback port (or uses
``--url``), bulk-indexes ``--docs`` short generated documents through HTTP
``_bulk`` in batches of ``--batch``, and prints documents per second::

    python benchmarks/bench_engine_bulk.py --docs 100000 --batch 1000 [--data FILE] [--json]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

WORDS = ("search engine proxy rerank query index document field text keyword score ranking model vector "
         "token phrase filter result hit page sort match term boolean range date number value cluster shard "
         "fast small quiet river mountain forest ocean cloud light stone paper garden window letter music "
         "winter summer morning evening city village market bridge harbor island desert valley").split()


def documents(count: int, seed: int) -> Iterator[dict]:
    rng = random.Random(seed)
    for i in range(count):
        yield {"title": " ".join(rng.choices(WORDS, k=rng.randint(3, 7))),
               "body": " ".join(rng.choices(WORDS, k=rng.randint(8, 20))),
               "tag": rng.choice(("news", "blog", "paper", "manual")),
               "views": rng.randint(0, 100000)}


def bulk_bodies(count: int, batch: int, index: str, seed: int) -> List[bytes]:
    bodies, lines = [], []
    for i, doc in enumerate(documents(count, seed)):
        lines.append(json.dumps({"index": {"_index": index, "_id": str(i)}}))
        lines.append(json.dumps(doc))
        if len(lines) == 2 * batch:
            bodies.append(("\n".join(lines) + "\n").encode())
            lines = []
    if lines:
        bodies.append(("\n".join(lines) + "\n").encode())
    return bodies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_engine(data: str) -> Tuple[subprocess.Popen, str]:
    port = free_port()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "selproxy.engine", "--listen", f"127.0.0.1:{port}",
                             "--data", data, "--log-level", "warning"], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the engine did not start within 30 s")


def send(url: str, bodies: List[bytes], errors: List[str]) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    for body in bodies:
        conn.request("POST", "/_bulk", body=body, headers={"Content-Type": "application/x-ndjson"})
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        if resp.status != 200 or payload.get("errors"):
            errors.append(f"status {resp.status}: {str(payload)[:300]}")
    conn.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents to index (default %(default)s)")
    parser.add_argument("--batch", type=int, default=1000, help="documents per _bulk request (default %(default)s)")
    parser.add_argument("--clients", type=int, default=1, help="concurrent HTTP clients (default %(default)s)")
    parser.add_argument("--data", default=":memory:", help="engine --data (default %(default)s)")
    parser.add_argument("--url", help="use a running engine instead of starting one")
    parser.add_argument("--index", default="bench")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    bodies = bulk_bodies(args.docs, args.batch, args.index, args.seed)
    proc = None
    url = args.url
    if url is None:
        proc, url = start_engine(args.data)
    try:
        errors: List[str] = []
        shares = [bodies[i::args.clients] for i in range(args.clients)]
        started = time.perf_counter()
        threads = [threading.Thread(target=send, args=(url, share, errors)) for share in shares]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    result = {"docs": args.docs, "batch": args.batch, "clients": args.clients, "data": args.data,
              "seconds": round(elapsed, 3), "docs_per_s": round(args.docs / elapsed, 1), "errors": len(errors),
              "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "date": time.strftime("%Y-%m-%d")}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.docs} docs in {elapsed:.2f} s: {result['docs_per_s']:.0f} docs/s "
              f"(batch {args.batch}, {args.clients} client(s), data {args.data}, errors {len(errors)})")
    for err in errors[:3]:
        print("error:", err, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
