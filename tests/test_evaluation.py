"""The measures thresholds are chosen with, on hand-checked numbers."""

from __future__ import annotations

import pytest

from evaluation.measures import operating_point, retrieval, threshold_at_far, top_k_accuracy

GENUINE = [0.9, 0.8, 0.7, 0.6, 0.5, 0.3]
IMPOSTOR = [0.55, 0.4, 0.35, 0.2, 0.1, 0.05, 0.0, -0.1, -0.2, -0.3]


def test_threshold_at_far_refuses_all_but_the_allowed_impostors():
    strict = threshold_at_far(GENUINE, IMPOSTOR, 0.0)
    assert strict.far == 0.0 and 0.55 < strict.threshold < 0.5501
    assert strict.val == pytest.approx(4 / 6)
    one_in_ten = threshold_at_far(GENUINE, IMPOSTOR, 0.1)
    assert one_in_ten.far == pytest.approx(0.1) and 0.4 < one_in_ten.threshold < 0.4001
    assert one_in_ten.val == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="target FAR"):
        threshold_at_far(GENUINE, IMPOSTOR, 1.0)


def test_operating_point_counts_pairs_at_or_above_the_threshold():
    point = operating_point(GENUINE, IMPOSTOR, 0.5)
    assert (point.far, point.val) == (pytest.approx(0.1), pytest.approx(5 / 6))
    with pytest.raises(ValueError):
        operating_point([], IMPOSTOR, 0.5)


def test_retrieval_precision_recall_f1():
    result = retrieval(["a", "b", "c", "x"], ["a", "b", "c", "d", "e", "f"])
    assert (result.precision, result.recall) == (0.75, 0.5)
    assert result.f1 == pytest.approx(0.6)
    assert retrieval([], ["a"]).f1 == 0.0


def test_top_k_accuracy():
    ranked = [["a", "b"], ["b", "a"], ["c", "d", "e", "f", "g", "a"]]
    assert top_k_accuracy(ranked, ["a", "a", "a"], ks=(1, 2, 5, 10)) == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(2 / 3),
        5: pytest.approx(2 / 3),
        10: 1.0,
    }
