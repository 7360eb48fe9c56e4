"""The per-request override allow-list."""
from selproxy.search.overrides import Overrides, extract_overrides


def test_url_and_header_overrides_are_parsed_and_stripped():
    overrides, target, headers = extract_overrides(
        "/books/_search?q=x&selproxy.topn=20&pretty&selproxy.debug=true",
        [("Host", "h"), ("X-Selproxy-Rerank", "false"), ("Accept", "*/*")], max_topn=100)
    assert overrides == Overrides(topn=20, rerank=False, debug=True)
    assert target == "/books/_search?q=x&pretty"
    assert headers == [("Host", "h"), ("Accept", "*/*")]


def test_only_the_allow_list_is_honoured():
    overrides, target, headers = extract_overrides(
        "/_search?selproxy.upstream=http%3A%2F%2Fevil%3A80&selproxy.topn=100000&selproxy.ranker=os:system",
        [("X-Selproxy-Upstream", "http://169.254.169.254/"), ("x-selproxy-topn", "abc")], max_topn=500)
    assert overrides.topn is None and overrides.rerank is True
    assert overrides.ignored == ("upstream", "topn", "ranker")
    assert target == "/_search" and headers == []


def test_no_overrides_leaves_target_alone():
    overrides, target, headers = extract_overrides("/_search?q=a&size=1", [("A", "b")], max_topn=5)
    assert overrides == Overrides() and target == "/_search?q=a&size=1" and headers == [("A", "b")]
