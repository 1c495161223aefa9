"""Metrics against values worked out by hand (no scipy / scikit-learn here to compare with)."""

import numpy as np
import pytest

from peft_search.train.metrics import (
    accuracy,
    compute_metrics,
    constant_prediction_metrics,
    f1,
    is_collapsed,
    matthews,
    pearson,
    rank,
    spearman,
)


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


def test_constant_prediction_baseline_of_a_classification():
    labels = np.array([1, 1, 1, 0, 0, 1, 1, 0])  # majority: class 1, 5 of 8
    baseline = constant_prediction_metrics(("accuracy", "f1", "matthews"), labels, num_classes=2)
    # F1 of the positive class when every example is predicted positive: tp 5, fp 3 -> 10 / 13
    assert baseline == {"accuracy": 5 / 8, "f1": pytest.approx(10 / 13), "matthews": 0.0}
    # the majority is the negative class: F1 of the positive class is 0; a tie goes to the smaller id
    assert constant_prediction_metrics(("accuracy", "f1"), np.array([0, 0, 0, 1]), 2) == {"accuracy": 0.75, "f1": 0.0}
    assert constant_prediction_metrics(("accuracy",), np.array([2, 2, 0, 0, 1]), 3) == {"accuracy": 0.4}


def test_constant_prediction_baseline_of_a_regression_is_zero_correlation():
    labels = np.array([0.5, 3.0, 4.2, 1.0])
    assert constant_prediction_metrics(("spearman", "pearson"), labels, num_classes=1) == {"spearman": 0.0, "pearson": 0.0}


def test_collapsed_means_one_class_or_the_baseline_score():
    labels = np.array([1, 1, 1, 0])
    baseline = constant_prediction_metrics(("accuracy",), labels, 2)["accuracy"]
    majority = np.array([1, 1, 1, 1])
    assert is_collapsed(accuracy(majority, labels), baseline, majority)
    minority = np.array([0, 0, 0, 0])  # one class, and below the baseline: learned nothing either
    assert is_collapsed(accuracy(minority, labels), baseline, minority)
    mixed_at_baseline = np.array([0, 1, 1, 0])  # 0.75 = the majority share, by luck
    assert is_collapsed(accuracy(mixed_at_baseline, labels), baseline, mixed_at_baseline)
    learned = np.array([1, 1, 1, 0])
    assert not is_collapsed(accuracy(learned, labels), baseline, learned)
    # a regression: a constant prediction, whatever its value
    assert is_collapsed(0.0, 0.0, np.array([2.5, 2.5, 2.5]))
    assert not is_collapsed(0.8, 0.0, np.array([0.1, 2.5, 4.0]))
