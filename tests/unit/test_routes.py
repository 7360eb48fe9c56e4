import pytest

from selproxy import Route
from selproxy._routes import RouteTable


async def _h(request, upstream):  # pragma: no cover - never called
    raise AssertionError


TABLE = RouteTable([
    Route(("GET", "POST"), "/_search", _h, "search-all"),
    Route(("GET", "POST"), "/{index}/_search", _h, "search"),
    Route(("GET",), "/_selproxy/status", _h, "status"),
    Route(("POST",), "/solr/{core}/select", _h, "solr"),
])


@pytest.mark.parametrize("method, target, name, params", [
    ("GET", "/_search", "search-all", {}),
    ("POST", "/_search?q=x", "search-all", {}),
    ("GET", "/books/_search", "search", {"index": "books"}),
    ("GET", "/books/_search/", "search", {"index": "books"}),
    ("POST", "/a,b*/_search?size=3", "search", {"index": "a,b*"}),
    ("GET", "/my%2Dindex/_search", "search", {"index": "my-index"}),
    ("GET", "/_selproxy/status", "status", {}),
    ("POST", "/solr/core1/select", "solr", {"core": "core1"}),
])
def test_matching_routes(method, target, name, params):
    match = TABLE.match(method, target)
    assert match is not None
    assert match.route.name == name
    assert match.params == params


@pytest.mark.parametrize("method, target", [
    ("PUT", "/books/_search"),           # method not claimed
    ("DELETE", "/_search"),
    ("GET", "/books/_doc/1"),            # other path
    ("GET", "/books/_searchx"),
    ("GET", "/a/b/_search"),             # segment count differs
    ("GET", "/"),
    ("GET", "/_selproxy/status/x"),
    ("GET", "/solr/core1/select"),       # GET not in that route
    ("POST", "/books/_search_shards"),
    ("GET", "//_search"),                # an empty index is not an index
])
def test_non_matching_requests_pass_through(method, target):
    assert TABLE.match(method, target) is None


def test_bad_patterns_are_refused_when_compiled():
    with pytest.raises(ValueError):
        RouteTable([Route(("GET",), "no-slash", _h)])
    with pytest.raises(ValueError):
        RouteTable([Route(("GET",), "/a//b", _h)])
    with pytest.raises(ValueError):
        RouteTable([Route(("GET",), "/{not an id}/x", _h)])


def test_first_matching_route_wins():
    table = RouteTable([Route(("GET",), "/x/{name}", _h, "one"), Route(("GET",), "/x/y", _h, "two")])
    assert table.match("GET", "/x/y").route.name == "one"
    assert len(table) == 2


def _reference_match(method, target):
    """Routes matched the plain way: split the path, compare segments."""
    path = target.split("?", 1)[0][1:]
    if path.endswith("/"):
        path = path[:-1]
    parts = path.split("/") if path else []
    if "" in parts:
        return None
    for route in TABLE.routes:
        segments = [s for s in route.path.strip("/").split("/") if s]
        if method not in route.methods or len(segments) != len(parts):
            continue
        if all(s.startswith("{") or s == p for s, p in zip(segments, parts)):
            return route.name
    return None


def test_lookup_agrees_with_a_plain_reference_on_odd_paths():
    # The core counts segments in C before it splits; check the two agree
    # on empty segments, slashes around a query, and long paths.
    import random
    rng = random.Random(11)
    pieces = ["", "/", "//", "_search", "books", "solr", "select", "_selproxy", "status", "?", "?a=/b/",
              "x" * 70, "/" * 70]
    for _ in range(3000):
        target = "/" + "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6)))
        for method in ("GET", "POST"):
            match = TABLE.match(method, target)
            assert (match.route.name if match else None) == _reference_match(method, target), target


def test_a_route_of_more_than_64_segments_still_matches():
    path = "/" + "/".join(f"s{k}" for k in range(70))
    table = RouteTable([Route(("GET",), path, _h, "deep")])
    assert table.match("GET", path).route.name == "deep"
    assert table.match("GET", path + "/extra") is None


def test_in_place_matching_agrees_with_splitting_on_captures():
    import random
    probes = pytest.importorskip("selproxy._probes", reason="a debug build's test entry points")
    rng = random.Random(5)
    pieces = ["", "/", "//", "_search", "books", "a%2Cb", "%E2%82%AC", "solr", "core1", "select",
              "_selproxy", "status", "?", "?q=/x/", "é".encode().decode("latin-1")]
    for _ in range(3000):
        target = ("/" + "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6)))).encode("latin-1")
        for method in (b"GET", b"POST", b"PUT"):
            fast = TABLE.match(method, target)
            plain = probes.match_split(TABLE, method, target)
            assert (fast and (fast.route.name, fast.params)) == (plain and (plain.route.name, plain.params)), target
