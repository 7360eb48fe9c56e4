"""``selproxy serve-ranker``: any selproxy ranker behind a TEI- and
Cohere-compatible ``POST /rerank``, so the model tier scales apart from the
proxy tier (the proxies reach it with ``--ranker remote``).

Endpoints:

* ``POST /rerank`` -- TEI's request ``{"query", "texts", "raw_scores",
  "return_text", "truncate"}`` answers ``[{"index", "score", "text"?}]``, best
  first; without ``raw_scores`` the scores go through a sigmoid, as TEI's
  do.  A body with ``documents`` instead of ``texts`` is a Cohere request.
* ``POST /v1/rerank``, ``POST /v2/rerank`` -- Cohere's request ``{"model",
  "query", "documents", "top_n"}`` (``documents`` as strings, or objects
  with ``text``) answers ``{"id", "results": [{"index",
  "relevance_score"}], "meta"}``, best first, cut to ``top_n``, with the
  ranker's own scores.  ``model`` is accepted and ignored: one server serves
  one ranker.
* ``GET /health`` (TEI: 200 when the model answers, 503 before),
  ``GET /info`` (TEI's fields that apply),
  ``GET /_selproxy/livez`` (200 while the process serves),
  ``GET /_selproxy/readyz`` (503 with the reason until the model is warm),
  ``GET /metrics`` and ``GET /_selproxy/metrics`` (Prometheus text).

Every byte a client sends is bounded before it is read: a body over
``max_body_bytes`` is 413 (from ``Content-Length`` at once, or as it
streams); a body that is slower than ``body_timeout`` is 408; a body that
is not JSON is 400; a request that does not fit the schema, or carries more
than ``max_texts`` texts, is 422 (TEI answers a batch over its
``--max-client-batch-size`` the same way).  Errors are JSON: ``{"error",
"error_type"}`` as TEI writes them, with ``message`` too, as Cohere's
clients read it.  A ranker that fails answers 500, a full queue 429 (with
``Retry-After``) and a missed deadline 503: the codes the ``remote`` ranker
retries or fails over on.  A ranker with partial results (the default
model) that runs out of time scores a prefix of the texts; the rest come back
below it, in the order they came.

Concurrent requests share model calls: a ranker with ``batch_rank`` runs
behind a :class:`~selproxy.rankers.batching.MicroBatcher`, which also bounds
the queue; every call goes through a
:class:`~selproxy.rankers.adapter.RankerAdapter` with the ``rank_timeout``
deadline, so nothing a ranker does reaches the event loop.

NOTE(serve-ranker): the HTTP server is uvicorn (httptools on uvloop, the
parser and loop the proxy core uses) driving a bare ASGI callable: no
framework sits between the socket and the handler, and the ``serve-ranker``
extra is uvicorn alone.  The proxy core was the other candidate; it is built
to forward to an upstream, and a model server has none.  One process serves
one copy of the model: scale it out with replicas (several ``--url`` on the
proxies, or a Service in front), not with workers that would each load it.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import hashlib
import json
import logging
import math
import sys
import threading
import time
import uuid
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Tuple

from ._redact import excerpt
from ._uvicorn_server import UvicornService, serve_until_signalled
from ._version import __version__
from .rankers.adapter import RankerAdapter, RankFailed, RankJob

__all__ = ("ServeRankerConfig", "RerankApp", "RankerServer", "build_parser", "main")

log = logging.getLogger("selproxy.serve_ranker")

PROG = "selproxy serve-ranker"

#: OpenTelemetry's recommended buckets for HTTP durations, in seconds
#: (semantic conventions, http.server.request.duration).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

Scope = Dict[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class ServeRankerConfig:
    """Limits of one serve-ranker process; each default is TEI's where TEI has one."""

    #: Request bodies above this are 413 (TEI ``--payload-limit``: 2 MB).
    max_body_bytes: int = 2_000_000
    #: Texts per request above this are 422.  TEI's ``--max-client-batch-size``
    #: is 32; ours is Cohere's recommended call size, so that a client sends a
    #: whole window at once (smaller calls are merged by the micro-batcher anyway).
    max_texts: int = 1000
    #: Seconds a request may wait for the model and be scored.
    rank_timeout: float = 10.0
    #: Seconds to receive a request body.
    body_timeout: float = 10.0
    #: Rank calls in progress at once; more are refused at once with 429.
    max_pending: int = 512
    #: Worker threads for a ranker whose ``rank`` is synchronous.
    ranker_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_texts", "max_pending", "ranker_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("rank_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")


