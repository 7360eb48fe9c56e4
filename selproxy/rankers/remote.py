"""A ranker that asks a ``/rerank`` service: a GPU box or a managed API.

Two request dialects cover the common services:

* ``api="cohere"`` (Cohere ``/v2/rerank``, Jina ``/v1/rerank``, Infinity,
  vLLM): ``{"model", "query", "documents": [str], "top_n",
  "return_documents": false}`` -> ``{"results": [{"index",
  "relevance_score"}]}``;
* ``api="tei"`` (Hugging Face text-embeddings-inference ``/rerank``):
  ``{"query", "texts": [str], "truncate": true}`` -> ``[{"index", "score"}]``.

Either response shape is accepted from either dialect.  ``top_n`` is the
window size, so every document comes back scored; one that a service leaves
out anyway scores below all the others.

The HTTP client is aiohttp: it is asyncio-native (the proxy runs on uvloop),
pools keep-alive connections per host, and bounds a call with one total
timeout.  There is one client per event loop, made on first use.  An
:class:`asyncio.Semaphore` bounds the calls in flight (``concurrency``); a
call beyond that waits, still inside its timeout.  The auth header's value
is read from the environment variable named by ``auth_env``, so the secret
never appears on a command line or in a config file.

The key never reaches a log or an error message either: a service's error
answer is quoted as a bounded excerpt (:data:`ERROR_EXCERPT` characters of
the first :data:`ERROR_READ` bytes) with the key, ``Bearer ...`` and
``api_key=...`` redacted, and the endpoint is quoted without its userinfo
and query (:mod:`selproxy._redact`).
"""
from __future__ import annotations

import asyncio
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .._redact import EXCERPT_CHARS, excerpt, redact_url

__all__ = ("RemoteRanker", "RemoteRankerError")

#: How much of a service's error answer is read, and how much of it quoted.
ERROR_READ = 4096
ERROR_EXCERPT = EXCERPT_CHARS


class RemoteRankerError(RuntimeError):
    """The service answered with an error or with a response we cannot read."""


class RemoteRanker:
    """Reranks through a ``/rerank`` HTTP endpoint; see the module docstring.

    ``url`` is the full endpoint (``http://gpu-box:8080/rerank``).  ``timeout``
    bounds one call in seconds, connection and queueing included;
    ``concurrency`` bounds the calls in flight per event loop.  ``auth_env``
    names the environment variable whose value is sent as
    ``Authorization: <auth_scheme> <value>``.
    """

    name = "remote"

    def __init__(self, url: str, *, api: str = "cohere", model: Optional[str] = None,
                 timeout: float = 2.0, concurrency: int = 8,
                 auth_env: Optional[str] = None, auth_scheme: str = "Bearer",
                 max_chars: Optional[int] = None) -> None:
        if api not in ("cohere", "tei"):
            raise ValueError(f"unknown rerank api {api!r}: use 'cohere' or 'tei'")
        if concurrency < 1 or timeout <= 0:
            raise ValueError("concurrency must be >= 1 and timeout > 0")
        self.url = url
        #: The endpoint as logs and errors show it: no userinfo, no query.
        self.shown_url = redact_url(url)
        self.api = api
        self.model = model
        self.timeout = timeout
        self.concurrency = concurrency
        self.max_chars = max_chars
        self._headers: Dict[str, str] = {"Content-Type": "application/json",
                                         "Accept": "application/json"}
        self._secrets: Tuple[str, ...] = ()
        if auth_env:
            secret = os.environ.get(auth_env)
            if not secret:
                raise ValueError(f"environment variable {auth_env} is not set")
            self._headers["Authorization"] = f"{auth_scheme} {secret}".strip()
            self._secrets = (secret,)
        # One pooled session and semaphore per event loop: aiohttp sessions
        # are bound to the loop they were made on, and each proxy worker
        # process runs its own.
        self._clients: Dict[int, Tuple[asyncio.AbstractEventLoop, Any, asyncio.Semaphore]] = {}

    def _client(self) -> Tuple[Any, asyncio.Semaphore]:
        import aiohttp

        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is None or entry[0] is not loop or entry[1].closed:
            connector = aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300)
            session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, raise_for_status=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout))
            entry = (loop, session, asyncio.Semaphore(self.concurrency))
            self._clients[id(loop)] = entry
        return entry[1], entry[2]

    def _body(self, query: str, docs: Sequence[str]) -> Dict[str, Any]:
        texts = [d[:self.max_chars] for d in docs] if self.max_chars else list(docs)
        if self.api == "tei":
            return {"query": query, "texts": texts, "truncate": True}
        body: Dict[str, Any] = {"query": query, "documents": texts, "top_n": len(texts),
                                "return_documents": False}
        if self.model:
            body["model"] = self.model
        return body

    async def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        """One score per document, from the service."""
        if not docs:
            return []
        session, slots = self._client()
        body = self._body(query, docs)

        async def call() -> Any:
            async with slots:
                async with session.post(self.url, json=body) as response:
                    if response.status != 200:
                        # Bounded, and redacted: a service may echo the key it was sent.
                        head = await response.content.read(ERROR_READ)
                        raise RemoteRankerError(
                            f"{self.shown_url} answered {response.status}: {self._quote(head)}")
                    return await response.json(content_type=None)

        # The client timeout covers the request; this one covers the wait
        # for a slot as well.
        payload = await asyncio.wait_for(call(), self.timeout)
        return self._scores(payload, len(docs))

    async def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]]) -> List[List[float]]:
        """The services take one query per call: the calls go out together."""
        return list(await asyncio.gather(*(self.rank(q, d) for q, d in requests)))

    def _scores(self, payload: Any, count: int) -> List[float]:
        results = payload.get("results") if isinstance(payload, dict) else payload
        if not isinstance(results, list):
            raise RemoteRankerError(f"no results in the response from {self.shown_url}")
        scores: List[Optional[float]] = [None] * count
        for item in results:
            try:
                index = int(item["index"])
                raw = item["relevance_score"] if "relevance_score" in item else item["score"]
                score = float(raw)
            except (KeyError, TypeError, ValueError):
                raise RemoteRankerError(
                    f"unreadable result {self._quote(repr(item))} from {self.shown_url}") from None
            if not 0 <= index < count or not math.isfinite(score):
                raise RemoteRankerError(
                    f"result {self._quote(repr(item))} out of range from {self.shown_url}")
            scores[index] = score
        known = [s for s in scores if s is not None]
        floor = (min(known) - 1.0) if known else 0.0
        return [floor if s is None else s for s in scores]

    def _quote(self, text: Any) -> str:
        """A bounded excerpt of what the service sent, secrets redacted."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        return excerpt(text, self._secrets, limit=ERROR_EXCERPT)

    async def aclose(self) -> None:
        """Close this loop's pooled client."""
        loop = asyncio.get_running_loop()
        entry = self._clients.pop(id(loop), None)
        if entry is not None:
            await entry[1].close()
