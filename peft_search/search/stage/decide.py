"""How a stage decides, and how sure it is (docs/design.md, "Decisions: paired designs, racing, a selection procedure").

- Design scores come from `scores.py` (mean over tasks of each task's mean over finished seeds).
- The decision is the choice with the best mean design score (the paper's rule) among the choices
  that can still win: those with a scored design and, in a raced stage, not dropped by the race.
  Ties go to the choice listed first.
- How sure: each choice's posterior probability of being the best, P(best), from `confidence.py`:
  the blocked (randomized complete block) analysis of paired designs, or the Behrens-Fisher
  analysis of independent ones; both say nothing (None) rather than claim certainty from one
  block or one design. The decision's `win_probability` is the winner's P(best); in a raced stage,
  among the choices of the race's last round (a choice it dropped then still counts).
- Evidence stored with it, per choice: mean, median, a Student-t 95% interval of the mean, the
  empirical distribution (EDF) of its design scores, finished / failed / collapsed counts, blocks
  run, the round the race dropped it in, its P(best) and a t interval of its paired difference to
  the best; per decision every design's score, the blocks behind P(best), the race's rounds and why
  it stopped, and trials run versus planned (what racing saved over fixed N).

Monte Carlo draws use numpy's legacy `RandomState` seeded with SHA-256 of the search seed and the
stage (`search.seeds.derive_seed`): the same scores give the same numbers anywhere. Pure: numpy only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from peft_search.search.stage.confidence import DRAWS, Comparison, compare_blocks, compare_independent, t_quantile
from peft_search.search.stage.selection import SELECTED, TIE, UNDECIDED
from peft_search.search.stage.scores import DesignScore, TrialScore, design_scores, trial_scores

CONFIDENCE = 0.95


@dataclass(frozen=True)
class ChoiceStats:
    choice: str
    n_finished: int  # designs with a score
    n_failed: int  # designs without one
    n_failed_trials: int
    mean: float | None
    median: float | None
    ci_low: float | None  # Student-t interval of the mean (None with fewer than 2 designs)
    ci_high: float | None
    edf_scores: tuple[float, ...]  # the design scores, sorted: the EDF's x values
    edf_fractions: tuple[float, ...]  # fraction of designs scoring at most each x
    p_best: float | None = None  # posterior probability of being the best; None: no information
    diff_mean: float | None = None  # mean (paired, in blocks) difference to the best choice
    diff_low: float | None = None  # its t interval; None with fewer than 2 pairs
    diff_high: float | None = None
    blocks: int = 0  # paired: blocks with a design of this choice
    eliminated_round: int | None = None  # racing: the round after which it was dropped (0-based)
    n_collapsed_trials: int = 0  # trials that ended at their task's constant-prediction baseline

    @property
    def scored(self) -> bool:
        return self.n_finished > 0


@dataclass(frozen=True)
class Decision:
    component: str
    winner: str | None  # None only when no choice has a scored design
    runner_up: str | None  # None when fewer than two choices can win
    win_probability: float | None  # the winner's P(best); None when the data cannot say
    choices: tuple[ChoiceStats, ...]  # in candidate order
    seed: int
    resamples: int  # Monte Carlo draws behind P(best)
    confidence: float = CONFIDENCE
    designs: tuple[DesignScore, ...] = ()  # every design's score, in first-seen order
    method: str = "bootstrap"  # blocked | independent (bootstrap: decided before 0.2)
    blocks: int = 0  # complete blocks behind P(best) (blocked)
    rounds: int | None = None  # racing: rounds run
    race_reason: str | None = None  # racing: why the race stopped
    trials_run: int = 0
    trials_planned: int = 0  # with racing, what fixed N would have trained
    collapsed_trials: int = 0
    # The selection procedure's verdict in a raced stage (selection.py): selected | tie | undecided;
    # None for stages decided before it (their P(best) is the claim) and unraced ones.
    outcome: str | None = None
    tied: tuple[str, ...] = ()
    delta: float | None = None  # racing.delta
    selection_confidence: float | None = None  # racing.confidence
    procedure: str | None = None  # racing.procedure: kn | kn++ (None: decided before KN++ existed, under KN)

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
        designs = tuple(DesignScore(**d) for d in data.get("designs", ()))  # absent in state files before 0.2
        return cls(**{**data, "choices": choices, "designs": designs, "tied": tuple(data.get("tied", ()))})

    def best_design(self, choice: str) -> DesignScore | None:
        """The best-scoring design of `choice` (ties: the smaller design id)."""
        scored = [d for d in self.designs if d.choice == choice and d.score is not None]
        return max(scored, key=lambda d: (d.score, d.design_id)) if scored else None


# A stage's status is what happened to it (docs/design.md, "Outcomes"): before and while it runs,
# pending | running | interrupted | failed | skipped; once decided, its outcome.
SKIPPED = "skipped"
OUTCOMES = (SELECTED, TIE, UNDECIDED)
DECIDED_BEFORE_OUTCOMES = "decided"  # the status of every decided stage in a state.json written before 0.4


def decision_outcome(decision: Decision) -> str:
    """selected | tie | undecided. A raced stage's is its selection procedure's verdict. A stage decided
    without one (racing off, the joint search, a run before racing) kept the best mean by the paper's
    rule with no guarantee, so it is `undecided` (its P(best) says how sure, where it has one)."""
    return decision.outcome or UNDECIDED


# The choice a decided stage kept, named by what the stage claimed: every surface (the run's lines,
# `status`, the report's tables and plots, the trackers, the API) says it with these words.
KEPT_AS = {SELECTED: "selected", TIE: "tie (kept)", UNDECIDED: "kept: best mean, no claim"}


def kept_as(decision: Decision) -> str:
    """How the kept choice is named: "selected", "tie (kept)" or "kept: best mean, no claim"."""
    return KEPT_AS[decision_outcome(decision)]


def outcome_counts(statuses: Sequence[str]) -> str:
    """Stages counted by status: "2 stages: 0 selected, 0 ties, 2 undecided" (", 1 skipped, 1 running"
    after it for any other status), the header of the report and of `status`."""
    counts = {status: sum(1 for s in statuses if s == status) for status in dict.fromkeys(statuses)}
    parts = [f"{counts.get(SELECTED, 0)} selected", f"{counts.get(TIE, 0)} tie{'s' if counts.get(TIE, 0) != 1 else ''}",
             f"{counts.get(UNDECIDED, 0)} undecided"]
    parts += [f"{n} {status}" for status, n in counts.items() if status not in OUTCOMES]
    return f"{len(statuses)} stage{'s' if len(statuses) != 1 else ''}: " + ", ".join(parts)


def stage_outcome(stage: Mapping) -> str:
    """A stage's status from its `state.json` entry, as everything shows it: a state written before
    outcomes says `decided`, read as its decision's outcome."""
    if stage["status"] == DECIDED_BEFORE_OUTCOMES:
        return decision_outcome(Decision.from_dict(stage["decision"])) if stage.get("decision") else UNDECIDED
    return stage["status"]


