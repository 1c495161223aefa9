"""Scores: a trial's, and a design's (docs/design.md, "Scores and metrics").

- A trial's score is its task's main metric; a trial that failed or diverged (no score, or NaN) is
  excluded and counted.
- A design's score is the mean over the stage's tasks of each task's score, a task's score being the
  mean over the design's finished seeds. A design with some task left without any finished trial
  gets no score (averaging the remaining tasks would compare CoLA's Matthews correlation with SST-2's
  accuracy) and counts as a failed design.
- With paired sampling a design belongs to a block (`block`): the designs of one block share every
  draw but the component under study, so their scores are compared block by block. A block that
  repeats an earlier block's designs trains them with seeds of its own, so a design is scored per
  block.

Pure Python.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class TrialScore:
    """What decide needs of one finished or failed trial (a row of results.parquet)."""

    choice: str
    design_id: str
    task: str
    seed: int
    score: float | None  # the task's main metric; None when the trial failed
    block: int | None = None  # paired sampling: the block of the trial's design
    collapsed: bool = False  # the trial ended at its task's constant-prediction baseline

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
    block: int | None = None
    collapsed_trials: int = 0


def trial_scores(records: Iterable[dict]) -> list[TrialScore]:
    """What decide needs of each trial record (a finished trial's score; None for any other status)."""
    return [
        TrialScore(
            choice=r["choice"],
            design_id=r["design_id"],
            task=r["task"],
            seed=r["seed"],
            score=r["score"] if r["status"] == "finished" else None,
            block=r.get("block"),
            collapsed=bool(r.get("collapsed")),
        )
        for r in records
    ]


def design_scores(trials: Iterable[TrialScore], tasks: Sequence[str]) -> list[DesignScore]:
    """One score per (choice, design, block), in first-seen order (see the module docstring for the
    rule). A design that two blocks share (a block repeated with seeds of its own) is scored in each."""
    by_design: dict[tuple[str, str, int | None], list[TrialScore]] = defaultdict(list)
    for trial in trials:
        by_design[(trial.choice, trial.design_id, trial.block)].append(trial)
    results = []
    for (choice, design_id, block), design_trials in by_design.items():
        per_task = []
        for task in tasks:
            finished = [t.score for t in design_trials if t.task == task and t.finished]
            per_task.append(sum(finished) / len(finished) if finished else None)
        score = None if any(s is None for s in per_task) else sum(per_task) / len(per_task)
        failed = sum(1 for t in design_trials if not t.finished)
        collapsed = sum(1 for t in design_trials if t.collapsed)
        results.append(DesignScore(choice, design_id, score, len(design_trials), failed, block, collapsed))
    return results


__all__ = ["DesignScore", "TrialScore", "design_scores", "trial_scores"]
