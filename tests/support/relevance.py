"""Helpers of the relevance-operations tests: small JSON requests over
urllib, a small index, and a proxy on its own loop in a thread."""
from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from typing import Any, Dict, Optional

import selproxy
from selproxy.search import SearchConfig
from support.aio import run

WORDS = ["wing", "lift", "drag", "flow", "shock", "wave", "boundary", "layer", "heat", "jet"]
DOCS = {str(i): " ".join(WORDS[j % len(WORDS)] for j in range(i, i + 1 + i % 4)) + " wing"
        for i in range(20)}


class ReversingRanker:
    """The window in reverse engine order."""

    def rank(self, query, docs):
        return [float(i) for i in range(len(docs))]


def post(url: str, body: Any, headers: Optional[Dict[str, str]] = None):
    """(status, headers, decoded JSON) of a POST; error statuses too."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as res:
            return res.status, dict(res.headers), json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as res:
        return json.loads(res.read())


def index_docs(engine_url: str) -> None:
    lines = "".join(json.dumps({"index": {"_index": "docs", "_id": i}}) + "\n" + json.dumps({"body": t}) + "\n"
                    for i, t in DOCS.items())
    post(f"{engine_url}/_bulk?refresh=true", lines.encode(), {"Content-Type": "application/x-ndjson"})


class proxy_in_thread:
    """``with proxy_in_thread(engine_url, ranker, topn=..., capture=...) as url``:
    a proxy on its own loop in a thread, stopped (its capture flushed) when
    the block ends."""

    def __init__(self, engine_url: str, ranker: Any, **search: Any) -> None:
        self.engine_url, self.ranker, self.search = engine_url, ranker, search

    def __enter__(self) -> str:
        ready, self.stop, urls = threading.Event(), threading.Event(), []

        async def main() -> None:
            async with selproxy.Proxy(upstream=self.engine_url, listen="127.0.0.1:0", ranker=self.ranker,
                                      search=SearchConfig(**self.search)) as proxy:
                urls.append(proxy.url)
                ready.set()
                while not self.stop.is_set():
                    await asyncio.sleep(0.02)

        self.thread = threading.Thread(target=lambda: run(main(), timeout=300), daemon=True)
        self.thread.start()
        assert ready.wait(60), "the proxy did not start"
        return urls[0]

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
