"""A fast stand-in bi-encoder for ``selproxy embed`` tests, and a gate to interrupt it on cue.

``GatedRanker`` has what ``selproxy embed`` uses of a bi-encoder (``encoder.embed``, ``store``,
``close``) without loading a model: a text's vector is derived from its hash.  With
``gate_dir``, the encoder's second call creates ``<gate_dir>/second-batch`` and waits for
``<gate_dir>/go`` before it returns, so a test can send SIGINT while a batch is in hand.
"""
import hashlib
import os
import time
from typing import List, Optional, Sequence

import numpy as np

from selproxy.rankers.store import open_store

DIM = 8


def text_vector(text: str) -> np.ndarray:
    digest = hashlib.sha256(text.encode("utf-8")).digest()[:DIM]
    vector = np.frombuffer(digest, dtype=np.uint8).astype(np.float32) - 127.5
    return vector / np.linalg.norm(vector)


class HashEncoder:
    def __init__(self, gate_dir: Optional[str]) -> None:
        self.gate_dir = gate_dir
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        if self.gate_dir and self.calls == 2:
            open(os.path.join(self.gate_dir, "second-batch"), "w").close()
            go = os.path.join(self.gate_dir, "go")
            deadline = time.monotonic() + 60
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.01)
        return np.stack([text_vector(t) for t in texts])


class GatedRanker:
    name = "gated"
    identity = "gated-test-encoder:v1"

    def __init__(self, embedding_store: str = "default", gate_dir: Optional[str] = None,
                 store_upstream: Optional[str] = None, background_queue: int = 0) -> None:
        self.encoder = HashEncoder(gate_dir)
        self.model_identity = self.identity
        self.store = open_store(embedding_store, self.name, self.identity, upstream=store_upstream)

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        q = text_vector(query)
        return [float(text_vector(d) @ q) for d in docs]

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
