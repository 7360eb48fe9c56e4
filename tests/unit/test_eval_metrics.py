"""Metric code against values computed by hand (trec_eval conventions)."""
import math

import pytest

from selproxy.evaluation.metrics import mrr_at, ndcg_at, percentile, recall_at

LOG2_3 = math.log2(3)
JUDGED = {"a": 2, "b": 0, "c": 1, "z": 1}  # "z" is never retrieved


def test_ndcg_graded_with_linear_gain():
    # DCG = 2/log2(2) + 0 + 1/log2(4) = 2.5
    # IDCG over the judged grades 2, 1, 1 = 2 + 1/log2(3) + 1/log2(4)
    expected = 2.5 / (2 + 1 / LOG2_3 + 0.5)
    assert ndcg_at(["a", "b", "c"], JUDGED, 10) == pytest.approx(expected)


def test_ndcg_cut_off_applies_to_the_ideal_ranking_too():
    # at k=1 the ideal holds only the grade-2 document
    assert ndcg_at(["c", "a"], JUDGED, 1) == pytest.approx(1 / 2)
    assert ndcg_at(["a", "c"], JUDGED, 1) == pytest.approx(1.0)


def test_ndcg_perfect_and_empty():
    assert ndcg_at(["a", "c", "z"], JUDGED, 3) == pytest.approx(1.0)
    assert ndcg_at(["b", "unjudged"], JUDGED, 10) == 0.0
    assert ndcg_at(["a"], {"a": 0}, 10) == 0.0  # no relevant document at all
    assert ndcg_at([], JUDGED, 10) == 0.0


def test_mrr():
    assert mrr_at(["b", "x", "c"], JUDGED, 10) == pytest.approx(1 / 3)
    assert mrr_at(["b", "x", "c"], JUDGED, 2) == 0.0
    assert mrr_at(["a"], JUDGED, 10) == 1.0


def test_recall_counts_relevant_documents_once():
    assert recall_at(["a", "b", "x"], JUDGED, 50) == pytest.approx(1 / 3)
    assert recall_at(["a", "a", "c", "z"], JUDGED, 3) == pytest.approx(2 / 3)
    assert recall_at(["a", "c", "z"], JUDGED, 3) == 1.0
    assert recall_at(["a"], {"a": 0}, 3) == 0.0


def test_percentile_interpolates_linearly_like_numpy():
    values = [10.0, 1.0, 4.0, 3.0, 2.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    # position (5-1)*0.99 = 3.96: 4 + 0.96 * (10 - 4)
    assert percentile(values, 99) == pytest.approx(9.76)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)
