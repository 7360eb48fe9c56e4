"""The demo corpus: passages from the running Python's stdlib documentation."""
import statistics
import sys

import pytest

from selproxy.demo.corpus import MAX_WORDS, MIN_WORDS, Passage, build_passages, passages_from_text
from selproxy.evaluation.loader import mappings_for


def words(n, word="w"):
    return " ".join(f"{word}{i}" for i in range(n))


def test_short_text_stays_one_passage():
    assert passages_from_text("Return the absolute value.") == ["Return the absolute value."]
    assert passages_from_text("") == []


def test_paragraphs_are_packed_to_the_target_size():
    text = "\n\n".join(words(25, f"p{i}_") for i in range(8))  # 200 words in 8 paragraphs
    passages = passages_from_text(text)
    sizes = [len(p.split()) for p in passages]
    assert sum(sizes) == 200
    assert all(MIN_WORDS <= size <= MAX_WORDS for size in sizes), sizes
    assert " ".join(passages) == " ".join(text.split())
    # the first cut falls between paragraphs
    assert passages[1].split()[0].endswith("_0")


def test_a_long_paragraph_is_cut_evenly():
    passages = passages_from_text(words(300))
    sizes = [len(p.split()) for p in passages]
    assert sizes == [100, 100, 100]
    assert " ".join(passages) == words(300)


def test_a_short_tail_joins_the_previous_passage():
    passages = passages_from_text(words(70, "a") + "\n\n" + words(10, "b"))
    assert [len(p.split()) for p in passages] == [80]
    passages = passages_from_text(words(100, "a") + "\n\n" + words(40, "b"))
    assert [len(p.split()) for p in passages] == [70, 70]


@pytest.fixture(scope="module")
def passages():
    before = set(sys.modules)
    built = build_passages()
    # The walk ran in a child interpreter: nothing it imported is imported here.
    assert not {"imaplib", "curses", "tkinter", "antigravity"} & (set(sys.modules) - before)
    return built


def test_stdlib_corpus_shape(passages):
    assert len(passages) > 1000
    assert all(isinstance(p, Passage) and p.title and p.text for p in passages)
    ids = [p.id for p in passages]
    assert len(ids) == len(set(ids))
    sizes = [len(p.text.split()) for p in passages]
    assert MIN_WORDS <= statistics.median(sizes) <= MAX_WORDS
    assert max(sizes) <= MAX_WORDS
    assert {"topic", "module", "class", "function", "method", "group"} >= {p.kind for p in passages}


def test_stdlib_corpus_content(passages):
    by_id = {p.id: p for p in passages}
    assert by_id["open#0"].title == "open" and "Open file and return a stream" in by_id["open#0"].text
    assert any(p.kind == "topic" and p.title == 'The "with" statement' for p in passages)
    assert any(p.title.startswith("json.dumps") for p in passages)
    # modules that print, open windows or are tests are never read
    for banned in ("this", "antigravity", "tkinter", "idlelib", "turtle", "test."):
        assert not any(p.id.startswith(banned) for p in passages), banned
    # no memory addresses leak into titles or text, so ids and text stay stable
    assert not any(" at 0x" in p.text for p in passages)


def test_stdlib_corpus_is_deterministic(passages):
    assert build_passages() == passages


def test_bulk_mappings_make_strings_text():
    assert mappings_for({"_id": "x", "title": "t", "n": 3, "f": 0.5, "b": True, "tags": ["a"]}) == {
        "properties": {"title": {"type": "text"}, "n": {"type": "long"}, "f": {"type": "double"},
                       "b": {"type": "boolean"}}
    }
