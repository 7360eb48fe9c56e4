"""The official synchronous Elasticsearch client against a real engine on loopback."""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest
from elasticsearch import (ApiError, BadRequestError, ConflictError, Elasticsearch, NotFoundError, helpers)

from support.engine import engine_in_thread

BOOKS = [
    {"title": "The quick brown fox", "body": "A fox jumps over the lazy dog", "tag": "animals", "year": 2001,
     "price": 9.5, "published": "2001-05-01", "author": {"name": "Ann", "country": "uk"}},
    {"title": "Lazy dogs and sleepy cats", "body": "Dogs sleep all day. Cats too.", "tag": "animals",
     "year": 2010, "price": 20.0, "published": "2010-01-15", "author": {"name": "Bob", "country": "us"}},
    {"title": "Search engines explained", "body": "Inverted index, BM25 ranking and query parsing",
     "tag": "tech", "year": 2018, "price": 35.25, "published": "2018-07-30",
     "author": {"name": "Cid", "country": "fr"}},
    {"title": "Reranking search results", "body": "Cross encoders rerank the top hits of a search engine",
     "tag": "tech", "year": 2023, "price": 42.0, "published": "2023-03-03",
     "author": {"name": "Dee", "country": "us"}},
    {"title": "Cooking for foxes", "body": "Recipes nobody asked for", "tag": ["food", "animals"],
     "year": 2015, "published": "2015-12-24", "author": {"name": "Eve", "country": "uk"}},
]
MAPPINGS = {"properties": {
    "title": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
    "body": {"type": "text"},
    "tag": {"type": "keyword"},
    "year": {"type": "integer"},
    "price": {"type": "float"},
    "published": {"type": "date"},
    "author": {"properties": {"name": {"type": "keyword"}, "country": {"type": "keyword"}}},
}}


@pytest.fixture(scope="module")
def es() -> Iterator[Elasticsearch]:
    with engine_in_thread() as url:
        client = Elasticsearch(url, request_timeout=20)
        yield client
        client.close()


@pytest.fixture(scope="module")
def books(es: Elasticsearch) -> str:
    es.indices.create(index="books", mappings=MAPPINGS)
    ok, errors = helpers.bulk(es, ({"_index": "books", "_id": str(i + 1), **doc} for i, doc in enumerate(BOOKS)))
    assert ok == len(BOOKS) and not errors
    es.indices.refresh(index="books")
    return "books"


def fresh() -> str:
    return "t-" + uuid.uuid4().hex[:10]


def ids(resp) -> list:
    return [hit["_id"] for hit in resp["hits"]["hits"]]


# -- cluster and index management -------------------------------------------------------------------

def test_info_ping_and_product_header(es: Elasticsearch) -> None:
    info = es.info()
    assert info["version"]["number"].split(".")[0] in ("8", "9")
    assert info["tagline"] == "You Know, for Search"
    assert es.ping()
    meta = es.info().meta
    assert meta.headers["x-elastic-product"] == "Elasticsearch"
    assert meta.headers["content-type"].startswith("application/vnd.elasticsearch+json;compatible-with=")


def test_index_lifecycle(es: Elasticsearch) -> None:
    name = fresh()
    assert not es.indices.exists(index=name)
    props = {"t": {"type": "text"}, "k": {"type": "keyword"}, "n": {"type": "long"}, "d": {"type": "date"}}
    created = es.indices.create(index=name, mappings={"properties": props})
    assert created.body == {"acknowledged": True, "shards_acknowledged": True, "index": name}
    assert es.indices.exists(index=name)
    mapping = es.indices.get_mapping(index=name)
    assert mapping[name]["mappings"]["properties"]["k"] == {"type": "keyword"}
    assert es.indices.refresh(index=name)["_shards"]["failed"] == 0
    cat = es.cat.indices(index=name, format="json")
    assert cat[0]["index"] == name and cat[0]["docs.count"] == "0"
    assert es.indices.delete(index=name) == {"acknowledged": True}
    assert not es.indices.exists(index=name)


def test_create_existing_index_is_resource_already_exists(es: Elasticsearch) -> None:
    name = fresh()
    es.indices.create(index=name)
    with pytest.raises(BadRequestError) as info:
        es.indices.create(index=name)
    assert info.value.status_code == 400
    assert info.value.error == "resource_already_exists_exception"
    assert info.value.body["error"]["index"] == name


