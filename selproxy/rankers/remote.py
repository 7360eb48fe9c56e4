"""A ranker that asks a rerank service: a GPU box, a managed API, or another
selproxy's ``serve-ranker``.

Four request dialects (``api``) cover the common services:

* ``cohere`` (Cohere ``/v2/rerank``, Jina ``/v1/rerank``, Infinity, vLLM,
  ``selproxy serve-ranker``): ``{"model", "query", "documents": [str],
  "top_n", "return_documents": false}`` -> ``{"results": [{"index",
  "relevance_score"}]}``.  Cohere's own ``/v2/rerank`` requires ``model``
  (https://docs.cohere.com/reference/rerank), so a URL ending in
  ``/v2/rerank`` without one is refused at start;
* ``tei`` (Hugging Face text-embeddings-inference ``/rerank``, ``selproxy
  serve-ranker``): ``{"query", "texts": [str], "truncate": true,
  "raw_scores": true}`` -> ``[{"index", "score"}]``.  Raw scores: TEI's
  default squashes them through a sigmoid, which ties strong matches at 1.0;
* ``elasticsearch`` (``POST _inference/rerank/<inference_id>``):
  ``{"query", "input": [str]}`` -> ``{"rerank": [{"index",
  "relevance_score", "text"?}]}``;
* ``nim`` (NVIDIA NIM ``/v1/ranking``): ``{"model", "query": {"text"},
  "passages": [{"text"}], "truncate": "END"}`` -> ``{"rankings": [{"index",
  "logit"}]}``.

Any of these response shapes is accepted from any dialect.  Every document
comes back scored (``top_n`` is the call's size); one that a service leaves
out anyway scores below all the others.

**Batches.**  Services cap the documents of one call: TEI's
``--max-client-batch-size`` is 32 by default, so a 50-hit window must go as
two calls.  ``max_batch`` is that cap (:data:`DEFAULT_MAX_BATCH` by ``api``;
0 means no cap); a larger window is split into calls of at most
``max_batch`` documents that go out together, and their scores are merged in
window order.  This assumes the service scores each (query, document) pair on
its own, as cross-encoders do.

**Endpoints.**  ``url`` may be a list: each call goes to the endpoint with
the fewest calls pending (ties in turn).  An endpoint that fails a call (it
refuses or drops the connection, times out, or answers 5xx) is skipped for
``cooldown`` seconds, and the call goes at once to another endpoint, within
the deadline; when every endpoint is cooling down, the one that recovers
first is tried anyway.

**Retries.**  A 429 or 503 is retried ``retries`` times (once by default):
after ``Retry-After`` seconds when the answer gives them and they fit in
the time left, at once when it gives none; a wait that does not fit fails
the call (the search falls back) instead of overrunning.

**Deadline.**  A call's deadline is ``timeout`` seconds, or the search's own
rank deadline when that is shorter (the proxy passes it); it covers waiting
for a slot, every attempt and every retry.  At most ``concurrency`` calls are
in flight per event loop, over all endpoints.

**Tracing.**  The search's ``traceparent`` (and ``tracestate``) go with every
call (:mod:`selproxy._trace`).

The HTTP client is aiohttp: asyncio-native, keep-alive pools per host, one
client per event loop, made on first use.  The auth header's value is read
from the environment variable named by ``auth_env``, so the secret never
appears on a command line or in a config file.  The key never reaches a log
or an error message either: a service's error answer is quoted as a bounded
excerpt (:data:`ERROR_EXCERPT` characters of the first :data:`ERROR_READ`
bytes) with the key, ``Bearer ...`` and ``api_key=...`` redacted, and the
endpoint is quoted without its userinfo and query (:mod:`selproxy._redact`).
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import time
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Set, Tuple, Union
from urllib.parse import urlsplit

from .._redact import EXCERPT_CHARS, excerpt, redact_url
from .._trace import outgoing_headers

__all__ = ("RemoteRanker", "RemoteRankerError", "DEFAULT_MAX_BATCH")

#: How much of a service's error answer is read, and how much of it quoted.
ERROR_READ = 4096
ERROR_EXCERPT = EXCERPT_CHARS
#: The largest answer read from a service (a 1000-document answer is ~60 kB).
MAX_RESPONSE = 8 * 1024 * 1024

#: The documents one call may carry, by ``api``, from each service's documentation:
#: TEI ``--max-client-batch-size`` defaults to 32
#: (https://huggingface.co/docs/text-embeddings-inference/cli_arguments);
#: Cohere caps a call at 10,000 documents and recommends at most 1,000
#: (https://docs.cohere.com/docs/reranking-best-practices);
#: NIM takes up to 512 passages per request
#: (https://docs.nvidia.com/nim/nemo-retriever/text-reranking/latest/using-reranking.html);
#: Elasticsearch documents no cap for ``_inference/rerank`` (it batches for the
#: service behind it), so nothing is split (0).
DEFAULT_MAX_BATCH: Mapping[str, int] = {"cohere": 1000, "tei": 32, "elasticsearch": 0, "nim": 512}

RerankApi = Literal["cohere", "tei", "elasticsearch", "nim"]

#: Answers worth one more try: rate-limited, or unavailable for now.
RETRY_STATUSES = (429, 503)


class RemoteRankerError(RuntimeError):
    """The service answered with an error or with a response we cannot read."""

    def __init__(self, message: str, status: int = 0, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class _EndpointFailed(Exception):
    """An attempt failed in a way that says the endpoint is unwell."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Endpoint:
    __slots__ = ("url", "shown", "pending", "picks", "calls", "failures", "down_until")

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = redact_url(url)
        self.pending = 0
        self.picks = 0
        self.calls = 0
        self.failures = 0
        self.down_until = 0.0


