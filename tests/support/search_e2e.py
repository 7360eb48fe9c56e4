"""Steps the end-to-end search tests share: a few documents in an engine in a
thread, and a proxy process that searches them.

* :func:`engine_and_proxy_orders`: :data:`DOCS` indexed, :data:`QUERY` asked of
  the engine and of a proxy started with the given arguments (a ranker);
* :func:`pid_ranker_workers`: a proxy of two workers whose ranker
  (``support/pid_ranker.py``) marks each process it is built in.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

from support.engine import engine_in_thread
from support.proxy import ProxyProcess
from support.sync_http import post_json

SUPPORT = os.path.dirname(os.path.abspath(__file__))

#: Every one has "the", so the engine returns all four for QUERY.
DOCS = {"1": "the dog sat on the mat", "2": "a bird flew over the rug", "3": "the cat sat on the cat",
        "4": "where is the mat"}
QUERY = "the cat"


def engine_and_proxy_orders(args: List[str], proxy_timeout: float = 120.0) -> Tuple[List[str], Any, List[str]]:
    """The engine's own order of :data:`DOCS` for :data:`QUERY`, and the
    headers and order of the answer of a proxy started with ``args``."""
    search = {"query": {"match": {"body": QUERY}}}
    with engine_in_thread() as engine_url:
        for doc_id, body in DOCS.items():
            post_json(f"{engine_url}/docs/_doc/{doc_id}?refresh=true", {"body": body}, timeout=60)
        _, direct = post_json(f"{engine_url}/docs/_search", search, timeout=60)
        assert len(direct["hits"]["hits"]) == len(DOCS)
        with ProxyProcess(["--upstream", engine_url, "--rank-deadline", "60", "--text-field", "body", *args],
                          timeout=proxy_timeout) as proxy:
            headers, found = post_json(f"{proxy.url}/docs/_search", search, timeout=60)
    return [hit["_id"] for hit in direct["hits"]["hits"]], headers, [hit["_id"] for hit in found["hits"]["hits"]]


@contextlib.contextmanager
def pid_ranker_workers(marks: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProxyProcess]:
    """A proxy of two workers, both serving, over an engine holding two
    documents (``2``, the shorter, ranks first); its ranker writes a file
    named after each pid it is built in into ``marks`` (made here)."""
    marks.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SUPPORT, os.environ.get("PYTHONPATH", "")]))
    with engine_in_thread() as engine_url:
        post_json(f"{engine_url}/docs/_doc/1?refresh=true", {"body": "a long document about wings and lift"})
        post_json(f"{engine_url}/docs/_doc/2?refresh=true", {"body": "wings"})
        args = ["--upstream", engine_url, "--workers", "2", "--ranker", "pid_ranker:PidRanker",
                "--ranker-option", f"directory={marks}"]
        with ProxyProcess(args) as proxy:
            proxy.wait_for_workers(2)
            yield proxy
