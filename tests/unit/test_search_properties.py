"""Property-style checks: random and adversarial strings into every query-text
extractor and into the ``_source`` filter, each input under a time bound.

Seeded, so a failure replays; no dependency beyond the standard library.
"""
import json
import random
import time

import pytest

from selproxy.search import _json
from selproxy.search.config import SOLR
from selproxy.search.extract import (MAX_QUERY_CHARS, _lucene_tokens, document_text, lucene_text,
                                     parse_field_spec, query_text)
from selproxy.search.overrides import extract_overrides
from selproxy.search.rewrite import client_source_filter, plan_params_search, plan_search

# One input may take this long.  Linear work on these sizes takes milliseconds;
# the quadratic expressions this replaced took seconds to minutes.
PER_INPUT_SECONDS = 1.0
ALPHABET = list('ab \t\n\\"/[]{}()~^*?:+-!|&0123.,') + [
    "AND", "OR", "NOT", "TO", "://", "\u00e9", "\u00a0", "\u2003", "\u0663", "\0", "\ud800", "\udfff", "*:*"]


def adversarial(n):
    """Long runs of every construct that needs a closing character, and their mixes."""
    yield from (
        "[a " * n, "{a " * n, "[" * n, "]" * n, "~" * n + "x", "^" * n + "x", "~1" * n, "x~" * n,
        '"' * n, '"a' * n, '"\\' * n, "\\" * n, "/" * n, "/a\\\n" * n, "/\\" * n, "(" * n, ")" * n,
        "(a" * n, "-(" * n, "a:" * n, "a:/" * n, "http://" * n, "&&" * n, "||" * n, "!" * n,
        "NOT " * n, "a AND " * n, "*?" * n, "\0" * n, "\ud800" * n, "\u2003" * n, "[a] " * n,
        "x" * (n * 4), " " * n, '"a"~' * n, '"a"^1.' * n, "a~1.2^3" * n,
    )


def random_strings(rng, count, max_len):
    for _ in range(count):
        yield "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, max_len)))


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    elapsed = time.perf_counter() - started
    assert elapsed < PER_INPUT_SECONDS, (fn.__name__, repr(args)[:80], elapsed)
    return result


def query_bodies(q):
    yield {"query": {"query_string": {"query": q}}}
    yield {"query": {"simple_query_string": {"query": q, "fields": ["a"]}}}
    yield {"query": {"match": {"title": q}}}
    yield {"query": {"multi_match": {"query": q}}}
    yield {"query": {"bool": {"should": [{"match_phrase": {"t": {"query": q}}}] * 3,
                              "must": {"combined_fields": {"query": q}}}}}


def all_inputs(seed):
    rng = random.Random(seed)
    yield from adversarial(20_000)  # past MAX_QUERY_CHARS: main froze for seconds on these
    yield from random_strings(rng, 300, 60)
    yield from random_strings(rng, 5, 10_000)


@pytest.mark.parametrize("seed", [1])
def test_every_query_text_extractor_is_fast_and_total(seed):
    for q in all_inputs(seed):
        text = timed(lucene_text, q)
        assert isinstance(text, str) and len(text) <= MAX_QUERY_CHARS
        for body in query_bodies(q):
            text = timed(query_text, body)
            assert isinstance(text, str) and len(text) <= MAX_QUERY_CHARS
        assert len(timed(query_text, None, q)) <= MAX_QUERY_CHARS
        assert len(timed(query_text, {"p": {"t": q}}, None, "p.t")) <= MAX_QUERY_CHARS
        plan = timed(plan_params_search, SOLR, {"q": q}, ("core",), topn=10)
        assert len(plan.query) <= MAX_QUERY_CHARS
        for body in query_bodies(q):
            timed(plan_search, body, {}, ("books",), topn=10)
        timed(document_text, {"_source": {"t": q}, "highlight": {"t": [q, "<em>" + q]}},
              [parse_field_spec("t"), parse_field_spec("highlight.t")])
        target = "/_search?q=" + q.replace("&", "%26") + "&selproxy." + q[:300].replace("=", "%3D") + "=1"
        overrides, _, _ = timed(extract_overrides, target, [("X-Selproxy-" + q[:200], q[:200])], 10)
        for item in overrides.ignored:
            assert item.isascii() and item.isprintable() and len(item) <= 32


def test_the_scanner_is_linear_past_the_bound():
    # Without the MAX_QUERY_CHARS cut: 100,000 characters of each adversarial
    # form.  Linear takes a tenth of a second each; the old expressions took
    # minutes to hours on these.
    for q in adversarial(25_000):
        started = time.perf_counter()
        for _ in _lucene_tokens(q[:100_000]):
            pass
        assert time.perf_counter() - started < 5 * PER_INPUT_SECONDS, repr(q[:20])


def source_docs(rng):
    keys = ["a", "b", "a.b", "t?tle", "a[1]", "x*", "", ".", "\ud800", "k" * 300]
    yield {"a": {"b": {"c": 1}, "d": [1, {"b": 2}]}, "t?tle": "x", "title": "y", "a[1]": 3}
    yield {f"k{i}": {f"j{j}": j for j in range(20)} for i in range(100)}
    for _ in range(15):
        doc = {}
        for _ in range(rng.randint(0, 12)):
            node = doc
            for _ in range(rng.randint(0, 5)):
                node = node.setdefault(rng.choice(keys), {})
                if not isinstance(node, dict):
                    break
            if isinstance(node, dict):
                node[rng.choice(keys)] = rng.choice([1, "s", [1, {"b": 1}], {}])
        yield doc


def source_patterns(rng):
    yield ["a.*", "*.b", "t?tle", "a[1]", "*"]
    yield ["*a*a*a*a*a*a*a*b"] * 64
    yield [f"f{k}" for k in range(40_000)]
    yield ["*" * 256, "." * 256, "a." * 128]
    for _ in range(25):
        yield ["".join(rng.choice("ab.*?[]") for _ in range(rng.randint(0, 12)))
               for _ in range(rng.randint(1, 8))]


@pytest.mark.parametrize("seed", [1])
def test_source_filter_is_fast_total_and_only_narrows(seed):
    rng = random.Random(seed)
    docs = list(source_docs(rng))
    for patterns in source_patterns(rng):
        for shape in ({"_source": patterns}, {"_source": {"includes": patterns[:3], "excludes": patterns[3:]}},
                      {"_source": {"excludes": patterns}}):
            plan = timed(plan_search, {"query": {"match": {"t": "x"}}, **shape}, {}, ("books",), topn=10)
            f = client_source_filter(shape, {})
            if plan.skip:
                assert plan.skip == "source_filter" and f is not None and not f.within_limits
                continue
            for doc in docs:
                hit = {"_source": json.loads(json.dumps(doc))}
                try:
                    timed(f.apply, hit)
                except ValueError:  # the budget: the search is then resent unchanged
                    continue
                assert set(hit["_source"]) <= set(doc)


def test_json_decoding_is_total_on_adversarial_bytes():
    rng = random.Random(3)
    pieces = [b"[", b"]", b"{", b"}", b'"', b"\\", b"\\u", b"d800", b"NaN", b"1e400", b"-", b"0",
              b"9" * 25, b",", b":", b"\xed\xa0\x80", b"\0", b"true", b"null", b"\xff"]
    inputs = [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    inputs += [p * 50_000 for p in pieces]
    for data in inputs:
        try:
            doc = timed(_json.loads, data)
        except ValueError:
            continue
        timed(_json.dumps, doc)  # whatever was read can be written again
