"""How a stage decides, and how sure it is (DESIGN.md section 2, "Score" and "Decision").

- A trial's score is its task's main metric; a trial that failed or diverged (no score, or NaN) is
  excluded and counted.
- A design's score is the mean over the stage's tasks of each task's score, a task's score being the
  mean over the design's finished seeds. A design with some task left without any finished trial
  gets no score (averaging the remaining tasks would compare CoLA's Matthews correlation with SST-2's
  accuracy) and counts as a failed design.
- The decision is the choice with the best mean design score (the paper's rule); ties go to the
  choice listed first. A choice without any scored design cannot win.
- Evidence stored with it, per choice: mean, median, a percentile-bootstrap 95% interval of the
  mean, the empirical distribution (EDF) of its design scores, finished and failed counts; and the
  probability that the winner truly beats the runner-up: the fraction of paired bootstrap resamples
  in which the winner's resampled mean exceeds the runner-up's (ties count one half).

Resampling uses numpy's legacy `RandomState`, whose streams numpy keeps fixed across versions, seeded
per choice with SHA-256 of (decision seed, choice): the same scores give the same numbers anywhere.
Pure: imports numpy only, never ray or torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class TrialScore:
    """What decide needs of one finished or failed trial (a row of results.parquet)."""

    choice: str
    design_id: str
    task: str
    seed: int
    score: float | None  # the task's main metric; None when the trial failed

    @property
    def finished(self) -> bool:
        return self.score is not None and math.isfinite(self.score)


@dataclass(frozen=True)
class DesignScore:
    choice: str
    design_id: str
    score: float | None  # None: some task has no finished trial
    trials: int
    failed_trials: int


@dataclass(frozen=True)
class ChoiceStats:
    choice: str
    n_finished: int  # designs with a score
    n_failed: int  # designs without one
    n_failed_trials: int
    mean: float | None
    median: float | None
    ci_low: float | None  # bootstrap interval of the mean
    ci_high: float | None
    edf_scores: tuple[float, ...]  # the design scores, sorted: the EDF's x values
    edf_fractions: tuple[float, ...]  # fraction of designs scoring at most each x

    @property
    def scored(self) -> bool:
        return self.n_finished > 0


@dataclass(frozen=True)
class Decision:
    component: str
    winner: str | None  # None only when no choice has a scored design
    runner_up: str | None  # None when fewer than two choices have scored designs
    win_probability: float | None  # P(winner's true mean > runner-up's), by bootstrap
    choices: tuple[ChoiceStats, ...]  # in candidate order
    seed: int
    resamples: int
    confidence: float = CONFIDENCE

    def stats(self, choice: str) -> ChoiceStats:
        for stats in self.choices:
            if stats.choice == choice:
                return stats
        raise KeyError(choice)

    def to_dict(self) -> dict:
        data = asdict(self)
        for stats in data["choices"]:
            stats["edf_scores"] = list(stats["edf_scores"])
            stats["edf_fractions"] = list(stats["edf_fractions"])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Decision":
        choices = tuple(
            ChoiceStats(**{**c, "edf_scores": tuple(c["edf_scores"]), "edf_fractions": tuple(c["edf_fractions"])})
            for c in data["choices"]
        )
        return cls(**{**data, "choices": choices})


# ---- scores -----------------------------------------------------------------------------------------


def design_scores(trials: Iterable[TrialScore], tasks: Sequence[str]) -> list[DesignScore]:
    """One score per (choice, design), in first-seen order (see the module docstring for the rule)."""
    by_design: dict[tuple[str, str], list[TrialScore]] = defaultdict(list)
    for trial in trials:
        by_design[(trial.choice, trial.design_id)].append(trial)
    results = []
    for (choice, design_id), design_trials in by_design.items():
        per_task = []
        for task in tasks:
            finished = [t.score for t in design_trials if t.task == task and t.finished]
            per_task.append(sum(finished) / len(finished) if finished else None)
        score = None if any(s is None for s in per_task) else sum(per_task) / len(per_task)
        failed = sum(1 for t in design_trials if not t.finished)
        results.append(DesignScore(choice, design_id, score, len(design_trials), failed))
    return results


# ---- statistics -------------------------------------------------------------------------------------


def derive_seed(*parts) -> int:
    """A 32-bit seed from any JSON-able parts, stable across runs and Python versions."""
    return int.from_bytes(hashlib.sha256(json.dumps(list(parts)).encode()).digest()[:4], "big")


def bootstrap_means(scores: Sequence[float], seed: int, resamples: int = DEFAULT_RESAMPLES) -> np.ndarray:
    """Means of `resamples` resamples (with replacement) of `scores`."""
    values = np.asarray(scores, dtype=float)
    indices = np.random.RandomState(seed).randint(0, len(values), size=(resamples, len(values)))
    return values[indices].mean(axis=1)


def summarize_choice(
    choice: str,
    scores: Sequence[float | None],
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    failed_trials: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[ChoiceStats, np.ndarray | None]:
    """A choice's statistics over its design scores (None or NaN = a failed design), and its
    bootstrap means (None when nothing is scored)."""
    finished = sorted(float(s) for s in scores if s is not None and math.isfinite(s))
    n_failed = len(scores) - len(finished)
    if not finished:
        empty = ChoiceStats(choice, 0, n_failed, failed_trials, None, None, None, None, (), ())
        return empty, None
    means = bootstrap_means(finished, derive_seed(seed, choice), resamples)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    n = len(finished)
    stats = ChoiceStats(
        choice=choice,
        n_finished=n,
        n_failed=n_failed,
        n_failed_trials=failed_trials,
        mean=float(np.mean(finished)),
        median=float(np.median(finished)),
        ci_low=float(low),
        ci_high=float(high),
        edf_scores=tuple(finished),
        edf_fractions=tuple((i + 1) / n for i in range(n)),
    )
    return stats, means


def decide(
    component: str,
    scores_by_choice: Mapping[str, Sequence[float | None]],
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    failed_trials: Mapping[str, int] | None = None,
    confidence: float = CONFIDENCE,
) -> Decision:
    """Decide between choices given each choice's design scores (in candidate order)."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    failed_trials = failed_trials or {}
    all_stats, all_means = [], {}
    for choice, scores in scores_by_choice.items():
        stats, means = summarize_choice(choice, scores, seed, resamples, failed_trials.get(choice, 0), confidence)
        all_stats.append(stats)
        if means is not None:
            all_means[choice] = means
    order = {s.choice: i for i, s in enumerate(all_stats)}
    ranked = sorted((s for s in all_stats if s.scored), key=lambda s: (-s.mean, order[s.choice]))
    winner = ranked[0].choice if ranked else None
    runner_up = ranked[1].choice if len(ranked) > 1 else None
    probability = None
    if runner_up is not None:
        ahead, behind = all_means[winner], all_means[runner_up]
        probability = float(np.mean(ahead > behind) + 0.5 * np.mean(ahead == behind))
    return Decision(component, winner, runner_up, probability, tuple(all_stats), seed, resamples, confidence)


def decide_trials(
    component: str,
    choices: Sequence[str],
    trials: Iterable[TrialScore],
    tasks: Sequence[str],
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
) -> Decision:
    """Decide a stage from its trials: design scores per choice, then `decide`. Every choice in
    `choices` is reported, also one whose trials all failed or that has no trial."""
    trials = list(trials)
    unknown = sorted({t.choice for t in trials} - set(choices))
    if unknown:
        raise ValueError(f"trials of choices not in this stage: {', '.join(unknown)}")
    scores: dict[str, list[float | None]] = {choice: [] for choice in choices}
    failed: dict[str, int] = {choice: 0 for choice in choices}
    for design in design_scores(trials, tasks):
        scores[design.choice].append(design.score)
        failed[design.choice] += design.failed_trials
    return decide(component, scores, seed, resamples, failed)


__all__ = [
    "ChoiceStats",
    "Decision",
    "DesignScore",
    "TrialScore",
    "bootstrap_means",
    "decide",
    "decide_trials",
    "derive_seed",
    "design_scores",
    "summarize_choice",
]
