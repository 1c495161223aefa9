"""What the report shows, as plain data: a run's stages with their decisions, the path S0 -> S_final,
the trials grouped by stage and choice, compute per stage, and the final comparison.

Read-only over a run directory (`peft_search.search.storage.run_dir` documents the layout): the decisions are
the ones the controller stored in `state.json`; the trials come from the per-trial records (the
source of truth, so a running stage's finished trials show too); the final comparison from the final
evaluation's records likewise (final.parquet's rows when they are gone). Imports pyarrow and read-only helpers of `peft_search.search`; never ray or torch.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from peft_search.errors import InputError
from peft_search.search.stage.confidence import CONFIDENCE_LEVEL, t_quantile
from peft_search.search.stage.decide import Decision, stage_outcome
from peft_search.search.storage.records import final_done, final_rows, read_records
from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.run_dir import STATE_FILE, require_run
from peft_search.search.final.evaluate import evaluated_final
from peft_search.search.spec import FinalSpec, SearchSpec, load_run_spec
from peft_search.space import Design, DesignSpace

@dataclass(frozen=True)
class StageView:
    stage: int
    component: str
    choices: tuple[str, ...]
    status: str  # pending | running | interrupted | failed | skipped, or decided: selected | tie | undecided
    decision: Decision | None
    space_before: dict | None  # DesignSpace.to_dict() the stage started from
    records: tuple[dict, ...]  # its trial records, grouped by choice (candidate order), then sample
    planned: int | None
    wall_time_s: float | None
    skipped: str | None
    redraws: dict = field(default_factory=dict)
    duplicates: dict = field(default_factory=dict)
    reseeded_blocks: int = 0
    infeasible: dict = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return sum(1 for r in self.records if r["status"] == "finished")

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if r["status"] != "finished")

    @property
    def trial_hours(self) -> float:
        return sum(r.get("wall_time_s") or 0.0 for r in self.records) / 3600


@dataclass(frozen=True)
class RunView:
    run_dir: StoragePath
    spec: SearchSpec
    state: dict
    stages: tuple[StageView, ...]
    final_rows: tuple[dict, ...]  # the final evaluation's rows (runs recorded so far); empty before it starts
    final: FinalSpec | None = None  # the final section evaluated (or to evaluate): final/final.json, else the spec's

    @property
    def name(self) -> str:
        return self.spec.name or self.run_dir.name

    @property
    def final_done(self) -> bool:
        """Whether the final evaluation ran to its end (final/done.json)."""
        return final_done(self.run_dir)


def load_run(path: str | Path) -> RunView:
    """Everything the report needs; InputError (exit status 2) for a directory that is not a run or a
    run without any finished trial."""
    run_dir = require_run(path)
    spec = load_run_spec(run_dir / "spec.yaml")
    state = json.loads((run_dir / STATE_FILE).read_text())
    records = read_records(run_dir)
    if not any(r["status"] == "finished" for r in records):
        raise InputError(
            "RUN",
            f"{run_dir} has no finished trial yet ({len(records)} trials recorded, all failed or none); "
            "there is nothing to report (see peft-search status)",
        )
    stages = []
    for stage in state["stages"]:
        index = stage["stage"]
        order = {c: i for i, c in enumerate(stage["choices"])}
        mine = sorted(
            (r for r in records if r["stage"] == index),
            key=lambda r: (order.get(r["choice"], len(order)), r["sample"], r["task"], r["seed"]),
        )
        stages.append(
            StageView(
                stage=index,
                component=stage["component"],
                choices=tuple(stage["choices"]),
                status=stage_outcome(stage),
                decision=Decision.from_dict(stage["decision"]) if stage.get("decision") else None,
                space_before=stage.get("space"),
                records=tuple(mine),
                planned=stage.get("trials"),
                wall_time_s=stage.get("wall_time_s"),
                skipped=stage.get("skipped"),
                redraws=stage.get("redraws") or {},
                duplicates=stage.get("duplicates") or {},
                reseeded_blocks=stage.get("reseeded_blocks") or 0,
                infeasible=stage.get("infeasible") or {},
            )
        )
    return RunView(run_dir, spec, state, tuple(stages), tuple(final_rows(run_dir)), evaluated_final(run_dir, spec))


# ---- the path S0 -> S_final -------------------------------------------------------------------------


def space_path(run: RunView) -> list[dict]:
    """One row per stage: the component, what it was fixed to, and the space after it (text form)."""
    rows = []
    space = run.spec.initial_space()
    rows.append({"step": "S0", "component": "", "fixed": "", "space": space_summary(space)})
    for view in run.stages:
        if view.status == "skipped":
            rows.append({"step": f"stage {view.stage + 1}", "component": view.component, "fixed": f"skipped: {view.skipped}",
                         "space": space_summary(space)})
            continue
        if view.decision is None or view.decision.winner is None:
            rows.append({"step": f"stage {view.stage + 1}", "component": view.component, "fixed": f"({view.status})", "space": ""})
            continue
        if view.decision.method == "joint":  # every component at once: the path ends at the best design
            best = run.state.get("discovered") or {}
            rows.append({"step": "design", "component": view.component, "fixed": f"best design {best.get('design_id', '?')}",
                         "space": Design.from_dict(best["design"]).summary() if best.get("design") else ""})
            continue
        space = space.clamp(view.component, space.parse_choice(view.component, view.decision.winner))
        rows.append({"step": f"S{view.stage + 1}", "component": view.component, "fixed": view.decision.winner,
                     "space": space_summary(space)})
    return rows


def space_summary(space: DesignSpace) -> str:
    """`grouping=spindle, strategy.G1=adapter+lora; free: allocation, ...`."""
    fixed = [f"{c}={space.format_choice(c, space.choice(c))}" for c in space.fixed_components()]
    free = space.free_components()
    text = ", ".join(fixed) if fixed else "nothing fixed"
    return text + (f"; free: {', '.join(free)}" if free else "") + f" ({space.size():,} designs)"


# ---- compute ----------------------------------------------------------------------------------------


def compute_rows(run: RunView) -> list[dict]:
    rows = []
    for view in run.stages:
        rows.append({
            "stage": str(view.stage),
            "component": view.component,
            "status": view.status,
            "trials": f"{len(view.records)}/{view.planned if view.planned is not None else '-'}",
            "failed": str(view.failed),
            "trial_hours": f"{view.trial_hours:.3f}",
            "wall_time": "-" if view.wall_time_s is None else f"{view.wall_time_s / 60:.1f} min",
        })
    if run.final_rows:
        walls = [r["wall_time_s"] or 0.0 for r in run.final_rows]
        rows.append({
            "stage": "final",
            "component": "evaluation",
            "status": "done" if run.final_done else "partial",
            "trials": str(len(run.final_rows)),
            "failed": str(sum(1 for r in run.final_rows if r["status"] != "finished")),
            "trial_hours": f"{sum(walls) / 3600:.3f}",
            "wall_time": "-",
        })
    return rows


# ---- the final comparison ---------------------------------------------------------------------------


def comparison(final_rows: list[dict] | tuple[dict, ...], tasks: list[str]) -> list[dict]:
    """Per contender: per task mean and std of the dev score over seeds, the tuned learning rate, the
    realised parameters; and the average over tasks of the per-task means (None where a task has no
    finished run). Only rows of phase `final` (dev scores) count; tuning rows are the evidence for the
    learning rate."""
    finals = [r for r in final_rows if r["phase"] == "final"]
    contenders = list(dict.fromkeys(r["contender"] for r in finals))
    table = []
    for contender in contenders:
        mine = [r for r in finals if r["contender"] == contender]
        per_task = {}
        for task in tasks:
            runs = [r for r in mine if r["task"] == task]
            scores = [r["score"] for r in runs if r["status"] == "finished" and r["score"] is not None and math.isfinite(r["score"])]
            per_task[task] = {
                "mean": statistics.fmean(scores) if scores else None,
                "std": statistics.stdev(scores) if len(scores) > 1 else (0.0 if scores else None),
                "seeds": len(scores),
                "failed": len(runs) - len(scores),
                # Finished runs that predict one class for every dev example: their score is the
                # majority-class score, so the mean says nothing about what the contender learned.
                "collapsed": sum(1 for r in runs if r["status"] == "finished" and r.get("collapsed")),
                "learning_rate": runs[0]["learning_rate"] if runs else None,
                "realised_params": next((r["realised_params"] for r in runs if r["realised_params"] is not None), None),
            }
        means = [v["mean"] for v in per_task.values()]
        average = statistics.fmean(means) if means and all(m is not None for m in means) else None
        table.append({"contender": contender, "tasks": per_task, "average": average,
                      "design_id": mine[0]["design_id"] if mine else None})
    return table


def _final_scores(final_rows, contender: str, task: str) -> dict[int, float]:
    """Seed -> dev score of one contender's finished final runs on one task."""
    return {r["seed"]: float(r["score"]) for r in final_rows
            if r["phase"] == "final" and r["contender"] == contender and r["task"] == task
            and r["status"] == "finished" and r["score"] is not None and math.isfinite(r["score"])}


