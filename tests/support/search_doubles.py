"""Test doubles for the search path: a small fake search engine with
Elasticsearch- and Solr-shaped answers, and rankers that misbehave on purpose.

:class:`FakeEngine` implements the :class:`~selproxy.handler.Upstream`
protocol in-process, so the search handlers can be tested end to end without
sockets; :meth:`FakeEngine.serve` puts the same engine behind a minimal
HTTP/1.1 server on loopback for tests through the real proxy.

Scoring is deliberately simple and deterministic: a document scores the number
of query words found in its text (every string leaf of the query counts,
filters included), ties broken by ``_id``.  The response shapes follow
Elasticsearch's documented search and multi-search responses.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
from fnmatch import fnmatchcase
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl

from selproxy.errors import error_document
from selproxy.handler import Headers, Response, header_value

__all__ = ("FakeEngine", "ReverseRanker", "FailingRanker", "HeldRanker", "QUERY_FORMS")

_WORD = re.compile(r"\w+")

#: Every query form the extractor knows, with the text it should find.
QUERY_FORMS: List[Tuple[Dict[str, Any], str]] = [
    ({"match": {"title": "space rockets"}}, "space rockets"),
    ({"match": {"title": {"query": "space rockets", "operator": "and"}}}, "space rockets"),
    ({"match_phrase": {"body": "heat transfer"}}, "heat transfer"),
    ({"match_phrase_prefix": {"body": {"query": "heat tra"}}}, "heat tra"),
    ({"match_bool_prefix": {"body": "quick brown f"}}, "quick brown f"),
    ({"multi_match": {"query": "boundary layer", "fields": ["title^2", "body"]}}, "boundary layer"),
    ({"combined_fields": {"query": "mach number", "fields": ["title", "body"]}}, "mach number"),
    ({"query_string": {"query": "title:(shock wave) AND -laminar"}}, "shock wave"),
    ({"simple_query_string": {"query": '"flat plate" +drag -lift'}}, "flat plate drag"),
    ({"bool": {"must": {"match": {"t": "a"}}, "should": [{"match": {"t": "b"}}],
               "filter": [{"match": {"t": "FILTERED"}}], "must_not": {"match": {"t": "NOT"}}}}, "a b"),
    ({"bool": {"must": [{"bool": {"should": [{"bool": {"must": {"match": {"t": "deep"}}}}]}}]}}, "deep"),
    ({"dis_max": {"queries": [{"match": {"t": "one"}}, {"match": {"u": "two"}}]}}, "one two"),
    ({"constant_score": {"filter": {"match": {"t": "constant"}}}}, "constant"),
    ({"function_score": {"query": {"match": {"t": "func"}}, "functions": []}}, "func"),
    ({"boosting": {"positive": {"match": {"t": "pos"}}, "negative": {"match": {"t": "neg"}}}}, "pos"),
    ({"nested": {"path": "c", "query": {"match": {"c.text": "nested"}}}}, "nested"),
    ({"bool": {"should": [{"match": {"title": "same"}}, {"match": {"body": "same"}}]}}, "same"),
    ({"match_all": {}}, ""),
    ({"term": {"status": "published"}}, ""),
    ({"bool": {"filter": {"match": {"t": "only filter"}}}}, ""),
]


def _strings(node: Any) -> List[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


class ReverseRanker:
    """Deterministic test ranker: the engine's last document first."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, List[str]]] = []

    def rank(self, query: str, docs: List[str]) -> List[float]:
        self.calls.append((query, list(docs)))
        return [float(i) for i in range(len(docs))]


class FailingRanker:
    """Raises on every call."""

    async def rank(self, query: str, docs: List[str]) -> List[float]:
        raise RuntimeError("model exploded")


