"""Evaluation metrics on numpy arrays: accuracy, F1, Matthews correlation, Pearson, Spearman; for
text answers, SQuAD's exact match and token F1, MultiRC's per-question exact match and ROUGE-L.

Written here (numpy only) so that the trial needs neither scipy nor scikit-learn. Degenerate inputs
(a constant prediction, a single class) give 0.0 for the correlations, as scikit-learn does for
Matthews, rather than NaN, so that a collapsed model scores low instead of poisoning a mean.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels)) if len(labels) else 0.0


def f1(predictions: np.ndarray, labels: np.ndarray, num_classes: int = 2) -> float:
    """Binary: F1 of the positive class 1 (GLUE's F1 for MRPC and QQP). More classes: macro F1."""
    classes = [1] if num_classes <= 2 else range(num_classes)
    scores = []
    for c in classes:
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def matthews(predictions: np.ndarray, labels: np.ndarray, num_classes: int = 2) -> float:
    """Matthews correlation coefficient, multi-class form (Gorodkin 2004); equals the binary MCC."""
    k = max(num_classes, int(max(predictions.max(initial=0), labels.max(initial=0))) + 1)
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    n = confusion.sum()
    correct = np.trace(confusion)
    true_counts = confusion.sum(axis=1)
    predicted_counts = confusion.sum(axis=0)
    numerator = correct * n - true_counts @ predicted_counts
    denominator = np.sqrt((n * n - predicted_counts @ predicted_counts) * (n * n - true_counts @ true_counts))
    return float(numerator / denominator) if denominator > 0 else 0.0


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    x = np.asarray(predictions, dtype=np.float64) - np.mean(predictions)
    y = np.asarray(labels, dtype=np.float64) - np.mean(labels)
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator) if denominator > 0 else 0.0


def rank(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as scipy.stats.rankdata's default)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the average rank of the run.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    return pearson(rank(predictions), rank(labels))


def compute_metrics(names, predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """The named metrics. Classification: `predictions` are class ids; regression: real values."""
    table = {
        "accuracy": lambda: accuracy(predictions, labels),
        "f1": lambda: f1(predictions, labels, num_classes),
        "matthews": lambda: matthews(predictions, labels, num_classes),
        "pearson": lambda: pearson(predictions, labels),
        "spearman": lambda: spearman(predictions, labels),
    }
    return {name: table[name]() for name in names}


# ---- text answers (the text-to-text objective) ----------------------------------------------------------


def normalise_answer(text: str) -> str:
    """SQuAD's (and ReCoRD's official script's) normalisation: lower case, no punctuation, no articles
    (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised answers' tokens (SQuAD's and ReCoRD's)."""
    predicted, expected = normalise_answer(prediction).split(), normalise_answer(gold).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_token_f1(prediction: str, golds: list[str]) -> float:
    """The best token F1 over the gold answers (ReCoRD scores against each and keeps the best)."""
    return max((token_f1(prediction, gold) for gold in golds), default=0.0)


def best_exact_match(prediction: str, golds: list[str]) -> float:
    return float(any(normalise_answer(prediction) == normalise_answer(gold) for gold in golds))


def group_exact_match(predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """The share of groups whose every prediction is right (MultiRC's exact match: a question is right
    when all its answer options are)."""
    right = predictions == labels
    unique = np.unique(groups)
    return float(np.mean([right[groups == g].all() for g in unique])) if len(unique) else 0.0


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (Google's rouge-score, the reference implementation; stemmed, as the T5
    and HF evaluate defaults)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(reference, prediction)["rougeL"].fmeasure for prediction, reference in zip(predictions, references)]
    return float(np.mean(scores)) if scores else 0.0


# ---- the constant-prediction baseline and collapsed trials -------------------------------------------

COLLAPSE_TOLERANCE = 1e-9


def constant_prediction(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """What a model that learned nothing predicts for every example: the majority class of `labels`
    (ties: the smallest class id), or for a regression (num_classes == 1) their mean."""
    labels = np.asarray(labels)
    if num_classes == 1:
        return np.full(len(labels), float(np.mean(labels)) if len(labels) else 0.0)
    return np.full(len(labels), np.bincount(labels.astype(np.int64), minlength=num_classes).argmax())


def constant_prediction_metrics(names, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """The named metrics of `constant_prediction` on `labels`: for classification accuracy is the
    majority's share, Matthews 0, F1 of the positive class 2p/(1+p) if it is the majority (else 0);
    for a regression Pearson and Spearman of a constant are undefined and, as everywhere here, 0.0."""
    labels = np.asarray(labels)
    return compute_metrics(names, constant_prediction(labels, num_classes), labels, num_classes)


def is_collapsed(score: float, baseline_score: float, predictions: np.ndarray) -> bool:
    """Whether an evaluation learned nothing: it predicts one value for every example (one class,
    whichever: a model stuck on a minority class scores below the baseline but is as collapsed), or
    its main metric equals the constant prediction's within COLLAPSE_TOLERANCE (docs/design.md,
    "Collapsed trials"; it also catches e.g. Matthews 0 from predictions unrelated to the labels)."""
    predictions = np.asarray(predictions)
    one_value = len(predictions) == 0 or bool(np.all(predictions == predictions.flat[0]))
    return one_value or abs(score - baseline_score) <= COLLAPSE_TOLERANCE
