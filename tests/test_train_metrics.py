"""Metrics against values worked out by hand (no scipy / scikit-learn here to compare with)."""

import numpy as np
import pytest

from peft_search.train.metrics import accuracy, compute_metrics, f1, matthews, pearson, rank, spearman


def test_accuracy_and_binary_f1():
    predictions = np.array([1, 1, 0, 0, 1, 0])
    labels = np.array([1, 0, 0, 1, 1, 0])
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    # positive class 1: tp 2, fp 1, fn 1 -> 2*2 / (4 + 1 + 1)
    assert f1(predictions, labels) == pytest.approx(4 / 6)


def test_macro_f1_for_three_classes():
    predictions = np.array([0, 1, 2, 2])
    labels = np.array([0, 1, 1, 2])
    # class 0: 1.0; class 1: tp 1, fn 1 -> 2/3; class 2: tp 1, fp 1 -> 2/3
    assert f1(predictions, labels, num_classes=3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_matthews_binary_matches_the_textbook_formula():
    predictions = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    labels = np.array([1, 1, 0, 0, 0, 1, 1, 0])
    tp, tn, fp, fn = 3, 3, 1, 1
    expected = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews(predictions, labels) == pytest.approx(expected)
    assert matthews(labels, labels) == pytest.approx(1.0)
    assert matthews(1 - labels, labels) == pytest.approx(-1.0)


def test_degenerate_predictions_score_zero_not_nan():
    labels = np.array([0, 1, 0, 1])
    constant = np.zeros(4, dtype=int)
    assert matthews(constant, labels) == 0.0
    assert pearson(np.ones(4), np.array([1.0, 2.0, 3.0, 4.0])) == 0.0


def test_ranks_average_ties():
    assert rank(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_pearson_and_spearman():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    # monotone but not linear: Spearman 1, Pearson below 1
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert pearson(x, x**3) < 0.99
    # with ties: Pearson of the average ranks [1, 2.5, 2.5, 4] and [1, 2, 3, 4]
    a, b = np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    expected = np.corrcoef(ra, rb)[0, 1]
    assert spearman(a, b) == pytest.approx(expected)


def test_compute_metrics_returns_exactly_the_named_metrics():
    out = compute_metrics(("spearman", "pearson"), np.array([0.1, 0.5, 0.9]), np.array([1.0, 2.0, 3.0]), 1)
    assert set(out) == {"spearman", "pearson"}
    assert out["spearman"] == pytest.approx(1.0)
