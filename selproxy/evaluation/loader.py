"""Index a document collection into an Elasticsearch-compatible engine over ``_bulk``."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional

from ._client import SearchClient, SearchClientError, index_path

__all__ = ("LoadReport", "load_collection", "mappings_for")


@dataclass
class LoadReport:
    """What a load did: documents indexed and rejected, and how long it took."""

    index: str
    indexed: int = 0
    failed: int = 0
    seconds: float = 0.0
    # The first few per-item errors, as the engine reported them.
    errors: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def docs_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0


_FIELD_TYPES = ((bool, "boolean"), (int, "long"), (float, "double"), (str, "text"))


def mappings_for(doc: Dict[str, Any]) -> Dict[str, Any]:
    """Explicit mappings for a document's scalar fields: strings become analysed
    ``text``.  Explicit, because an engine's dynamic mapping may differ (ES maps
    strings to ``text`` plus a ``keyword`` sub-field)."""
    properties: Dict[str, Any] = {}
    for name, value in doc.items():
        if name == "_id":
            continue
        for python_type, es_type in _FIELD_TYPES:  # bool before int: bool is an int
            if isinstance(value, python_type):
                properties[name] = {"type": es_type}
                break
    return {"properties": properties}


def _batches(docs: Iterable[Dict[str, Any]], max_docs: int, max_bytes: int) -> Iterator[List[bytes]]:
    batch: List[bytes] = []
    size = 0
    for doc in docs:
        source = {name: value for name, value in doc.items() if name != "_id"}
        action = {"index": {"_id": str(doc["_id"])}} if "_id" in doc else {"index": {}}
        pair = (json.dumps(action) + "\n" + json.dumps(source, ensure_ascii=False) + "\n").encode()
        if batch and (len(batch) >= max_docs or size + len(pair) > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(pair)
        size += len(pair)
    if batch:
        yield batch


async def load_collection(
    client: SearchClient,
    index: str,
    docs: Iterable[Dict[str, Any]],
    *,
    recreate: bool = False,
    mappings: Optional[Dict[str, Any]] = None,
    batch_docs: int = 500,
    batch_bytes: int = 4 << 20,
    max_errors_kept: int = 5,
) -> LoadReport:
    """Create ``index`` if needed (deleting it first with ``recreate``), send
    ``docs`` in ``_bulk`` batches, then refresh so they are searchable.

    Per-document rejections are counted, not raised: one bad record should not
    abort a large load.  An HTTP error on the bulk request itself does raise
    :class:`SearchClientError`.
    """
    report = LoadReport(index)
    started = time.perf_counter()
    exists = (await client.request("HEAD", index_path(index), expect=(200, 404))).status == 200
    if exists and recreate:
        await client.request("DELETE", index_path(index))
        exists = False

    iterator = iter(docs)
    first = next(iterator, None)
    if first is None:
        report.seconds = time.perf_counter() - started
        return report
    if not exists:
        body = {"mappings": mappings if mappings is not None else mappings_for(first)}
        await client.request("PUT", index_path(index), json_body=body)

    def all_docs() -> Iterator[Dict[str, Any]]:
        yield first
        yield from iterator

    for batch in _batches(all_docs(), batch_docs, batch_bytes):
        reply = await client.request("POST", index_path(index, "_bulk"), ndjson=b"".join(batch))
        items = reply.body.get("items", []) if isinstance(reply.body, dict) else []
        if len(items) != len(batch):
            raise SearchClientError(
                f"_bulk answered {len(items)} items for {len(batch)} actions", reply.status, reply.body
            )
        for item in items:
            result = next(iter(item.values()))
            if result.get("status", 500) < 300:
                report.indexed += 1
            else:
                report.failed += 1
                if len(report.errors) < max_errors_kept:
                    report.errors.append({"_id": result.get("_id"), "error": result.get("error")})
    await client.request("POST", index_path(index, "_refresh"))
    report.seconds = time.perf_counter() - started
    return report