def is_done(stage: Mapping) -> bool:
    """Decided or skipped: nothing of the stage is left to run."""
    return stage_outcome(stage) in (*OUTCOMES, SKIPPED)


def summarize_choice(choice: str, scores: Sequence[float | None], failed_trials: int = 0,
                     confidence: float = CONFIDENCE, collapsed_trials: int = 0) -> ChoiceStats:
    """A choice's statistics over its design scores (None or NaN = a failed design)."""
    finished = sorted(float(s) for s in scores if s is not None and math.isfinite(s))
    n_failed = len(scores) - len(finished)
    if not finished:
        return ChoiceStats(choice, 0, n_failed, failed_trials, None, None, None, None, (), (),
                           n_collapsed_trials=collapsed_trials)
    n = len(finished)
    mean = float(np.mean(finished))
    low = high = None
    if n >= 2:
        half = t_quantile(0.5 + confidence / 2, n - 1) * float(np.std(finished, ddof=1)) / math.sqrt(n)
        low, high = mean - half, mean + half
    return ChoiceStats(
        choice=choice,
        n_finished=n,
        n_failed=n_failed,
        n_failed_trials=failed_trials,
        mean=mean,
        median=float(np.median(finished)),
        ci_low=low,
        ci_high=high,
        edf_scores=tuple(finished),
        edf_fractions=tuple((i + 1) / n for i in range(n)),
        n_collapsed_trials=collapsed_trials,
    )


