"""How long decoding a claimed body holds the loop, and what the bounds leave.

    python benchmarks/bench_json_bounds.py [--repeat N] [--json]

For 16 MiB bodies of several shapes: orjson, the stdlib, and
``selproxy.search._json.loads`` (which refuses what is past its bounds before
decoding); then the loop's longest stall while orjson decodes on a thread
(orjson holds the GIL, so a thread does not free the loop).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Callable, Dict

import orjson

from selproxy.search import _json

MIB16 = 16 << 20


def bodies() -> Dict[str, bytes]:
    return {
        "terms query, 900k ids": json.dumps({"query": {"bool": {
            "filter": {"terms": {"_id": [f"id{k:08d}" for k in range(900_000)]}},
            "must": {"match": {"t": "x"}}}}}).encode(),
        "16 MiB of [],": b"[" + b"[]," * (MIB16 // 3 - 1) + b"[]]",
        "16 MiB of 1,": b"[" + b"1," * (MIB16 // 2 - 1) + b"1]",
        "249,999 empty arrays": b"[" + b"[]," * 249_997 + b"[]]",
    }


def best(fn: Callable[[bytes], object], data: bytes, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            fn(data)
        except ValueError:
            pass
        times.append(time.perf_counter() - started)
    return min(times)


async def loop_stall(data: bytes) -> float:
    stalls = []

    async def ticker() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append(time.perf_counter() - started)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    stalls.clear()
    await asyncio.to_thread(orjson.loads, data)
    task.cancel()
    return max(stalls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for name, data in bodies().items():
        rows.append({"body": name, "mib": round(len(data) / 2 ** 20, 1),
                     "orjson_s": best(orjson.loads, data, args.repeat),
                     "stdlib_s": best(json.loads, data, args.repeat),
                     "selproxy_s": best(_json.loads, data, args.repeat)})
    stall = asyncio.run(loop_stall(bodies()["16 MiB of [],"]))
    if args.json:
        print(json.dumps({"rows": rows, "thread_decode_loop_stall_s": stall}))
        return
    print(f"{'body':24s} {'MiB':>5s} {'orjson':>8s} {'stdlib':>8s} {'selproxy':>9s}")
    for r in rows:
        print(f"{r['body']:24s} {r['mib']:5.1f} {r['orjson_s']:8.3f} {r['stdlib_s']:8.3f} {r['selproxy_s']:9.3f}")
    print(f"loop stall while orjson decodes 16 MiB of [], on a thread: {stall:.3f} s")


if __name__ == "__main__":
    main()