def _retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` in seconds (RFC 9110 10.2.3), when given as seconds.
    An HTTP date is not worth parsing for a deadline of a few seconds."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class RemoteRanker:
    """Reranks through one or more rerank endpoints; see the module docstring.

    ``url`` is the full endpoint (``http://gpu-box:8080/rerank``), or a list
    of them.  ``timeout`` bounds one search's scoring in seconds, queueing,
    retries and every call included; ``connect_timeout`` bounds opening a
    connection, so a dead host is skipped quickly.  ``concurrency`` bounds the
    calls in flight per event loop.  ``max_batch`` caps the documents per call
    (None: the ``api``'s default, 0: no cap).  ``cooldown`` is how long a
    failing endpoint is skipped; ``retries`` how often a 429/503 is retried.
    ``auth_env`` names the environment variable whose value is sent as
    ``Authorization: <auth_scheme> <value>``.  ``max_chars`` truncates each
    document before it is sent.
    """

    name = "remote"

    def __init__(self, url: Union[str, List[str]], *, api: RerankApi = "cohere", model: Optional[str] = None,
                 timeout: float = 2.0, concurrency: int = 8, max_batch: Optional[int] = None,
                 cooldown: float = 5.0, retries: int = 1, connect_timeout: float = 1.0,
                 auth_env: Optional[str] = None, auth_scheme: str = "Bearer",
                 max_chars: Optional[int] = None) -> None:
        if api not in DEFAULT_MAX_BATCH:
            raise ValueError(f"unknown rerank api {api!r}: use one of {', '.join(DEFAULT_MAX_BATCH)}")
        if concurrency < 1 or timeout <= 0 or connect_timeout <= 0:
            raise ValueError("concurrency must be >= 1, timeout and connect_timeout > 0")
        if (max_batch is not None and max_batch < 0) or cooldown < 0 or retries < 0:
            raise ValueError("max_batch, cooldown and retries must be >= 0")
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("remote ranker needs at least one url")
        for each in urls:
            parts = urlsplit(each)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"url: expected http[s]://HOST[:PORT]/PATH, got {redact_url(each)!r}")
            if api == "cohere" and not model and parts.path.rstrip("/").endswith("/v2/rerank"):
                raise ValueError(f"{redact_url(each)} is Cohere's /v2/rerank, which needs a model: "
                                 "give --ranker-option model=NAME (for example rerank-v3.5)")
        self.endpoints = [_Endpoint(u) for u in dict.fromkeys(urls)]
        #: The first endpoint, as logs and errors show it: no userinfo, no query.
        self.url = urls[0]
        self.shown_url = self.endpoints[0].shown
        self.api = api
        self.model = model
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.concurrency = concurrency
        self.max_batch = DEFAULT_MAX_BATCH[api] if max_batch is None else max_batch
        self.cooldown = cooldown
        self.retries = retries
        self.max_chars = max_chars
        self.counters: Dict[str, int] = {"searches": 0, "calls": 0, "retries": 0, "failovers": 0}
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

    # -- requests ----------------------------------------------------------

    def _body(self, query: str, texts: Sequence[str]) -> Dict[str, Any]:
        body: Dict[str, Any]
        if self.api == "tei":
            return {"query": query, "texts": list(texts), "truncate": True, "raw_scores": True}
        if self.api == "elasticsearch":
            return {"query": query, "input": list(texts)}
        if self.api == "nim":
            body = {"query": {"text": query}, "passages": [{"text": t} for t in texts], "truncate": "END"}
        else:
            body = {"query": query, "documents": list(texts), "top_n": len(texts),
                    "return_documents": False}
        if self.model:
            body["model"] = self.model
        return body

    async def rank(self, query: str, docs: Sequence[str], *, timeout: Optional[float] = None) -> List[float]:
        """One score per document, from the service, within ``timeout``
        seconds (the search's deadline) or this ranker's own, the shorter."""
        if not docs:
            return []
        budget = self.timeout if timeout is None else max(0.0, min(self.timeout, timeout))
        # This wait covers the wait for a slot as well as the calls.
        return await asyncio.wait_for(self._rank(query, docs, budget), budget)

    async def batch_rank(self, requests: Sequence[Tuple[str, Sequence[str]]], *,
                         timeout: Optional[float] = None) -> List[List[float]]:
        """The services take one query per call: the calls go out together."""
        return list(await asyncio.gather(*(self.rank(q, d, timeout=timeout) for q, d in requests)))

    async def _rank(self, query: str, docs: Sequence[str], budget: float) -> List[float]:
        session, slots = self._client()
        self.counters["searches"] += 1
        texts = [d[:self.max_chars] for d in docs] if self.max_chars else list(docs)
        deadline = time.monotonic() + budget
        step = self.max_batch or len(texts)
        starts = range(0, len(texts), step)
        calls = [asyncio.ensure_future(self._call(session, slots, query, texts[s:s + step], deadline))
                 for s in starts]
        try:
            parts = await asyncio.gather(*calls)
        except BaseException:
            for call in calls:  # one call failed the search: the others are moot
                call.cancel()
            raise
        scores: List[Optional[float]] = []
        for part in parts:
            scores.extend(part)
        known = [s for s in scores if s is not None]
        floor = (min(known) - 1.0) if known else 0.0
        return [floor if s is None else s for s in scores]

    def _pick(self, tried: Set[_Endpoint]) -> Optional[_Endpoint]:
        """The endpoint with the fewest pending calls, of those not cooling
        down; when all are, the first to recover.  None when all were tried."""
        fresh = [e for e in self.endpoints if e not in tried]
        if not fresh:
            return None
        now = time.monotonic()
        healthy = [e for e in fresh if e.down_until <= now]
        if not healthy:
            return min(fresh, key=lambda e: e.down_until)
        return min(healthy, key=lambda e: (e.pending, e.picks))

    async def _call(self, session: Any, slots: asyncio.Semaphore, query: str, texts: List[str],
                    deadline: float) -> List[Optional[float]]:
        """Scores for one batch: failover across endpoints, and the retry."""
        body = json.dumps(self._body(query, texts), ensure_ascii=False).encode("utf-8")
        tried: Set[_Endpoint] = set()
        retries = self.retries
        while True:
            wait = 0.0
            async with slots:
                endpoint = self._pick(tried)
                if endpoint is None:  # cannot happen: the last failure is raised below
                    raise RemoteRankerError("no rerank endpoint left to try")
                try:
                    return await self._post(session, endpoint, body, len(texts), deadline)
                except _EndpointFailed as failed:
                    self._cool(endpoint)
                    tried.add(endpoint)
                    if len(tried) == len(self.endpoints) or time.monotonic() >= deadline:
                        raise failed.error from None
                    self.counters["failovers"] += 1
                    continue
                except RemoteRankerError as error:
                    if error.status not in RETRY_STATUSES:
                        raise
                    if error.status == 503:
                        self._cool(endpoint)
                    if retries <= 0:
                        raise
                    retries -= 1
                    wait = error.retry_after or 0.0
                    if wait >= deadline - time.monotonic():
                        raise  # Retry-After does not fit in the deadline: fall back now
                    self.counters["retries"] += 1
            if wait:
                await asyncio.sleep(wait)

    def _cool(self, endpoint: _Endpoint) -> None:
        endpoint.failures += 1
        endpoint.down_until = time.monotonic() + self.cooldown

    async def _post(self, session: Any, endpoint: _Endpoint, body: bytes, count: int,
                    deadline: float) -> List[Optional[float]]:
        import aiohttp

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise asyncio.TimeoutError()
        timeout = aiohttp.ClientTimeout(total=remaining, sock_connect=min(remaining, self.connect_timeout))
        endpoint.pending += 1
        endpoint.picks += 1
        endpoint.calls += 1
        self.counters["calls"] += 1
        try:
            async with session.post(endpoint.url, data=body, headers=outgoing_headers(),
                                    timeout=timeout) as response:
                if response.status != 200:
                    # Bounded, and redacted: a service may echo the key it was sent.
                    head = await response.content.read(ERROR_READ)
                    error = RemoteRankerError(
                        f"{endpoint.shown} answered {response.status}: {self._quote(head)}",
                        response.status, _retry_after(response.headers.get("Retry-After")))
                    if response.status >= 500 and response.status not in RETRY_STATUSES:
                        raise _EndpointFailed(error)
                    raise error
                payload = await self._read_json(response, endpoint)
        except aiohttp.ClientConnectionError as exc:  # refused, reset, dropped; connect timeout
            raise _EndpointFailed(exc) from None
        except asyncio.TimeoutError as exc:
            if deadline - time.monotonic() > 0:  # aiohttp's own timeout, not the search's
                raise _EndpointFailed(exc) from None
            self._cool(endpoint)  # it took the whole deadline: skip it for a while
            raise
        finally:
            endpoint.pending -= 1
        return self._scores(payload, count, endpoint)

    async def _read_json(self, response: Any, endpoint: _Endpoint) -> Any:
        declared = response.content_length
        if declared is not None and declared > MAX_RESPONSE:
            raise RemoteRankerError(f"{endpoint.shown} sent {declared} bytes, more than {MAX_RESPONSE}")
        chunks: List[bytes] = []
        size = 0
        while True:
            chunk = await response.content.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_RESPONSE:
                raise RemoteRankerError(f"{endpoint.shown} sent more than {MAX_RESPONSE} bytes")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError):
            raise RemoteRankerError(f"{endpoint.shown} sent a response that is not JSON") from None

    # -- responses ---------------------------------------------------------

    def _scores(self, payload: Any, count: int, endpoint: _Endpoint) -> List[Optional[float]]:
        if isinstance(payload, dict):
            results = next((payload[k] for k in ("results", "rerank", "rankings") if k in payload), None)
        else:
            results = payload
        if not isinstance(results, list):
            raise RemoteRankerError(f"no results in the response from {endpoint.shown}")
        scores: List[Optional[float]] = [None] * count
        for item in results:
            try:
                index = int(item["index"])
                key = next(k for k in ("relevance_score", "score", "logit") if k in item)
                score = float(item[key])
            except (KeyError, TypeError, ValueError, StopIteration):
                raise RemoteRankerError(
                    f"unreadable result {self._quote(repr(item))} from {endpoint.shown}") from None
            if not 0 <= index < count or not math.isfinite(score):
                raise RemoteRankerError(
                    f"result {self._quote(repr(item))} out of range from {endpoint.shown}")
            scores[index] = score
        return scores

    def _quote(self, text: Any) -> str:
        """A bounded excerpt of what the service sent, secrets redacted."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        return excerpt(text, self._secrets, limit=ERROR_EXCERPT)

    def stats(self) -> Dict[str, Any]:
        """Counters for the status page: calls, retries, failovers, and each endpoint."""
        now = time.monotonic()
        stats: Dict[str, Any] = dict(self.counters)
        stats["api"] = self.api
        stats["max_batch"] = self.max_batch
        stats["endpoints"] = [{"url": e.shown, "pending": e.pending, "calls": e.calls,
                               "failures": e.failures, "cooling_down": e.down_until > now}
                              for e in self.endpoints]
        return stats

    async def aclose(self) -> None:
        """Close this loop's pooled client."""
        loop = asyncio.get_running_loop()
        entry = self._clients.pop(id(loop), None)
        if entry is not None:
            await entry[1].close()