def decide(
    component: str,
    scores_by_choice: Mapping[str, Sequence[float | None]],
    seed: int = 0,
    draws: int = DRAWS,
    failed_trials: Mapping[str, int] | None = None,
    confidence: float = CONFIDENCE,
) -> Decision:
    """Decide between choices given each choice's independent design scores (in candidate order)."""
    designs = [DesignScore(choice, f"{choice}-{i}", s, 1, 0 if s is not None else 1)
               for choice, scores in scores_by_choice.items() for i, s in enumerate(scores)]
    stats = [summarize_choice(c, s, (failed_trials or {}).get(c, 0), confidence) for c, s in scores_by_choice.items()]
    return _decision(component, stats, designs, None, seed, draws, confidence)


def decide_stage(
    component: str,
    choices: Sequence[str],
    trials: Iterable[TrialScore],
    tasks: Sequence[str],
    seed: int = 0,
    race=None,
    draws: int = DRAWS,
    trials_planned: int | None = None,
    racing=None,
) -> Decision:
    """Decide a stage from its trials (every choice in `choices` is reported, also one without a
    scored design). Paired designs (trials with a block) are compared block by block, others
    independently; `race` (a `racing.RaceState`) limits who can win to the race's survivors, and a
    finished race's verdict (with `racing`, the spec's settings) makes the decision."""
    trials = list(trials)
    unknown = sorted({t.choice for t in trials} - set(choices))
    if unknown:
        raise ValueError(f"trials of choices not in this stage: {', '.join(unknown)}")
    designs = design_scores(trials, tasks)
    by_choice: dict[str, list[DesignScore]] = {choice: [] for choice in choices}
    for design in designs:
        by_choice[design.choice].append(design)
    stats = []
    for choice, mine in by_choice.items():
        summary = summarize_choice(choice, [d.score for d in mine], sum(d.failed_trials for d in mine),
                                   collapsed_trials=sum(d.collapsed_trials for d in mine))
        eliminated = race.eliminated.get(choice) if race is not None else None
        summary = _replace(summary, blocks=len({d.block for d in mine if d.block is not None}),
                           eliminated_round=eliminated.round if eliminated is not None else None)
        stats.append(summary)
    decision = _decision(component, stats, designs, race, seed, draws, CONFIDENCE)
    if race is not None and _raced(designs) and race.done and race.outcome != "running":
        decision = _procedure_verdict(decision, race, racing)
    return _replace(decision, trials_run=len(trials), trials_planned=trials_planned or len(trials),
                    collapsed_trials=sum(1 for t in trials if t.collapsed))


def decide_plan(plan, records: Sequence[dict], racing, tasks: Sequence[str], seed: int = 0) -> Decision:
    """A planned stage's decision from its trial records, as the controller makes it: the race's
    verdict over the records it judged (rows trained ahead of the decision are spent, not evidence:
    stage/dispatch.py), or without racing the best mean over every planned design. `trials_run`
    counts every trial the stage trained, those ahead of the decision included."""
    from peft_search.search.stage.racing import judged_records, race_state

    race = race_state(plan, records, racing, tasks, seed) if racing is not None else None
    judged = judged_records(plan, race, records) if race is not None else records
    decision = decide_stage(plan.component, list(plan.choices), trial_scores(judged), tasks, seed=seed, race=race,
                            trials_planned=plan.num_trials, racing=racing)
    return _replace(decision, trials_run=len(records))  # what the stage cost: every trial it trained