def paired_interval(differences: list[float], level: float = CONFIDENCE_LEVEL) -> dict:
    """Mean of paired differences with its Student-t interval (df = pairs - 1); low and high are None
    with fewer than 2 pairs, mean is None with none."""
    n = len(differences)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "pairs": 0}
    mean = statistics.fmean(differences)
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "pairs": 1}
    half = t_quantile(0.5 + level / 2.0, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "pairs": n}


def paired_differences(final_rows: list[dict] | tuple[dict, ...], tasks: list[str], reference: str = "discovered",
                       level: float = CONFIDENCE_LEVEL) -> list[dict]:
    """The reference contender's dev score minus each other contender's, paired by seed (both trained
    with the same seed: the same head initialisation and data order), as a mean with a Student-t
    interval at `level` per task; and for the average over tasks, the per-seed difference of the two
    contenders' means over the tasks (seeds finished on every task by both). Positive: the reference
    is better. The standard paired t interval: with 3 seeds it has 2 degrees of freedom, so it is wide,
    and honestly so."""
    contenders = [c for c in dict.fromkeys(r["contender"] for r in final_rows if r["phase"] == "final") if c != reference]
    mine = {task: _final_scores(final_rows, reference, task) for task in tasks}
    table = []
    for contender in contenders:
        theirs = {task: _final_scores(final_rows, contender, task) for task in tasks}
        per_task = {}
        for task in tasks:
            seeds = sorted(set(mine[task]) & set(theirs[task]))
            per_task[task] = paired_interval([mine[task][s] - theirs[task][s] for s in seeds], level)
        seeds = sorted(set.intersection(*(set(mine[t]) & set(theirs[t]) for t in tasks))) if tasks else []
        average = paired_interval(
            [statistics.fmean(mine[t][s] - theirs[t][s] for t in tasks) for s in seeds], level)
        table.append({"contender": contender, "tasks": per_task, "average": average})
    return table


def format_interval(cell: dict) -> str:
    if cell["mean"] is None:
        return "-"
    if cell["low"] is None:
        return f"{cell['mean']:+.4f} (1 seed)"
    return f"{cell['mean']:+.4f} [{cell['low']:+.4f}, {cell['high']:+.4f}]"


def format_mean_std(cell: dict) -> str:
    if cell["mean"] is None:
        return "failed" if cell["failed"] else "-"
    return f"{cell['mean']:.4f} ± {cell['std']:.4f}" + collapsed_note(cell)


def collapsed_note(cell: dict) -> str:
    """' (2 of 3 collapsed)' when some of the cell's finished runs collapsed to one class, else ''."""
    return f" ({cell['collapsed']} of {cell['seeds']} collapsed)" if cell.get("collapsed") else ""
