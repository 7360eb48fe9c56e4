"""The built-in rankers and the ranker registry."""
import pytest
from support.aio import run

from selproxy.rankers import Ranker
from selproxy.rankers.identity import IdentityRanker
from selproxy.rankers.registry import (BUILTIN_RANKERS, available_rankers, load_ranker_class,
                                       parse_ranker_options, resolve_ranker)


def test_identity_keeps_engine_order():
    scores = run(IdentityRanker().rank("q", ["a", "b", "c"]))
    assert scores == [3.0, 2.0, 1.0]
    assert isinstance(IdentityRanker(), Ranker)


def test_bm25_ranks_lexically():
    pytest.importorskip("bm25s")
    from selproxy.rankers.bm25 import BM25Ranker

    ranker = BM25Ranker()
    docs = ["a dog barked at the mailman", "the cat sat on the mat", "cats and dogs", ""]
    scores = ranker.rank("cat mat", docs)
    assert len(scores) == 4 and scores.index(max(scores)) == 1
    assert all(isinstance(s, float) for s in scores)
    assert ranker.rank("the", docs) == [0.0] * 4  # only a stopword
    assert ranker.rank("cat", []) == []
    assert ranker.rank("cat", ["", ""]) == [0.0, 0.0]
    # What its docstring warns of: it is never the default, and its IDF comes
    # from the window alone, so one document's score depends on the others.
    assert BUILTIN_RANKERS["default"] != BUILTIN_RANKERS["bm25"]
    alone = ranker.rank("cat mat", ["the cat sat on the mat", "a dog"])[0]
    among_cats = ranker.rank("cat mat", ["the cat sat on the mat", "a cat", "cat food", "my cat"])[0]
    assert among_cats < alone


def test_parse_ranker_options():
    assert parse_ranker_options(["k1=1.2", "stopwords=en", "flag=true", "names=[1,2]", "model-name=x"]) == {
        "k1": 1.2, "stopwords": "en", "flag": True, "names": [1, 2], "model_name": "x"}
    assert parse_ranker_options(None) == {}
    with pytest.raises(ValueError):
        parse_ranker_options(["novalue"])


def test_resolve_by_short_name_and_by_path():
    assert isinstance(resolve_ranker("identity"), IdentityRanker)
    assert isinstance(resolve_ranker("selproxy.rankers.identity:IdentityRanker"), IdentityRanker)
    assert set(BUILTIN_RANKERS) <= set(available_rankers())
    pytest.importorskip("bm25s")
    assert resolve_ranker("bm25", {"k1": 0.9}).k1 == 0.9


def test_resolve_errors():
    with pytest.raises(ValueError, match="unknown ranker"):
        load_ranker_class("nope")
    with pytest.raises(ValueError):
        load_ranker_class("module:")
    with pytest.raises(ModuleNotFoundError):
        load_ranker_class("no_such_module_xyz:Thing")
    with pytest.raises(TypeError):
        resolve_ranker("collections:OrderedDict")


def test_worked_example_in_the_protocol_docstring_runs():
    import textwrap

    import selproxy.rankers.base as base

    source = base.__doc__.split("A worked example")[1].split("::", 1)[1].split("Use it from")[0]
    namespace = {}
    exec(textwrap.dedent(source), namespace)
    ranker = namespace["ShortAndRelevant"]()
    assert isinstance(ranker, Ranker)
    scores = ranker.rank("cat mat", ["the cat sat on the mat", "cat", "dog"])
    assert scores.index(max(scores)) == 0 and scores[2] < scores[1]