def _procedure_verdict(decision: Decision, race, racing) -> Decision:
    """A raced stage's decision as its selection procedure made it: the choice it kept (the selected
    one, a tie's by `on_tie`; undecided: the best mean), and no P(best): the blocked posterior
    overstates its certainty at a few heavy-tailed blocks, and the procedure's guarantee replaces it."""
    winner = race.kept or decision.winner
    others = sorted((s for s in decision.choices if s.scored and s.choice != winner and s.choice in race.survivors),
                    key=lambda s: -s.mean)
    return _replace(decision, winner=winner, runner_up=others[0].choice if others else None, win_probability=None,
                    choices=tuple(_replace(s, p_best=None) for s in decision.choices), outcome=race.outcome,
                    tied=tuple(race.tied), delta=getattr(racing, "delta", None),
                    selection_confidence=getattr(racing, "confidence", None), procedure=getattr(racing, "procedure", None))


def decide_trials(component: str, choices: Sequence[str], trials: Iterable[TrialScore], tasks: Sequence[str],
                  seed: int = 0, draws: int = DRAWS) -> Decision:
    """`decide_stage` without a race."""
    return decide_stage(component, choices, trials, tasks, seed, None, draws)


def _decision(component, stats: list[ChoiceStats], designs: Sequence[DesignScore], race, seed: int, draws: int,
              confidence: float) -> Decision:
    order = {s.choice: i for i, s in enumerate(stats)}
    survivors = set(race.survivors) if race is not None else set(order)
    # P(best) is computed among the choices of the race's last round, those it dropped included: the
    # survivors alone would make a sole survivor "certain" (P(best) = 1) however close the last
    # round was. Only survivors can win.
    last_round = {c for c, out in race.eliminated.items() if out.round == race.round} if race is not None else set()
    contenders = [s.choice for s in stats if s.scored and (s.choice in survivors or s.choice in last_round)]
    comparison = _compare(designs, [s.choice for s in stats], contenders, seed, draws)
    ranked = sorted((s for s in stats if s.scored and s.choice in survivors), key=lambda s: (-s.mean, order[s.choice]))
    winner = ranked[0].choice if ranked else None
    runner_up = ranked[1].choice if len(ranked) > 1 else None
    if comparison is not None:
        stats = [
            _replace(s, p_best=comparison.p_best.get(s.choice), diff_mean=comparison.diff_to_best[s.choice].mean,
                     diff_low=comparison.diff_to_best[s.choice].low, diff_high=comparison.diff_to_best[s.choice].high)
            for s in stats
        ]
    return Decision(
        component=component,
        winner=winner,
        runner_up=runner_up,
        win_probability=comparison.p_best.get(winner) if (comparison is not None and winner is not None) else None,
        choices=tuple(stats),
        seed=seed,
        resamples=draws,
        confidence=confidence,
        designs=tuple(designs),
        method=comparison.method if comparison is not None else "independent",
        blocks=comparison.blocks if comparison is not None else 0,
        rounds=(race.round + 1) if race is not None and race.eliminated is not None and _raced(designs) else None,
        race_reason=race.reason if race is not None and _raced(designs) else None,
    )


def _raced(designs: Sequence[DesignScore]) -> bool:
    return any(d.block is not None for d in designs)


def _compare(designs: Sequence[DesignScore], choices: list[str], contenders: list[str], seed: int, draws: int) -> Comparison | None:
    if not contenders:
        return None
    if _raced(designs):
        table: dict[str, dict[int, float | None]] = {choice: {} for choice in choices}
        for design in designs:
            table[design.choice][design.block] = design.score
        return compare_blocks(table, seed=seed, draws=draws, contenders=contenders)
    lists: dict[str, list[float | None]] = defaultdict(list)
    for choice in choices:
        lists[choice] = []
    for design in designs:
        lists[design.choice].append(design.score)
    return compare_independent(dict(lists), seed=seed, draws=draws, contenders=contenders)


def _replace(obj, **changes):
    from dataclasses import replace

    return replace(obj, **changes)


__all__ = [
    "ChoiceStats",
    "Decision",
    "DesignScore",
    "TrialScore",
    "decide_plan",
    "decide",
    "decide_stage",
    "decide_trials",
    "design_scores",
    "summarize_choice",
    "trial_scores",
]