class _BadRequest(Exception):
    """A request to refuse, with its status and TEI's error type."""

    def __init__(self, status: int, message: str, error_type: str = "Validation",
                 reason: str = "invalid", headers: Iterable[Tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.reason = reason
        self.headers = tuple(headers)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _clean_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _BadRequest(422, f"{where} must be a string")
    text: str = value
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape: a tokenizer may choke on it
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _flag(body: Dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _BadRequest(422, f"{name} must be true or false")
    return value


def _sigmoid(score: float) -> float:
    if score >= 0:
        return 1.0 / (1.0 + math.exp(-score))
    z = math.exp(score)
    return z / (1.0 + z)


class _Metrics:
    """The Prometheus metrics of one serve-ranker, in a registry of its own."""

    def __init__(self, app: "RerankApp") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        info = Gauge("selproxy_build_info", "selproxy's version; always 1.", ["version"],
                     registry=self.registry)
        info.labels(__version__).set(1)
        self.requests = Counter("selproxy_serve_ranker_requests", "HTTP requests answered, by endpoint "
                                "and status class.", ["endpoint", "status_class"], registry=self.registry)
        self.duration = Histogram("selproxy_serve_ranker_request_duration_seconds", "Time to answer a "
                                  "rerank request, body read included.", registry=self.registry,
                                  buckets=HTTP_BUCKETS)
        self.rank_duration = Histogram("selproxy_serve_ranker_rank_duration_seconds", "Time a rerank "
                                       "request spent queued for and in the model.", registry=self.registry,
                                       buckets=HTTP_BUCKETS)
        self.documents = Counter("selproxy_serve_ranker_documents", "Texts scored.", registry=self.registry)
        self.rejected = Counter("selproxy_serve_ranker_rejected_requests", "Rerank requests refused, "
                                "by reason.", ["reason"], registry=self.registry)
        self.in_flight = Gauge("selproxy_serve_ranker_requests_in_flight", "Rerank requests being "
                               "answered.", registry=self.registry)
        ready = Gauge("selproxy_serve_ranker_ready", "1 once the model has warmed up.",
                      registry=self.registry)
        ready.set_function(lambda: 1.0 if app.ready else 0.0)
        self.registry.register(_BatcherCollector(app))

    def render(self) -> Tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _BatcherCollector:
    """The micro-batcher's counters, read when scraped."""

    def __init__(self, app: "RerankApp") -> None:
        self.app = app

    def describe(self) -> List[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        batcher = self.app.batcher
        if batcher is None:
            return
        counters = batcher.counters
        yield CounterMetricFamily("selproxy_serve_ranker_batches", "Model calls the micro-batcher made.",
                                  value=counters["batches"])
        yield CounterMetricFamily("selproxy_serve_ranker_batch_pairs", "(query, text) pairs in those "
                                  "calls.", value=counters["pairs"])
        yield GaugeMetricFamily("selproxy_serve_ranker_queued_pairs", "Pairs waiting for the model.",
                                value=batcher.stats()["queued_pairs"])
        yield GaugeMetricFamily("selproxy_serve_ranker_cost_per_pair_seconds", "Running estimate of the "
                                "model's time per pair.", value=batcher.cost_per_pair)


class RerankApp:
    """The ASGI application: routes, limits, the ranker's adapter, metrics.

    ``ranker`` is built already (:func:`build_ranker`); ``name`` is what
    ``/info`` reports as the model.  :meth:`start_warmup` warms it up in a
    thread; until that is done ``/rerank``, ``/health`` and ``readyz`` say 503.
    """

    def __init__(self, ranker: Any, name: str, config: Optional[ServeRankerConfig] = None) -> None:
        from .rankers.batching import MicroBatcher

        self.config = config or ServeRankerConfig()
        self.name = name
        if not isinstance(ranker, MicroBatcher) and callable(getattr(ranker, "batch_rank", None)):
            # A model server gains from batching even a ranker that does not
            # ask for it: its concurrent requests share model calls.
            ranker = MicroBatcher(ranker)
        self.ranker = ranker
        self.batcher: Optional[MicroBatcher] = ranker if isinstance(ranker, MicroBatcher) else None
        self.adapter = RankerAdapter(ranker, threads=self.config.ranker_threads,
                                     max_pending=self.config.max_pending)
        self.ready = False
        self.not_ready_reason = "the model is warming up"
        self.metrics = _Metrics(self)

    # -- warm-up ------------------------------------------------------------

    def start_warmup(self) -> threading.Thread:
        """Warm the ranker up in a daemon thread (a stuck model must not keep
        a stopped server alive); :attr:`ready` turns true when it is done."""
        def warm() -> None:
            warmup = getattr(self.ranker, "warmup", None)
            try:
                if callable(warmup):
                    warmup()
            except BaseException as exc:  # reported; the server stays not ready
                self.not_ready_reason = excerpt(f"warm-up failed: {type(exc).__name__}: {exc}")
                log.error("ranker %s %s", self.name, self.not_ready_reason)
                return
            self.ready = True
            log.info("ranker %s warmed up", self.name)

        thread = threading.Thread(target=warm, name="selproxy-warmup", daemon=True)
        thread.start()
        return thread

    async def aclose(self) -> None:
        aclose = getattr(self.ranker, "aclose", None)
        if callable(aclose):
            await aclose()
        self.adapter.close()

    # -- ASGI ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        method, path = scope["method"], scope["path"]
        if path in ("/rerank", "/v1/rerank", "/v2/rerank"):
            endpoint = "rerank"
            if method != "POST":
                status, body, headers = self._error(405, "use POST", "Validation", (b"allow", b"POST"))
            else:
                status, body, headers = await self._rerank(scope, receive, path)
        elif method not in ("GET", "HEAD"):
            endpoint = "other"
            status, body, headers = self._error(405 if path in _GET_PATHS else 404,
                                                f"no {method} {path}", "Validation", (b"allow", b"GET, HEAD"))
        elif path in _GET_PATHS:
            endpoint = _GET_PATHS[path]
            status, body, headers = self._get(endpoint)
        else:
            endpoint = "other"
            status, body, headers = self._error(404, f"no {path}", "Validation")
        self.metrics.requests.labels(endpoint, f"{status // 100}xx").inc()
        await self._respond(send, status, b"" if method == "HEAD" else body, headers, len(body))

    @staticmethod
    async def _respond(send: Send, status: int, body: bytes, headers: List[Tuple[bytes, bytes]],
                       length: int) -> None:
        head = [(b"content-length", str(length).encode("ascii")), *headers]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _json(status: int, value: Any, *extra: Tuple[bytes, bytes]
              ) -> Tuple[int, bytes, List[Tuple[bytes, bytes]]]:
        return status, _json_bytes(value), [(b"content-type", b"application/json"), *extra]

    def _error(self, status: int, message: str, error_type: str, *extra: Tuple[bytes, bytes]
               ) -> Tuple[int, bytes, List[Tuple[bytes, bytes]]]:
        return self._json(status, {"error": message, "error_type": error_type, "message": message}, *extra)

    def _get(self, endpoint: str) -> Tuple[int, bytes, List[Tuple[bytes, bytes]]]:
        if endpoint == "livez":
            return self._json(200, {"status": "ok"})
        if endpoint in ("readyz", "health"):
            if not self.ready:
                return self._json(503, {"ready": False, "reason": self.not_ready_reason,
                                        "error": self.not_ready_reason, "error_type": "Unhealthy"})
            return self._json(200, {"ready": True}) if endpoint == "readyz" else (200, b"", [])
        if endpoint == "info":
            return self._json(200, self.info())
        payload, content_type = self.metrics.render()
        return 200, payload, [(b"content-type", content_type.encode("ascii"))]

    def info(self) -> Dict[str, Any]:
        """``GET /info``: TEI's fields that mean something here."""
        return {"model_id": self.name, "model_type": {"reranker": {}}, "version": __version__,
                "max_client_batch_size": self.config.max_texts,
                "max_concurrent_requests": self.config.max_pending,
                "payload_limit": self.config.max_body_bytes,
                "micro_batching": self.batcher is not None, "ready": self.ready}

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.config.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or len(value) > 19:
                    raise _BadRequest(400, "bad Content-Length", reason="invalid")
                if int(value) > limit:
                    raise _BadRequest(413, f"the body is larger than {limit} bytes", reason="too_large")
        chunks: List[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _BadRequest(400, "the client went away", reason="disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _BadRequest(413, f"the body is larger than {limit} bytes", reason="too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _rerank(self, scope: Scope, receive: Receive, path: str
                      ) -> Tuple[int, bytes, List[Tuple[bytes, bytes]]]:
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            try:
                raw = await asyncio.wait_for(self._read_body(scope, receive), self.config.body_timeout)
            except asyncio.TimeoutError:
                raise _BadRequest(408, f"the body did not arrive within {self.config.body_timeout:g}s",
                                  reason="body_timeout") from None
            if not self.ready:
                raise _BadRequest(503, self.not_ready_reason, "Unhealthy", reason="not_ready",
                                  headers=[(b"retry-after", b"1")])
            answer = await self._answer(path, raw)
        except _BadRequest as refused:
            self.metrics.rejected.labels(refused.reason).inc()
            return self._error(refused.status, str(refused), refused.error_type, *refused.headers)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.duration.observe(time.perf_counter() - started)
        return self._json(200, answer)

    async def _answer(self, path: str, raw: bytes) -> Any:
        try:
            body = json.loads(raw)
        except ValueError:  # UnicodeDecodeError is one
            raise _BadRequest(400, "the body is not JSON", reason="invalid") from None
        except RecursionError:
            raise _BadRequest(400, "the body nests too deep", reason="invalid") from None
        if not isinstance(body, dict):
            raise _BadRequest(422, "the body must be a JSON object")
        cohere = path != "/rerank" or ("texts" not in body and "documents" in body)
        field = "documents" if cohere else "texts"
        query = _clean_text(body.get("query"), "query")
        items = body.get(field)
        if not isinstance(items, list) or not items:
            raise _BadRequest(422, f"{field} must be a non-empty list of strings")
        if len(items) > self.config.max_texts:
            raise _BadRequest(422, f"batch size {len(items)} > maximum allowed batch size "
                                   f"{self.config.max_texts}", reason="too_many_texts")
        texts = []
        for n, item in enumerate(items):
            if cohere and isinstance(item, dict):
                item = item.get("text")
            texts.append(_clean_text(item, f"{field}[{n}]"))
        top_n = body.get("top_n") if cohere else None
        if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
            raise _BadRequest(422, "top_n must be a positive integer")
        with_text = _flag(body, "return_documents" if cohere else "return_text")
        raw_scores = _flag(body, "raw_scores")
        if not isinstance(body.get("truncate"), (bool, str, type(None))):  # TEI: bool; NIM-style: "END"
            raise _BadRequest(422, "truncate must be true or false")

        scores = await self._scores(query, texts)
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        if cohere:
            results = []
            for i in order[:top_n]:
                result: Dict[str, Any] = {"index": i, "relevance_score": scores[i]}
                if with_text:
                    result["document"] = {"text": texts[i]}
                results.append(result)
            return {"id": str(uuid.uuid4()), "results": results, "meta": {"api_version": {"version": "2"}}}
        ranked = []
        for i in order:
            rank: Dict[str, Any] = {"index": i, "score": scores[i] if raw_scores else _sigmoid(scores[i])}
            if with_text:
                rank["text"] = texts[i]
            ranked.append(rank)
        return ranked

    async def _scores(self, query: str, texts: List[str]) -> List[float]:
        keys = None
        if self.adapter.wants_keys:
            # No index or id here: the text's hash alone keys a cache.
            keys = [("", "", hashlib.sha1(t.encode("utf-8")).hexdigest()) for t in texts]
        started = time.perf_counter()
        try:
            ranked, _timing = await self.adapter.rank([RankJob(query, texts, keys)], self.config.rank_timeout)
        except RankFailed as failure:
            if failure.reason == "overloaded":
                raise _BadRequest(429, "the model is overloaded", "Overloaded", reason="overloaded",
                                  headers=[(b"retry-after", b"1")]) from None
            if failure.reason == "deadline":
                raise _BadRequest(503, f"no scores within {self.config.rank_timeout:g}s", "Backend",
                                  reason="deadline") from None
            raise _BadRequest(500, "the ranker failed", "Backend", reason="error") from None
        self.metrics.rank_duration.observe(time.perf_counter() - started)
        scores = list(ranked[0])
        if len(scores) < len(texts):
            # A ranker with partial results scored a prefix: the rest rank
            # below it, in the order they came.
            floor = (min(scores) if scores else 0.0) - 1.0
            scores += [floor - 1e-3 * n for n in range(len(texts) - len(scores))]
        self.metrics.documents.inc(len(texts))
        return scores


_GET_PATHS = {"/health": "health", "/info": "info", "/metrics": "metrics", "/_selproxy/metrics": "metrics",
              "/_selproxy/livez": "livez", "/_selproxy/readyz": "readyz"}


# -- building and serving ------------------------------------------------------

def build_ranker(spec: str, options: Dict[str, Any]) -> Any:
    """The ranker ``spec`` names, built with ``options`` (checked first)."""
    from .rankers.registry import check_ranker, resolve_ranker
    return resolve_ranker(spec, check_ranker(spec, options))


def _parse_listen(listen: str) -> Tuple[str, int]:
    from .config import parse_listen
    host, port = parse_listen(listen)
    return host, port


class RankerServer(UvicornService):
    """A serve-ranker on a socket, started and stopped from async code::

        async with RankerServer(ranker, "bm25", listen="127.0.0.1:0") as server:
            ...  # server.url
    """

    def __init__(self, ranker: Any, name: str, listen: str = "127.0.0.1:8080",
                 config: Optional[ServeRankerConfig] = None, log_level: Optional[str] = None) -> None:
        super().__init__(*_parse_listen(listen))
        self.app = RerankApp(ranker, name, config)
        self.log_level = log_level

    def uvicorn_config(self) -> Any:
        import uvicorn
        logging_options: Dict[str, Any] = ({"log_config": None} if self.log_level is None
                                           else {"log_level": self.log_level})
        # Idle keep-alive 75 s, past aiohttp's 15 s: the client (the remote
        # ranker's pool) closes an idle connection first, so it never reuses
        # one the server is closing at that moment.
        return uvicorn.Config(self.app, lifespan="off", access_log=False, http="httptools",
                              server_header=False, date_header=True, timeout_graceful_shutdown=5,
                              timeout_keep_alive=75, backlog=2048, **logging_options)

    async def start(self) -> None:
        if self._uvicorn.sock is None:
            self.bind()
        await self._uvicorn.start(self.uvicorn_config())
        self.app.start_warmup()

    async def stop(self) -> None:
        await self._uvicorn.stop()
        await self.app.aclose()


def serve(server: RankerServer) -> None:
    """Serve until SIGINT or SIGTERM (blocking); in-flight requests finish."""
    serve_until_signalled(
        server, lambda: log.info("selproxy serve-ranker listening on %s, ranker %s", server.url, server.app.name))


# -- command line -----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from .cli import CommandLineParser
    defaults = ServeRankerConfig()
    p = CommandLineParser(prog=PROG, description=(
        "Serve a selproxy ranker behind TEI- and Cohere-compatible POST /rerank, with "
        "micro-batching, Prometheus metrics (/metrics) and probes (/_selproxy/livez, "
        "/_selproxy/readyz), so proxies reach it with --ranker remote."))
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="address to serve on (default %(default)s)")
    p.add_argument("--ranker", default="default", metavar="NAME|pkg.mod:Class",
                   help="the ranker to serve, as selproxy --ranker takes it (default %(default)s)")
    p.add_argument("--ranker-option", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the ranker (repeatable)")
    p.add_argument("--model-dir", metavar="DIR", help="for rankers that load a model from a directory")
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes, metavar="BYTES",
                   help="413 beyond it (default %(default)s)")
    p.add_argument("--max-texts", type=int, default=defaults.max_texts, metavar="N",
                   help="texts per request; 422 beyond it (default %(default)s)")
    p.add_argument("--rank-timeout", type=float, default=defaults.rank_timeout, metavar="S",
                   help="a request's time for the model, queue included; 503 past it (default %(default)s)")
    p.add_argument("--body-timeout", type=float, default=defaults.body_timeout, metavar="S",
                   help="time to receive a request body; 408 past it (default %(default)s)")
    p.add_argument("--max-pending", type=int, default=defaults.max_pending, metavar="N",
                   help="requests in the model at once; 429 beyond it (default %(default)s)")
    p.add_argument("--ranker-threads", type=int, default=defaults.ranker_threads, metavar="N",
                   help="threads for a synchronous ranker (default %(default)s)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from .cli import CommandLineError, report
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CommandLineError as error:
        return report(PROG, error)


def _run(args: argparse.Namespace) -> int:
    from .cli import EXIT_FAILURE, CommandLineError, _put_cwd_on_path
    from .rankers.registry import RankerSpecError, parse_ranker_options

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import prometheus_client
    # One sample per series: the *_created ones double a scrape and no dashboard reads them.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        config = ServeRankerConfig(max_body_bytes=args.max_body_bytes, max_texts=args.max_texts,
                                   rank_timeout=args.rank_timeout, body_timeout=args.body_timeout,
                                   max_pending=args.max_pending, ranker_threads=args.ranker_threads)
    except ValueError as exc:
        name = str(exc).split(" ", 1)[0]
        raise CommandLineError("--" + name.replace("_", "-") + str(exc)[len(name):]) from None
    try:
        _parse_listen(args.listen)
    except ValueError as exc:
        raise CommandLineError(f"--listen: {exc}") from None
    try:
        options = parse_ranker_options(args.ranker_option)
    except ValueError as exc:
        raise CommandLineError(f"--ranker-option: {exc}") from None
    if args.model_dir:
        options["model_dir"] = args.model_dir
    if ":" in args.ranker:
        _put_cwd_on_path()
    try:
        ranker = build_ranker(args.ranker, options)
    except RankerSpecError as exc:
        raise CommandLineError(str(exc)) from None
    except Exception as exc:  # the model's own failure to load: one line, exit 1
        raise CommandLineError(excerpt(f"cannot build the ranker {args.ranker!r}: {type(exc).__name__}: {exc}"),
                               EXIT_FAILURE) from None
    server = RankerServer(ranker, args.ranker, args.listen, config)
    try:
        server.bind()
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        raise CommandLineError(f"cannot listen on {args.listen}: {reason}; choose another --listen",
                               EXIT_FAILURE) from None
    serve(server)
    return 0
