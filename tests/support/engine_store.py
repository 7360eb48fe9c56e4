"""The embedded engine's store without HTTP, for unit tests: one in-memory
store on the calling thread, and ``_bulk`` lines written straight into it."""
from __future__ import annotations

import json
from typing import Any, Dict, Iterator

from selproxy.engine.app import _bulk_txn
from selproxy.engine.store import Store


def memory_store() -> Iterator[Store]:
    """An in-memory store, loaded, closed after the ``yield`` (a fixture's body)."""
    store = Store(":memory:", readers=1)
    store._load()
    yield store
    store.close_sync()


def bulk(store: Store, *lines: Dict[str, Any]) -> Dict[str, Any]:
    """Run NDJSON ``_bulk`` lines in one write transaction; the bulk response."""
    raw = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    result: Dict[str, Any] = store._write_sync(_bulk_txn, (store, raw, None))
    return result
