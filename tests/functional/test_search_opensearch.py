"""OpenSearch speaks Elasticsearch's search API: selproxy reranks its answers
as they are.  No OpenSearch server can run here, so the upstream serves
OpenSearch 2.x's documented shapes (``GET /`` with ``distribution``, no
``X-Elastic-Product``), byte for byte as that server writes them."""
import json

from support.aio import run
from support.proxy import in_process
from support.rawhttp import RawClient
from support.upstream import RecordingUpstream, response

from selproxy.search import SearchConfig

INFO = {"name": "node-1", "cluster_name": "opensearch", "cluster_uuid": "x1",
        "version": {"distribution": "opensearch", "number": "2.11.0", "build_type": "tar",
                    "lucene_version": "9.7.0", "minimum_wire_compatibility_version": "7.10.0",
                    "minimum_index_compatibility_version": "7.0.0"},
        "tagline": "The OpenSearch Project: https://opensearch.org/"}
HITS = [{"_index": "books", "_id": str(i), "_score": 3.0 - i * 0.5,
         "_source": {"title": "x" * (10 - i)}} for i in range(4)]
SEARCH = {"took": 3, "timed_out": False,
          "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
          "hits": {"total": {"value": 4, "relation": "eq"}, "max_score": 3.0, "hits": HITS}}


class ShortestFirst:
    def rank(self, query, docs):
        return [-float(len(d)) for d in docs]


def _opensearch(request):
    if request.target == "/":
        return response(200, json.dumps(INFO).encode(), [("content-type", "application/json; charset=UTF-8")])
    return response(200, json.dumps(SEARCH).encode(), [("content-type", "application/json; charset=UTF-8")])


def test_opensearch_answers_are_reranked_and_everything_else_passes():
    async def main():
        async with RecordingUpstream(_opensearch) as up:
            async with in_process(up.url, ranker=ShortestFirst()) as proxy:
                client = await RawClient.connect(proxy.url)
                info = await client.request("GET", "/")
                body = json.dumps({"query": {"match": {"title": "x"}}, "size": 2}).encode()
                found = await client.request("POST", "/books/_search", body,
                                             headers=[("Host", "t"), ("Content-Type", "application/json")])
                client.close()
                return info, found, up.requests

    info, found, seen = run(main())
    assert info.json() == INFO and info.header("content-type") == "application/json; charset=UTF-8"
    assert found.header("x-selproxy-rerank") == "applied"
    doc = found.json()
    assert [h["_id"] for h in doc["hits"]["hits"]] == ["3", "2"]
    assert {k: v for k, v in doc.items() if k != "hits"} == {k: v for k, v in SEARCH.items() if k != "hits"}
    assert doc["hits"]["total"] == SEARCH["hits"]["total"]
    # The engine was asked for the whole window (topn, 50 by default) from 0,
    # and the rest of the client's search as it sent it.
    assert SearchConfig().topn == 50
    assert json.loads(seen[1].body) == {"query": {"match": {"title": "x"}}, "size": 50, "from": 0}
    assert seen[1].target == "/books/_search"
