"""The engine's scores against a plain, independent BM25 (Lucene's formula) on a small corpus."""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Dict, Iterator, List

import pytest
from elasticsearch import Elasticsearch, helpers

from support.engine import engine_in_thread

CORPUS = {
    "a": "the cat sat on the mat",
    "b": "the dog sat on the log and the dog slept",
    "c": "cats and dogs and birds",
    "d": "a very long document about a cat that goes on and on about many things other than the cat itself",
    "e": "dog dog dog",
    "f": "birds of a feather flock together",
    "g": "the the the the",
    "h": "a mat for the dog and a mat for the cat",
}
TITLES = {"a": "cat story", "b": "dog story", "c": "pets", "d": "long cat essay", "e": "dog", "f": "birds",
          "g": "nothing", "h": "mats"}
K1, B = 1.2, 0.75


def analyse(text: str) -> List[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def bm25(docs: Dict[str, str], query: str) -> Dict[str, float]:
    """Lucene BM25: sum over query terms of idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))."""
    tokenised = {doc_id: analyse(text) for doc_id, text in docs.items()}
    n_docs = len(tokenised)
    avgdl = sum(len(t) for t in tokenised.values()) / n_docs
    scores: Dict[str, float] = {}
    for term in analyse(query):
        df = sum(1 for t in tokenised.values() if term in t)
        if df == 0:
            continue
        idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
        for doc_id, toks in tokenised.items():
            tf = Counter(toks)[term]
            if tf:
                norm = tf / (tf + K1 * (1 - B + B * len(toks) / avgdl))
                scores[doc_id] = scores.get(doc_id, 0.0) + idf * norm
    return scores


@pytest.fixture(scope="module")
def es() -> Iterator[Elasticsearch]:
    with engine_in_thread() as url:
        client = Elasticsearch(url, request_timeout=20)
        client.indices.create(index="corpus", mappings={"properties": {"body": {"type": "text"},
                                                                       "title": {"type": "text"}}})
        helpers.bulk(client, ({"_index": "corpus", "_id": k, "body": v, "title": TITLES[k]}
                              for k, v in CORPUS.items()))
        # A second index with other statistics must not change the first one's scores.
        helpers.bulk(client, ({"_index": "other", "_id": str(i), "body": "cat cat cat dog"} for i in range(20)))
        yield client
        client.close()


def scored(resp) -> Dict[str, float]:
    return {hit["_id"]: hit["_score"] for hit in resp["hits"]["hits"]}


@pytest.mark.parametrize("query", ["cat", "dog", "the", "cat dog", "mat cat birds", "the dog slept", "zebra cat"])
def test_match_scores_equal_lucene_bm25(es: Elasticsearch, query: str) -> None:
    expected = bm25(CORPUS, query)
    resp = es.search(index="corpus", query={"match": {"body": query}}, size=20)
    got = scored(resp)
    assert set(got) == set(expected)
    for doc_id, score in expected.items():
        assert got[doc_id] == pytest.approx(score, rel=1e-9)
    order = [hit["_id"] for hit in resp["hits"]["hits"]]
    assert [expected[d] for d in order] == sorted(expected.values(), reverse=True)
    assert resp["hits"]["max_score"] == pytest.approx(max(expected.values()))


def test_common_term_still_scores_positive(es: Elasticsearch) -> None:
    # "the" is in more than half the documents: FTS5's own idf would be ~0, Lucene's is not.
    got = scored(es.search(index="corpus", query={"match": {"body": "the"}}, size=20))
    assert min(got.values()) > 0.01


def test_multi_match_best_and_most_fields(es: Elasticsearch) -> None:
    body, title = bm25(CORPUS, "cat dog"), bm25(TITLES, "cat dog")
    best = scored(es.search(index="corpus", size=20, query={"multi_match": {
        "query": "cat dog", "fields": ["body", "title^2"], "tie_breaker": 0.3}}))
    most = scored(es.search(index="corpus", size=20, query={"multi_match": {
        "query": "cat dog", "fields": ["body", "title^2"], "type": "most_fields"}}))
    for doc_id in set(body) | set(title):
        parts = [body.get(doc_id, 0.0), 2 * title.get(doc_id, 0.0)]
        assert best[doc_id] == pytest.approx(max(parts) + 0.3 * (sum(parts) - max(parts)), rel=1e-9)
        assert most[doc_id] == pytest.approx(sum(parts), rel=1e-9)


def test_bool_sums_must_and_should(es: Elasticsearch) -> None:
    cat, dog = bm25(CORPUS, "cat"), bm25(CORPUS, "dog")
    got = scored(es.search(index="corpus", size=20, query={"bool": {
        "must": [{"match": {"body": "cat"}}], "should": [{"match": {"body": "dog"}}],
        "filter": [{"exists": {"field": "title"}}]}}))
    assert set(got) == set(cat)
    for doc_id in cat:
        assert got[doc_id] == pytest.approx(cat[doc_id] + dog.get(doc_id, 0.0), rel=1e-9)


def test_operator_and_keeps_bm25_sum(es: Elasticsearch) -> None:
    expected = bm25(CORPUS, "cat mat")
    got = scored(es.search(index="corpus", size=20, query={"match": {"body": {"query": "cat mat",
                                                                              "operator": "and"}}}))
    assert set(got) == {"a", "h"}
    for doc_id in got:
        assert got[doc_id] == pytest.approx(expected[doc_id], rel=1e-9)