def test_missing_index_is_index_not_found(es: Elasticsearch) -> None:
    for call in (lambda: es.search(index="no-such-index"), lambda: es.indices.delete(index="no-such-index"),
                 lambda: es.get(index="no-such-index", id="1"), lambda: es.count(index="no-such-index"),
                 lambda: es.indices.get_mapping(index="no-such-index")):
        with pytest.raises(NotFoundError) as info:
            call()
        assert info.value.error == "index_not_found_exception"
        body = info.value.body["error"]
        assert body["root_cause"][0]["type"] == "index_not_found_exception"
        assert body["reason"] == "no such index [no-such-index]"
        assert body["resource.id"] == "no-such-index"


def test_bad_mapping_and_bad_index_name(es: Elasticsearch) -> None:
    with pytest.raises(BadRequestError) as info:
        es.indices.create(index=fresh(), mappings={"properties": {"x": {"type": "no_such_type"}}})
    assert info.value.error == "mapper_parsing_exception"
    with pytest.raises(BadRequestError) as info:
        es.indices.create(index="UpperCase")
    assert info.value.error == "invalid_index_name_exception"


def test_dynamic_mapping(es: Elasticsearch) -> None:
    name = fresh()
    es.index(index=name, id="1", document={"title": "hello", "n": 3, "f": 1.5, "ok": True,
                                           "when": "2024-01-02", "obj": {"inner": "x"}})
    props = es.indices.get_mapping(index=name)[name]["mappings"]["properties"]
    assert props["title"] == {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
    assert props["n"] == {"type": "long"}
    assert props["f"] == {"type": "float"}
    assert props["ok"] == {"type": "boolean"}
    assert props["when"] == {"type": "date"}
    assert props["obj"]["properties"]["inner"]["type"] == "text"
    assert ids(es.search(index=name, query={"term": {"title.keyword": "hello"}})) == ["1"]
    assert ids(es.search(index=name, query={"term": {"ok": True}})) == ["1"]


# -- single-document writes -------------------------------------------------------------------------

def test_document_crud(es: Elasticsearch) -> None:
    name = fresh()
    first = es.index(index=name, id="a", document={"title": "first", "n": 1})
    assert first.meta.status == 201
    assert first["result"] == "created" and first["_version"] == 1 and first["_seq_no"] == 0
    assert first["_shards"] == {"total": 2, "successful": 1, "failed": 0}
    again = es.index(index=name, id="a", document={"title": "second", "n": 2})
    assert again.meta.status == 200 and again["result"] == "updated" and again["_version"] == 2
    got = es.get(index=name, id="a")
    assert got["found"] and got["_source"] == {"title": "second", "n": 2} and got["_version"] == 2
    assert es.exists(index=name, id="a") and not es.exists(index=name, id="zz")
    auto = es.index(index=name, document={"title": "auto id"})
    assert auto["result"] == "created" and len(auto["_id"]) == 20
    updated = es.update(index=name, id="a", doc={"n": 3, "extra": {"x": 1}})
    assert updated["result"] == "updated" and updated["_version"] == 3
    assert es.get(index=name, id="a")["_source"] == {"title": "second", "n": 3, "extra": {"x": 1}}
    noop = es.update(index=name, id="a", doc={"n": 3})
    assert noop["result"] == "noop"
    assert ids(es.search(index=name, query={"match": {"title": "second"}})) == ["a"]
    deleted = es.delete(index=name, id="a")
    assert deleted["result"] == "deleted"
    with pytest.raises(NotFoundError) as info:
        es.get(index=name, id="a")
    assert info.value.body == {"_index": name, "_id": "a", "found": False}
    with pytest.raises(NotFoundError) as info:
        es.delete(index=name, id="a")
    assert info.value.body["result"] == "not_found"
    assert es.search(index=name, query={"match": {"title": "second"}})["hits"]["total"]["value"] == 0


def test_update_missing_and_upsert(es: Elasticsearch) -> None:
    name = fresh()
    es.indices.create(index=name)
    with pytest.raises(NotFoundError) as info:
        es.update(index=name, id="x", doc={"a": 1})
    assert info.value.error == "document_missing_exception"
    assert info.value.body["error"]["reason"] == "[x]: document missing"
    upserted = es.update(index=name, id="x", doc={"a": 1}, doc_as_upsert=True)
    assert upserted["result"] == "created"
    assert es.get(index=name, id="x")["_source"] == {"a": 1}


def test_version_conflicts(es: Elasticsearch) -> None:
    name = fresh()
    es.create(index=name, id="1", document={"a": 1})
    with pytest.raises(ConflictError) as info:
        es.create(index=name, id="1", document={"a": 2})
    assert info.value.status_code == 409
    assert info.value.error == "version_conflict_engine_exception"
    assert "document already exists" in info.value.body["error"]["reason"]
    current = es.get(index=name, id="1")
    with pytest.raises(ConflictError):
        es.index(index=name, id="1", document={"a": 3}, if_seq_no=current["_seq_no"] + 5, if_primary_term=1)
    ok = es.index(index=name, id="1", document={"a": 3}, if_seq_no=current["_seq_no"], if_primary_term=1)
    assert ok["result"] == "updated"


def test_bad_document_is_document_parsing_exception(es: Elasticsearch) -> None:
    name = fresh()
    es.indices.create(index=name, mappings={"properties": {"n": {"type": "long"}}})
    with pytest.raises(BadRequestError) as info:
        es.index(index=name, id="1", document={"n": "not a number"})
    assert info.value.error == "document_parsing_exception"


# -- bulk -------------------------------------------------------------------------------------------

def test_bulk_with_partial_failures(es: Elasticsearch) -> None:
    name = fresh()
    es.indices.create(index=name, mappings={"properties": {"n": {"type": "long"}, "t": {"type": "text"}}})
    resp = es.bulk(operations=[
        {"index": {"_index": name, "_id": "1"}}, {"t": "one", "n": 1},
        {"create": {"_index": name, "_id": "2"}}, {"t": "two", "n": 2},
        {"create": {"_index": name, "_id": "1"}}, {"t": "dup"},
        {"index": {"_index": name, "_id": "3"}}, {"n": "bad"},
        {"update": {"_index": name, "_id": "2"}}, {"doc": {"t": "two updated"}},
        {"update": {"_index": name, "_id": "404"}}, {"doc": {"t": "x"}},
        {"delete": {"_index": name, "_id": "1"}},
        {"delete": {"_index": name, "_id": "nope"}},
        {"index": {"_index": "no-such-index-" + name}}, {"t": "auto-created"},
    ])
    assert resp["errors"] is True
    items = resp["items"]
    assert [list(item)[0] for item in items] == ["index", "create", "create", "index", "update", "update",
                                                 "delete", "delete", "index"]
    statuses = [next(iter(item.values()))["status"] for item in items]
    assert statuses == [201, 201, 409, 400, 200, 404, 200, 404, 201]
    assert items[2]["create"]["error"]["type"] == "version_conflict_engine_exception"
    assert items[2]["create"]["error"]["index"] == name
    assert items[3]["index"]["error"]["type"] == "document_parsing_exception"
    assert items[5]["update"]["error"]["type"] == "document_missing_exception"
    assert items[7]["delete"]["result"] == "not_found"
    assert items[4]["update"]["result"] == "updated" and items[4]["update"]["_version"] == 2
    assert es.count(index=name)["count"] == 1
    assert es.get(index=name, id="2")["_source"]["t"] == "two updated"


def test_bulk_helper_and_default_index(es: Elasticsearch) -> None:
    name = fresh()
    ok, errors = helpers.bulk(es, ({"_id": str(i), "t": f"doc number {i}"} for i in range(250)), index=name,
                              chunk_size=100)
    assert ok == 250 and errors == []
    assert es.count(index=name)["count"] == 250
    with pytest.raises(BadRequestError):
        es.bulk(operations=[{"index": {}}, {"t": "no index"}])
    with pytest.raises(BadRequestError) as info:
        es.bulk(operations=[{"frobnicate": {"_index": name}}, {"t": "x"}])
    assert info.value.error == "illegal_argument_exception"


# -- queries ----------------------------------------------------------------------------------------

def test_match_and_operators(es: Elasticsearch, books: str) -> None:
    assert set(ids(es.search(index=books, query={"match": {"title": "fox search"}}))) == {"1", "3", "4"}
    both = {"match": {"title": {"query": "search engines", "operator": "and"}}}
    assert ids(es.search(index=books, query=both)) == ["3"]
    two_of = {"match": {"body": {"query": "search engine rerank", "minimum_should_match": 2}}}
    two = es.search(index=books, query=two_of)
    assert ids(two) == ["4"]
    assert ids(es.search(index=books, query={"match": {"title": "QUICK"}})) == ["1"]
    assert ids(es.search(index=books, query={"match": {"tag": "tech"}}, sort=["year"])) == ["3", "4"]
    assert es.search(index=books, query={"match": {"no_field": "x"}})["hits"]["total"]["value"] == 0


def test_match_phrase(es: Elasticsearch, books: str) -> None:
    assert ids(es.search(index=books, query={"match_phrase": {"body": "lazy dog"}})) == ["1"]
    assert ids(es.search(index=books, query={"match_phrase": {"body": "dog lazy"}})) == []


def test_multi_match(es: Elasticsearch, books: str) -> None:
    resp = es.search(index=books, query={"multi_match": {"query": "search engine", "fields": ["title^3", "body"]}})
    assert ids(resp)[0] == "3"
    assert set(ids(resp)) == {"3", "4"}
    most = es.search(index=books, query={"multi_match": {"query": "fox", "fields": ["title", "body"],
                                                         "type": "most_fields"}})
    best = es.search(index=books, query={"multi_match": {"query": "fox", "fields": ["title", "body"]}})
    score = {h["_id"]: h["_score"] for h in most["hits"]["hits"]}
    best_score = {h["_id"]: h["_score"] for h in best["hits"]["hits"]}
    assert score["1"] > best_score["1"]  # matched in both fields: summed vs best
    phrase = es.search(index=books, query={"multi_match": {"query": "search engine", "type": "phrase",
                                                           "fields": ["title", "body"]}})
    assert ids(phrase) == ["4"]


def test_query_string_and_simple_query_string(es: Elasticsearch, books: str) -> None:
    def qs(text: str, **kw) -> list:
        return sorted(ids(es.search(index=books, query={"query_string": {"query": text, **kw}})))

    assert qs("fox") == ["1"]  # no stemming: "foxes" is another token
    assert qs("fox OR foxes") == ["1", "5"]
    assert qs("title:fox") == ["1"]
    assert qs("fox AND lazy") == ["1"]
    assert qs("foxes -lazy") == ["5"]
    assert qs("fox -lazy") == []
    assert qs("(search OR cats) AND NOT rerank*") == ["2", "3"]
    assert qs("title:\"search engines\"") == ["3"]
    assert qs("rank*") == ["3"]
    assert qs("year:[2010 TO 2018]") == ["2", "3", "5"]
    assert qs("year:>2015") == ["3", "4"]
    assert qs("search engine", default_operator="AND") == ["4"]
    assert qs("tag:tech") == ["3", "4"]
    assert sorted(ids(es.search(index=books, q="author.country:uk"))) == ["1", "5"]

    def sqs(text: str, **kw) -> list:
        return sorted(ids(es.search(index=books, query={"simple_query_string": {"query": text, **kw}})))

    assert sqs("fox | cats") == ["1", "2"]
    assert sqs("search + engine", fields=["body"]) == ["4"]
    assert sqs("\"search engine\"") == ["4"]
    assert sqs("foxes -lazy") == ["5"]
    assert sqs("((( unbalanced") == []
    with pytest.raises(BadRequestError) as info:
        es.search(index=books, query={"query_string": {"query": "fox~2"}})
    assert "not supported" in info.value.body["error"]["reason"]


def test_term_terms_range_ids_exists(es: Elasticsearch, books: str) -> None:
    assert sorted(ids(es.search(index=books, query={"term": {"tag": "animals"}}))) == ["1", "2", "5"]
    assert ids(es.search(index=books, query={"term": {"tag": "Animals"}})) == []
    assert ids(es.search(index=books, query={"term": {"title.raw": "Search engines explained"}})) == ["3"]
    assert sorted(ids(es.search(index=books, query={"terms": {"tag": ["food", "tech"]}}))) == ["3", "4", "5"]
    assert sorted(ids(es.search(index=books, query={"term": {"author.country": "us"}}))) == ["2", "4"]
    assert sorted(ids(es.search(index=books, query={"range": {"year": {"gte": 2010, "lt": 2018}}}))) == ["2", "5"]
    assert sorted(ids(es.search(index=books, query={"range": {"price": {"gt": 20}}}))) == ["3", "4"]
    dates = {"range": {"published": {"gte": "2015-01-01", "lte": "2018-12-31"}}}
    assert sorted(ids(es.search(index=books, query=dates))) == ["3", "5"]
    assert sorted(ids(es.search(index=books, query={"range": {"published": {"lt": "now"}}}))) == \
        ["1", "2", "3", "4", "5"]
    assert sorted(ids(es.search(index=books, query={"ids": {"values": ["2", "4", "99"]}}))) == ["2", "4"]
    assert sorted(ids(es.search(index=books, query={"exists": {"field": "price"}}))) == ["1", "2", "3", "4"]
    constant = es.search(index=books, query={"term": {"tag": {"value": "tech", "boost": 2.5}}})
    assert {h["_score"] for h in constant["hits"]["hits"]} == {2.5}


def test_match_all_and_nested_bool(es: Elasticsearch, books: str) -> None:
    everything = es.search(index=books, query={"match_all": {}})
    assert everything["hits"]["total"] == {"value": 5, "relation": "eq"}
    assert everything["hits"]["max_score"] == 1.0
    query = {"bool": {
        "must": [{"match": {"title": "search"}}],
        "filter": [{"range": {"year": {"gte": 2015}}}],
        "must_not": [{"term": {"author.name": "Dee"}}],
        "should": [{"match": {"title": "explained"}}],
    }}
    assert ids(es.search(index=books, query=query)) == ["3"]
    nested = {"bool": {"should": [
        {"bool": {"must": [{"term": {"tag": "animals"}}, {"bool": {"must_not": [{"match": {"title": "fox"}}]}}]}},
        {"bool": {"filter": {"term": {"author.country": "fr"}}}},
    ]}}
    assert sorted(ids(es.search(index=books, query=nested))) == ["2", "3", "5"]
    msm = {"bool": {"should": [{"term": {"tag": "animals"}}, {"match": {"title": "fox"}},
                               {"range": {"year": {"lt": 2005}}}], "minimum_should_match": 2}}
    assert sorted(ids(es.search(index=books, query=msm))) == ["1"]
    only_filter = es.search(index=books, query={"bool": {"filter": [{"term": {"tag": "tech"}}]}})
    assert {h["_score"] for h in only_filter["hits"]["hits"]} == {0.0}
    assert sorted(ids(es.search(index=books, query={"bool": {"must_not": [{"term": {"tag": "animals"}}]}}))) == \
        ["3", "4"]
    with_should = es.search(index=books, query={"bool": {"must": {"term": {"tag": "animals"}},
                                                         "should": {"match": {"title": "fox"}}}})
    assert ids(with_should)[0] == "1" and len(ids(with_should)) == 3


def test_unsupported_and_unknown_queries(es: Elasticsearch, books: str) -> None:
    with pytest.raises(BadRequestError) as info:
        es.search(index=books, query={"wildcard": {"title": "fo*"}})
    assert "wildcard" in info.value.body["error"]["reason"]
    with pytest.raises(BadRequestError) as info:
        es.search(index=books, query={"no_such_query": {}})
    assert info.value.error == "parsing_exception"
    assert info.value.body["error"]["reason"] == "unknown query [no_such_query]"
    with pytest.raises(BadRequestError) as info:
        es.search(index=books, aggs={"x": {"terms": {"field": "tag"}}})
    assert "aggs" in info.value.body["error"]["reason"]
    with pytest.raises(BadRequestError) as info:
        es.search(index=books, sort=["title"])
    assert info.value.error == "illegal_argument_exception"
    with pytest.raises(BadRequestError) as info:
        es.search(index=books, from_=9995, size=10)
    assert "Result window is too large" in info.value.body["error"]["reason"]


# -- paging, _source, sort, totals ---------------------------------------------------------------

def test_paging(es: Elasticsearch, books: str) -> None:
    all_ids = ids(es.search(index=books, sort=[{"year": "asc"}], size=10))
    assert all_ids == ["1", "2", "5", "3", "4"]
    pages = [ids(es.search(index=books, sort=[{"year": "asc"}], size=2, from_=start)) for start in (0, 2, 4)]
    assert pages == [["1", "2"], ["5", "3"], ["4"]]
    empty = es.search(index=books, size=0)
    assert empty["hits"]["hits"] == [] and empty["hits"]["total"]["value"] == 5
    url_params = es.perform_request("GET", f"/{books}/_search", params={"size": "1", "from": "1", "sort": "year:desc"})
    assert ids(url_params) == ["3"]


def test_source_filtering(es: Elasticsearch, books: str) -> None:
    hit = es.search(index=books, query={"ids": {"values": ["1"]}}, source=False)["hits"]["hits"][0]
    assert "_source" not in hit
    hit = es.search(index=books, query={"ids": {"values": ["1"]}}, source=["title", "author.name"])["hits"]["hits"][0]
    assert hit["_source"] == {"title": "The quick brown fox", "author": {"name": "Ann"}}
    hit = es.search(index=books, query={"ids": {"values": ["1"]}},
                    source={"includes": ["author.*", "year"], "excludes": ["author.country"]})["hits"]["hits"][0]
    assert hit["_source"] == {"author": {"name": "Ann"}, "year": 2001}
    resp = es.search(index=books, query={"ids": {"values": ["1"]}}, source_excludes=["body", "author"])
    hit = resp["hits"]["hits"][0]
    assert set(hit["_source"]) == {"title", "tag", "year", "price", "published"}
    doc = es.get(index=books, id="1", source_includes=["year"])
    assert doc["_source"] == {"year": 2001}


def test_sorting(es: Elasticsearch, books: str) -> None:
    resp = es.search(index=books, sort=[{"price": {"order": "desc"}}])
    assert ids(resp) == ["4", "3", "2", "1", "5"]  # missing last
    assert [h["sort"] for h in resp["hits"]["hits"]][:2] == [[42.0], [35.25]]
    assert resp["hits"]["max_score"] is None and resp["hits"]["hits"][0]["_score"] is None
    first = es.search(index=books, sort=[{"price": {"order": "asc", "missing": "_first"}}])
    assert ids(first)[0] == "5"
    by_date = es.search(index=books, sort=[{"published": "desc"}], size=1)
    assert by_date["hits"]["hits"][0]["sort"] == [1677801600000]
    multi = es.search(index=books, sort=[{"tag": "asc"}, {"year": "desc"}])
    assert ids(multi) == ["5", "2", "1", "4", "3"]  # a multi-valued field sorts ascending by its min
    by_score = es.search(index=books, query={"match": {"title": "search"}}, sort=["_score", {"year": "asc"}])
    assert [h["_score"] is not None for h in by_score["hits"]["hits"]] == [True, True]
    keyword = es.search(index=books, sort=[{"author.name": "desc"}])
    assert ids(keyword) == ["5", "4", "3", "2", "1"]
    with pytest.raises(BadRequestError) as info:
        es.search(index=books, sort=[{"not_mapped": "asc"}])
    assert info.value.error == "query_shard_exception"
    assert len(ids(es.search(index=books, sort=[{"not_mapped": {"order": "asc", "unmapped_type": "long"}}]))) == 5


def test_track_total_hits(es: Elasticsearch) -> None:
    name = fresh()
    helpers.bulk(es, ({"_id": str(i), "n": i} for i in range(30)), index=name)
    assert es.search(index=name, track_total_hits=10)["hits"]["total"] == {"value": 10, "relation": "gte"}
    assert es.search(index=name, track_total_hits=True)["hits"]["total"] == {"value": 30, "relation": "eq"}
    assert "total" not in es.search(index=name, track_total_hits=False)["hits"]


def test_search_across_indices(es: Elasticsearch) -> None:
    a, b = fresh(), fresh()
    es.index(index=a, id="1", document={"t": "shared words here", "n": 1})
    es.index(index=b, id="1", document={"t": "shared", "n": 2})
    resp = es.search(index=f"{a},{b}", query={"match": {"t": "shared"}})
    assert {(h["_index"], h["_id"]) for h in resp["hits"]["hits"]} == {(a, "1"), (b, "1")}
    assert resp["_shards"]["total"] == 2
    assert es.count(index=f"{a},{b}")["count"] == 2
    assert ids(es.search(index=f"{a},{b}", sort=[{"n": "desc"}]))[0] == "1"
    assert es.search(index=f"{a},{b}", sort=[{"n": "desc"}])["hits"]["hits"][0]["_index"] == b


def test_count(es: Elasticsearch, books: str) -> None:
    assert es.count(index=books)["count"] == 5
    assert es.count(index=books, query={"term": {"tag": "animals"}})["count"] == 3
    assert es.count(index=books, q="fox")["count"] == 1
    # Without an index: every open index (the module's other tests add theirs).
    every = sorted(name for name in es.indices.get(index="*") if not name.startswith("."))
    assert books in every
    assert es.count()["count"] == sum(es.count(index=name)["count"] for name in every)


def test_msearch(es: Elasticsearch, books: str) -> None:
    resp = es.msearch(searches=[
        {"index": books}, {"query": {"match": {"title": "fox"}}},
        {"index": "no-such-index"}, {"query": {"match_all": {}}},
        {"index": books}, {"query": {"bogus": {}}},
        {}, {"query": {"term": {"tag": "tech"}}, "size": 1},
    ])
    responses = resp["responses"]
    assert len(responses) == 4
    assert responses[0]["status"] == 200 and ids(responses[0]) == ["1"]
    assert responses[1]["status"] == 404 and responses[1]["error"]["type"] == "index_not_found_exception"
    assert responses[2]["status"] == 400 and responses[2]["error"]["type"] == "parsing_exception"
    assert responses[3]["status"] == 200 and len(responses[3]["hits"]["hits"]) == 1
    scoped = es.msearch(index=books, searches=[{}, {"query": {"match_all": {}}, "size": 0}])
    assert scoped["responses"][0]["hits"]["total"]["value"] == 5


def test_url_query_and_errors_shape(es: Elasticsearch, books: str) -> None:
    resp = es.search(index=books, q="title:reranking")
    assert ids(resp) == ["4"]
    for key in ("took", "timed_out", "_shards", "hits"):
        assert key in resp
    hit = resp["hits"]["hits"][0]
    assert set(hit) == {"_index", "_id", "_score", "_source"}
    with pytest.raises(ApiError) as info:
        es.perform_request("GET", "/_nothing_here/_what", headers={"accept": "application/json"})
    assert info.value.status_code == 400


def test_more_queries_and_options(es: Elasticsearch, books: str) -> None:
    assert sorted(ids(es.search(index=books, query={"exists": {"field": "author"}}))) == ["1", "2", "3", "4", "5"]
    assert sorted(ids(es.search(index=books, query={"range": {"tag": {"gte": "food", "lt": "tech"}}}))) == ["5"]
    dis = es.search(index=books, query={"dis_max": {"queries": [{"term": {"tag": "tech"}},
                                                                {"term": {"author.country": "fr"}}],
                                                    "tie_breaker": 0.5}})
    assert {h["_id"]: h["_score"] for h in dis["hits"]["hits"]} == {"3": 1.5, "4": 1.0}
    const = es.search(index=books, query={"constant_score": {"filter": {"match": {"title": "fox"}}, "boost": 3}})
    assert [h["_score"] for h in const["hits"]["hits"]] == [3.0]
    assert ids(es.search(index=books, query={"match": {"body": "dogs"}}, min_score=100)) == []
    first = es.search(index=books, sort=[{"year": "asc"}], size=2)
    after = es.search(index=books, sort=[{"year": "asc"}], size=2, search_after=first["hits"]["hits"][-1]["sort"])
    assert ids(after) == ["5", "3"]
    assert ids(es.search(index=books, sort=["_doc"])) == ["1", "2", "3", "4", "5"]
    versioned = es.search(index=books, query={"ids": {"values": ["1"]}}, version=True, seq_no_primary_term=True)
    assert {"_version", "_seq_no", "_primary_term"} <= set(versioned["hits"]["hits"][0])


def test_mapping_update_and_get_index(es: Elasticsearch) -> None:
    name = fresh()
    es.indices.create(index=name, mappings={"properties": {"a": {"type": "text"}}})
    assert es.indices.put_mapping(index=name, properties={"b": {"type": "keyword"}})["acknowledged"]
    with pytest.raises(BadRequestError):
        es.indices.put_mapping(index=name, properties={"a": {"type": "long"}})
    info = es.indices.get(index=name)
    assert set(info[name]["mappings"]["properties"]) == {"a", "b"}
    es.index(index=name, id="1", document={"a": "text here", "b": "exact"})
    assert ids(es.search(index=name, query={"term": {"b": "exact"}})) == ["1"]
    upsert = es.update(index=name, id="2", doc={"a": "patch"}, upsert={"a": "fresh", "b": "new"})
    assert upsert["result"] == "created" and es.get(index=name, id="2")["_source"] == {"a": "fresh", "b": "new"}
