"""A ranker whose warm-up lasts until the test says so.

``GatedWarmupRanker(gate=PATH)`` warms up by waiting for the file ``gate`` to
exist (up to a minute), so a test holds the proxy "warming up" for exactly as
long as it needs, with no timing guess.  It ranks shorter documents first.
"""
import os
import time
from typing import List, Sequence


class GatedWarmupRanker:
    name = "gated"

    def __init__(self, gate: str) -> None:
        self.gate = gate

    def warmup(self) -> None:
        deadline = time.monotonic() + 60.0
        while not os.path.exists(self.gate) and time.monotonic() < deadline:
            time.sleep(0.02)

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        return [-float(len(doc)) for doc in docs]
