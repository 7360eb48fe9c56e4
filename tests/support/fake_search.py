"""Loopback stand-ins for tests: an Elasticsearch subset and a reranking proxy.

``FakeElasticsearch`` answers index creation, ``_bulk``, ``_refresh`` and
``_search`` in the shapes Elasticsearch documents (bulk items with per-item
``status``; hits with ``_index``, ``_id``, ``_score``, ``_source``; ``hits.total``
as ``{value, relation}``), scoring by term counts.  ``ReversingProxy`` stands in
for selproxy until the real one can be started in tests: it asks the upstream
for the same hits, reverses them, and sets ``X-Selproxy-Rerank`` and
``Server-Timing`` as selproxy does.
"""
import contextlib
import json
from collections import Counter

import aiohttp
from aiohttp import web


class FakeElasticsearch:
    """The subset of Elasticsearch's REST API that the evaluation tool uses."""

    def __init__(self):
        self.indices = {}
        self.created = []
        self.app = web.Application()
        self.app.router.add_route("HEAD", "/{index}", self.head_index)
        self.app.router.add_put("/{index}", self.create_index)
        self.app.router.add_delete("/{index}", self.delete_index)
        self.app.router.add_post("/{index}/_bulk", self.bulk)
        self.app.router.add_post("/{index}/_refresh", self.refresh)
        self.app.router.add_post("/{index}/_search", self.search)

    @staticmethod
    def reply(body, status=200):
        return web.json_response(body, status=status, headers={"X-Elastic-Product": "Elasticsearch"})

    def not_found(self, index):
        error = {"type": "index_not_found_exception", "reason": f"no such index [{index}]", "index": index}
        return self.reply({"error": {"root_cause": [error], **error}, "status": 404}, 404)

    async def head_index(self, request):
        return web.Response(status=200 if request.match_info["index"] in self.indices else 404)

    async def create_index(self, request):
        index = request.match_info["index"]
        body = await request.json()
        self.created.append((index, body))
        self.indices[index] = {}
        return self.reply({"acknowledged": True, "shards_acknowledged": True, "index": index})

    async def delete_index(self, request):
        index = request.match_info["index"]
        if self.indices.pop(index, None) is None:
            return self.not_found(index)
        return self.reply({"acknowledged": True})

    async def bulk(self, request):
        index = request.match_info["index"]
        assert request.content_type == "application/x-ndjson"
        lines = (await request.text()).splitlines()
        items = []
        for action_line, source_line in zip(lines[::2], lines[1::2]):
            action = json.loads(action_line)["index"]
            self.indices[index][action["_id"]] = json.loads(source_line)
            items.append({"index": {
                "_index": index, "_id": action["_id"], "_version": 1, "result": "created",
                "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": 0, "_primary_term": 1,
                "status": 201,
            }})
        return self.reply({"took": 1, "errors": False, "items": items})

    async def refresh(self, request):
        if request.match_info["index"] not in self.indices:
            return self.not_found(request.match_info["index"])
        return self.reply({"_shards": {"total": 1, "successful": 1, "failed": 0}})

    async def search(self, request):
        index = request.match_info["index"]
        if index not in self.indices:
            return self.not_found(index)
        body = await request.json()
        query = body["query"]
        if "multi_match" in query:
            text, fields = query["multi_match"]["query"], query["multi_match"]["fields"]
        else:
            ((field, match),) = query["match"].items()
            text, fields = (match["query"] if isinstance(match, dict) else match), [field]
        terms = text.lower().split()
        scored = []
        for order, (doc_id, source) in enumerate(self.indices[index].items()):
            words = Counter(" ".join(str(source.get(name, "")) for name in fields).lower().split())
            score = float(sum(words[term] for term in terms))
            if score:
                scored.append((-score, order, doc_id, source))
        scored.sort()
        hits = [
            {"_index": index, "_id": doc_id, "_score": -negative, "_source": source}
            for negative, _, doc_id, source in scored[: body.get("size", 10)]
        ]
        return self.reply({
            "took": 1, "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": len(scored), "relation": "eq"},
                "max_score": hits[0]["_score"] if hits else None,
                "hits": hits,
            },
        })


class ReversingProxy:
    """Stands in for selproxy: same window from the upstream, reversed, with the
    ``X-Selproxy-Rerank`` and ``Server-Timing`` headers."""

    def __init__(self, upstream_url):
        self.upstream_url = upstream_url
        self.app = web.Application()
        self.app.router.add_post("/{index}/_search", self.search)

    async def search(self, request):
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self.upstream_url}/{request.match_info['index']}/_search",
                                    data=await request.read(),
                                    headers={"Content-Type": "application/json"}) as upstream:
                body = await upstream.json()
        hits = body["hits"]["hits"][::-1]
        for position, hit in enumerate(hits):
            hit["_score"] = float(len(hits) - position)
        body["hits"]["hits"] = hits
        body["hits"]["max_score"] = hits[0]["_score"] if hits else None
        return web.json_response(body, headers={
            "X-Selproxy-Rerank": "applied",
            "Server-Timing": "upstream;dur=1.5, rank;dur=4.25",
        })


@contextlib.asynccontextmanager
async def serve(app):
    """Serve an aiohttp app on an ephemeral loopback port; yield its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