class HeldRanker:
    """Answers once ``release`` is set (or after ``hold`` seconds at most);
    sync (a worker thread) or async.  ``entered`` counts the calls that began:
    a search answered while the ranker is still held was not kept by it."""

    def __init__(self, use_async: bool = True, hold: float = 30.0) -> None:
        self.release = threading.Event()
        self.hold = hold
        self.entered = 0
        if not use_async:
            setattr(self, "rank", self._rank_sync)

    async def rank(self, query: str, docs: List[str]) -> List[float]:
        self.entered += 1
        for _ in range(int(self.hold / 0.005)):
            if self.release.is_set():
                break
            await asyncio.sleep(0.005)
        return [float(i) for i in range(len(docs))]

    def _rank_sync(self, query: str, docs: List[str]) -> List[float]:
        self.entered += 1
        self.release.wait(self.hold)
        return [float(i) for i in range(len(docs))]


class FakeEngine:
    """An in-memory engine of ``{index: [(id, source), ...]}``.

    ``gzip_responses`` compresses answers to clients that accept gzip.
    ``requests`` records every ``(method, target, headers, body)`` received.
    """

    def __init__(self, indices: Dict[str, List[Tuple[str, Dict[str, Any]]]],
                 gzip_responses: bool = False) -> None:
        self.indices = indices
        self.gzip_responses = gzip_responses
        self.requests: List[Tuple[str, str, Headers, bytes]] = []
        self._server: Optional[asyncio.AbstractServer] = None

    # -- Upstream protocol --------------------------------------------------

    async def request(self, method: str, target: str, headers: Headers, body: bytes = b"", *,
                      timeout: Optional[float] = None) -> Response:
        self.requests.append((method, target, list(headers), body))
        status, payload = self.answer(method, target, body)
        data = json.dumps(payload).encode()
        out: Headers = [("content-type", "application/json"), ("X-Elastic-Product", "Elasticsearch")]
        accept = header_value(headers, "accept-encoding") or ""
        if self.gzip_responses and "gzip" in accept:
            data = gzip.compress(data)
            out.append(("content-encoding", "gzip"))
        out.append(("content-length", str(len(data))))
        return Response(status, out, data)

    # -- the engine ---------------------------------------------------------

    def answer(self, method: str, target: str, body: bytes) -> Tuple[int, Any]:
        path, _, query = target.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["solr"] and len(parts) == 3 and parts[2] == "select":
            return self._solr(parts[1], params, body)
        if parts and parts[-1] == "_msearch":
            default = parts[0] if len(parts) == 2 else "_all"
            return self._msearch(default, body)
        if parts and parts[-1] == "_search":
            expr = parts[0] if len(parts) == 2 else "_all"
            try:
                doc = json.loads(body) if body.strip() else {}
            except ValueError:
                return 400, self._error(400, "parsing_exception", "bad body")
            return self._search(expr, doc, params)
        return 200, {"acknowledged": True, "path": path}

    @staticmethod
    def _error(status: int, es_type: str, reason: str) -> Dict[str, Any]:
        return error_document(status, {"type": es_type, "reason": reason})

    def _docs(self, expr: str) -> Optional[List[Tuple[str, str, Dict[str, Any]]]]:
        names = [n for n in expr.split(",") if n]
        out: List[Tuple[str, str, Dict[str, Any]]] = []
        for name in names:
            matched = [i for i in self.indices if name in ("_all", "*") or fnmatchcase(i, name)]
            if not matched and "*" not in name and name != "_all":
                return None
            for index in matched:
                out.extend((index, doc_id, source) for doc_id, source in self.indices[index])
        return out

    @staticmethod
    def _score(words: List[str], source: Dict[str, Any]) -> float:
        text = set(w.lower() for s in _strings(source) for w in _WORD.findall(s))
        return float(sum(1 for w in words if w.lower() in text))

    def _search(self, expr: str, doc: Dict[str, Any], params: Dict[str, str]) -> Tuple[int, Any]:
        docs = self._docs(expr)
        if docs is None:
            return 404, self._error(404, "index_not_found_exception", f"no such index [{expr}]")
        if "q" in params:
            words = _WORD.findall(params["q"])
        else:
            words = [w for s in _strings(doc.get("query", {})) for w in _WORD.findall(s)]
        scored = [(self._score(words, src), index, doc_id, src) for index, doc_id, src in docs]
        scored = [s for s in scored if s[0] > 0 or not words]
        sort = params.get("sort") or doc.get("sort")
        if sort and sort not in ("_score", ["_score"]):
            field = sort if isinstance(sort, str) else next(iter(sort[0])) if isinstance(sort[0], dict) else sort[0]
            field = field.split(":")[0]
            scored.sort(key=lambda s: (str(s[3].get(field, "")), s[2]))
        else:
            scored.sort(key=lambda s: (-s[0], s[2]))
        size = int(params.get("size", doc.get("size", 10)))
        start = int(params.get("from", doc.get("from", 0)))
        source_spec = params.get("_source", doc.get("_source", True))
        hits = []
        for score, index, doc_id, src in scored[start:start + size]:
            hit: Dict[str, Any] = {"_index": index, "_id": doc_id, "_score": score}
            if source_spec is False or source_spec == "false":
                pass
            elif isinstance(source_spec, list):
                hit["_source"] = {k: v for k, v in src.items() if k in source_spec}
            else:
                hit["_source"] = src
            hits.append(hit)
        result: Dict[str, Any] = {
            "took": 3, "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {"total": {"value": len(scored), "relation": "eq"},
                     "max_score": scored[0][0] if scored else None, "hits": hits},
        }
        if "aggs" in doc or "aggregations" in doc:
            result["aggregations"] = {"n": {"value": len(scored)}}
        return 200, result

    def _msearch(self, default: str, body: bytes) -> Tuple[int, Any]:
        lines = [line for line in body.split(b"\n") if line.strip()]
        responses = []
        for i in range(0, len(lines) - 1, 2):
            header = json.loads(lines[i])
            doc = json.loads(lines[i + 1])
            index = header.get("index", default)
            index = ",".join(index) if isinstance(index, list) else index
            status, payload = self._search(index, doc, {})
            payload["status"] = status
            responses.append(payload)
        return 200, {"took": 5, "responses": responses}

    def _solr(self, core: str, params: Dict[str, str], body: bytes) -> Tuple[int, Any]:
        params = {**dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True)), **params}
        if core not in self.indices:
            return 404, {"responseHeader": {"status": 404}, "error": {"msg": "no core", "code": 404}}
        words = [w for w in _WORD.findall(params.get("q", "")) if w not in ("AND", "OR")]
        scored = [(self._score(words, src), doc_id, src) for doc_id, src in self.indices[core]]
        scored = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))
        start, rows = int(params.get("start", 0)), int(params.get("rows", 10))
        docs = [{"id": doc_id, **src, "score": score} for score, doc_id, src in scored[start:start + rows]]
        return 200, {
            "responseHeader": {"status": 0, "QTime": 1, "params": params},
            "response": {"numFound": len(scored), "start": start, "maxScore": scored[0][0] if scored else 0.0,
                         "numFoundExact": True, "docs": docs},
        }

    # -- over loopback ------------------------------------------------------

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> Tuple[str, int]:
        """Serve the engine over HTTP/1.1 (Content-Length bodies, keep-alive)."""
        self._server = await asyncio.start_server(self._client, host, port)
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
                length = int(header_value(headers, "content-length") or 0)  # type: ignore[arg-type]
                body = await reader.readexactly(length) if length else b""
                response = await self.request(method, target, headers, body)  # type: ignore[arg-type]
                out = [f"HTTP/1.1 {response.status} X\r\n".encode()]
                out += [f"{k}: {v}\r\n".encode("latin-1") for k, v in response.headers]
                writer.write(b"".join(out) + b"\r\n" + response.body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
