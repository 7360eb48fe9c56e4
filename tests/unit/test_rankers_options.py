"""check_ranker: a ranker's name, class, extra and options are checked against
its ``__init__`` before anything is built, with a one-line RankerSpecError."""
from pathlib import Path
from typing import List, Literal, Optional, Sequence, Union

import pytest

import selproxy
from selproxy.rankers.registry import RankerSpecError, check_ranker, load_ranker_class


class Typed:
    """A ranker whose options cover the annotation forms the check knows."""

    def __init__(self, path: Union[str, Path], *, size: int = 1, weight: float = 0.5, name: str = "x",
                 flag: bool = False, limit: Optional[int] = None, mode: Literal["a", "b"] = "a",
                 words: Sequence[str] = (), numbers: List[int] = []) -> None:  # noqa: B006 - never mutated
        pass

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        return [0.0 for _ in docs]


class TakesAnything:
    def __init__(self, **options: object) -> None:
        pass

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        return [0.0 for _ in docs]


SPEC = f"{__name__}:Typed"


@pytest.mark.parametrize("options, expected", [
    ({"path": "/m"}, {"path": "/m"}),
    ({"path": "/m", "size": 3, "weight": 2}, {"path": "/m", "size": 3, "weight": 2.0}),
    ({"path": "/m", "name": 123}, {"path": "/m", "name": "123"}),       # read as JSON, meant as text
    ({"path": 7}, {"path": "7"}),
    ({"path": "/m", "limit": None, "mode": "b"}, {"path": "/m", "limit": None, "mode": "b"}),
    ({"path": "/m", "words": ["a", "b"], "numbers": [1, 2]}, {"path": "/m", "words": ["a", "b"], "numbers": [1, 2]}),
    ({"path": "/m", "flag": True}, {"path": "/m", "flag": True}),
])
def test_options_that_fit(options, expected):
    checked = check_ranker(SPEC, options)
    assert checked == expected
    assert [type(v) for v in checked.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize("options, message", [
    ({}, f"ranker {SPEC!r} needs path: give --ranker-option path=VALUE"),
    ({"path": "/m", "size": "abc"}, f"ranker {SPEC!r}: option size must be int, not 'abc'"),
    ({"path": "/m", "size": True}, f"ranker {SPEC!r}: option size must be int, not true"),
    ({"path": "/m", "size": 1.5}, f"ranker {SPEC!r}: option size must be int, not 1.5"),
    ({"path": "/m", "weight": "heavy"}, f"ranker {SPEC!r}: option weight must be float, not 'heavy'"),
    ({"path": "/m", "flag": "nope"}, f"ranker {SPEC!r}: option flag must be bool, not 'nope'"),
    ({"path": "/m", "limit": "x"}, f"ranker {SPEC!r}: option limit must be Optional[int], not 'x'"),
    ({"path": "/m", "mode": "c"}, f"ranker {SPEC!r}: option mode must be Literal['a', 'b'], not 'c'"),
    ({"path": "/m", "numbers": [1, "x"]}, f"ranker {SPEC!r}: option numbers must be List[int], not [1, \"x\"]"),
    ({"path": ["/m"]}, f"ranker {SPEC!r}: option path must be Union[str, Path], not [\"/m\"]"),
    ({"path": "/m", "sise": 3}, f"ranker {SPEC!r} takes no option 'sise'; its options: flag, limit, mode, "
                                "name, numbers, path, size, weight, words"),
    ({"path": "/m", "batching": "nope"}, f"ranker {SPEC!r}: option batching must be true or false, not 'nope'"),
    ({"path": "/m", "batch_queue": 10}, f"ranker {SPEC!r} is not micro-batched, so batch_queue cannot be set"),
])
def test_options_that_do_not_fit(options, message):
    with pytest.raises(RankerSpecError) as caught:
        check_ranker(SPEC, options)
    assert str(caught.value) == message


def test_a_class_that_takes_any_keyword_gets_its_options_unchecked():
    assert check_ranker(f"{__name__}:TakesAnything", {"x": 1, "y": "z"}) == {"x": 1, "y": "z"}


def test_the_builtin_micro_batched_rankers_batch_options():
    assert check_ranker("minilm", {"batch_max_pairs": 64, "batch_max_wait_ms": 1}) == {
        "batch_max_pairs": 64, "batch_max_wait_ms": 1.0}
    with pytest.raises(RankerSpecError, match="option batch_max_wait_ms must be float, not 'soon'"):
        check_ranker("minilm", {"batch_max_wait_ms": "soon"})


def test_the_proxy_checks_options_when_it_is_made():
    # Before: accepted, and every search fell back for want of an int.
    with pytest.raises(ValueError, match=r"^ranker 'minilm': option cache_size must be int, not 'abc'$"):
        selproxy.Proxy(upstream="http://127.0.0.1:9", ranker="minilm", ranker_options={"cache_size": "abc"})


def test_load_errors_keep_their_builtin_kinds():
    # A module not found is still a ModuleNotFoundError, not a ranker a TypeError.
    with pytest.raises(ModuleNotFoundError):
        load_ranker_class("no_such_module_xyz:Thing")
    with pytest.raises(TypeError):
        load_ranker_class("collections:OrderedDict")
