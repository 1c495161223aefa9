"""Deterministic planning of one refinement stage, the plan's Parquet file, and compute estimates.

A stage's plan is a pure function of (spec, stage index, the space the stage starts from, the
backbone's profile): for each candidate choice of the stage's component, `designs_per_choice`
designs are sampled from the space with that component clamped, each feasible under the budget
(infeasible draws are redrawn and counted), and every design is planned once per task and training
seed. The sampling seed of a choice is derived with SHA-256 from (search seed, stage index,
component, choice text), so it is the same on every run, machine and Python version, and a choice
gets the same designs whatever other candidates the stage lists.

Identical designs drawn twice for one choice (a space with few designs left, e.g. the last strategy
stage once everything else is fixed) are planned once and counted as duplicates: a trial is a pure
function of its row, so a repeat would cost compute and add no information.

Stages are numbered from 0, as in the spec (`stages[0]`), and the plan of stage i lives at
`stages/<i>/plan.parquet` in the run directory. Imports space and pyarrow; the budget planner
(torch) only inside `plan_stage`; never ray.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from peft_search.atomic import atomic_output
from peft_search.errors import InputError
from peft_search.search.spec import Fidelity, SearchSpec
from peft_search.space import Design, DesignSpace
from peft_search.space.components import TUNABLE_GROUPS, strategy_group

PLAN_FORMAT = 1
PLAN_METADATA_KEY = b"peft_search.plan"
TRIAL_ID_LENGTH = 16


@dataclass(frozen=True)
class PlanRow:
    """One planned trial: a design trained on one task with one seed."""

    trial_id: str  # hash of everything else in the row
    stage: int
    component: str
    choice: str  # text form: spindle, G1+G2, adapter+lora
    choice_index: int  # position of the choice in the stage's candidate list
    sample: int  # index of the design among the choice's distinct designs
    design_id: str
    design_json: str  # Design.to_json()
    task: str
    seed: int
    planned_params: int  # trainable parameters the budget planner assigns (the trial counts the real ones)
    config: dict  # the trial layer's TrialConfig fields (TrialConfig.from_dict(row.config))

    @property
    def design(self) -> Design:
        return Design.from_json(self.design_json)


@dataclass(frozen=True)
class StagePlan:
    stage: int
    component: str
    choices: tuple[str, ...]
    space: dict  # DesignSpace.to_dict() of the space the stage starts from
    rows: tuple[PlanRow, ...]
    redraws: dict[str, int] = field(default_factory=dict)  # infeasible draws thrown away, per choice
    duplicates: dict[str, int] = field(default_factory=dict)  # identical draws planned once, per choice
    infeasible: dict[str, str] = field(default_factory=dict)  # choices without any feasible design, and why
    skipped: str | None = None  # why the stage plans nothing (its group is not tuned), else None

    @property
    def num_trials(self) -> int:
        return len(self.rows)

    def design_ids(self, choice: str) -> list[str]:
        return list(dict.fromkeys(row.design_id for row in self.rows if row.choice == choice))


# ---- planning ---------------------------------------------------------------------------------------


def choice_seed(search_seed: int, stage: int, component: str, choice: str) -> int:
    """The sampling seed of one choice of one stage: stable across runs and Python versions."""
    text = json.dumps([search_seed, stage, component, choice])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def trial_config(
    spec: SearchSpec,
    task: str,
    seed: int,
    design: Design | None = None,
    preset: str | None = None,
    fidelity: Fidelity | None = None,
    learning_rate: float | None = None,
) -> dict:
    """The trial layer's `TrialConfig` fields for one trial of `spec` (one place maps spec to trial).

    `fidelity` defaults to the search's; `learning_rate` to the spec's (null = the trial layer's
    default per design). The final evaluation passes a preset or the discovered design, its own
    fidelity and the tuned learning rate.
    """
    fidelity = fidelity or spec.fidelity
    hyper = spec.hyperparameters
    return {
        "model": spec.backbone,
        "task": task,
        "data_dir": spec.data.dir,
        "design": design.to_dict() if design is not None else None,
        "preset": preset,
        "budget_fraction": spec.budget_fraction,
        "seed": seed,
        "epochs": fidelity.epochs,
        "max_steps": fidelity.max_steps,
        "max_train_examples": fidelity.max_train_examples,
        "max_eval_examples": fidelity.max_eval_examples,
        "learning_rate": learning_rate if learning_rate is not None else hyper.learning_rate,
        "batch_size": hyper.batch_size,
        "warmup_ratio": hyper.warmup_ratio,
        "max_length": hyper.max_length,
        "gradient_accumulation_steps": hyper.gradient_accumulation_steps,
        "weight_decay": hyper.weight_decay,
        "workers": spec.resources.workers,
        "cache_dir": spec.cache_dir,
    }


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def trial_id(row_fields: dict) -> str:
    """Short hash of a row's canonical JSON (everything in the row except the id itself)."""
    return hashlib.sha256(canonical_json(row_fields).encode()).hexdigest()[:TRIAL_ID_LENGTH]


def plan_stage(spec: SearchSpec, stage: int, space: DesignSpace, profile) -> StagePlan:
    """Plan stage `stage` of `spec` from `space` (the space its predecessors left) on a backbone whose
    `BackboneProfile` is `profile` (from `peft_search.peft.profile_backbone`, a weightless model will do).
    """
    from peft_search.peft.budget import plan_budget  # torch: only when actually planning

    if not 0 <= stage < len(spec.stages):
        raise InputError("stage", f"the spec has stages 0..{len(spec.stages) - 1}, got {stage}")
    if space.num_groups != spec.num_groups:
        raise InputError("space", f"the space has {space.num_groups} groups but the spec {spec.num_groups}")
    stage_spec = spec.stages[stage]
    component = stage_spec.component
    choices = tuple(stage_spec.candidates)
    base = dict(stage=stage, component=component, choices=choices, space=space.to_dict())

    if component.startswith("strategy.") and space.tunable_groups is not None:
        group = strategy_group(component, space.num_groups)
        if group not in space.tunable_groups:
            reason = f"G{group} is not tuned (tunable_groups is {space.format_choice(TUNABLE_GROUPS, space.tunable_groups)})"
            return StagePlan(**base, rows=(), skipped=reason)

    def is_feasible(design: Design) -> bool:
        return plan_budget(profile, design, spec.budget_fraction).feasible

    rows: list[PlanRow] = []
    redraws: dict[str, int] = {}
    duplicates: dict[str, int] = {}
    infeasible: dict[str, str] = {}
    for choice_index, choice in enumerate(choices):
        clamped = space.clamp(component, space.parse_choice(component, choice))
        seed = choice_seed(spec.seed, stage, component, choice)
        try:
            result = clamped.sample(spec.designs_per_choice, seed, profile.num_blocks, is_feasible)
        except InputError as error:
            if error.field != "space":
                raise
            # The sampler gave up: this choice cannot meet the budget here (e.g. a fully fixed design
            # whose sizes round too far from it). It is planned empty, reported, and cannot win.
            infeasible[choice] = error.message
            continue
        designs = list(dict.fromkeys(result.designs))
        redraws[choice] = result.redraws
        duplicates[choice] = len(result.designs) - len(designs)
        for sample, design in enumerate(designs):
            planned = plan_budget(profile, design, spec.budget_fraction).planned_params
            for task in spec.tasks:
                for train_seed in spec.seeds:
                    fields = {
                        "stage": stage,
                        "component": component,
                        "choice": choice,
                        "choice_index": choice_index,
                        "sample": sample,
                        "design_id": design.design_id,
                        "design_json": design.to_json(),
                        "task": task,
                        "seed": train_seed,
                        "planned_params": planned,
                        "config": trial_config(spec, task, train_seed, design),
                    }
                    rows.append(PlanRow(trial_id=trial_id(fields), **fields))
    if len(infeasible) == len(choices):
        raise InputError(
            f"stages[{stage}]",
            f"no candidate of {component} has a design within 2% of the budget {spec.budget_fraction:g} on this "
            f"backbone; try another budget_fraction ({next(iter(infeasible.values()))})",
        )
    return StagePlan(**base, rows=tuple(rows), redraws=redraws, duplicates=duplicates, infeasible=infeasible)


# ---- the plan file ----------------------------------------------------------------------------------

PLAN_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("stage", pa.int32()),
        ("component", pa.string()),
        ("choice", pa.string()),
        ("choice_index", pa.int32()),
        ("sample", pa.int32()),
        ("design_id", pa.string()),
        ("design_json", pa.string()),
        ("task", pa.string()),
        ("seed", pa.int64()),
        ("planned_params", pa.int64()),
        ("config_json", pa.string()),  # JSON: its nullable, mixed-type fields stay exact
    ]
)


def plan_path(run_dir: str | Path, stage: int) -> str:
    """`<run_dir>/stages/<stage>/plan.parquet` (run_dir may be a URI)."""
    return f"{str(run_dir).rstrip('/')}/stages/{stage}/plan.parquet"


def plan_table(plan: StagePlan) -> pa.Table:
    columns = {name: [] for name in PLAN_SCHEMA.names}
    for row in plan.rows:
        for name in PLAN_SCHEMA.names:
            columns[name].append(canonical_json(row.config) if name == "config_json" else getattr(row, name))
    metadata = {
        "format": PLAN_FORMAT,
        "stage": plan.stage,
        "component": plan.component,
        "choices": list(plan.choices),
        "space": plan.space,
        "redraws": plan.redraws,
        "duplicates": plan.duplicates,
        "infeasible": plan.infeasible,
        "skipped": plan.skipped,
    }
    schema = PLAN_SCHEMA.with_metadata({PLAN_METADATA_KEY: canonical_json(metadata).encode()})
    return pa.Table.from_pydict(columns, schema=schema)


def write_plan(plan: StagePlan, path: str | Path) -> None:
    """Write the plan as Parquet; on a local disk atomically (temp file, fsync, rename), so a reader
    sees the old file or the whole new one. On an object store (s3://, gs://) one put is atomic."""
    table = plan_table(plan)
    path = str(path)
    if "://" in path and not path.startswith("file://"):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        filesystem.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, inner, filesystem=filesystem)
        return
    with atomic_output(path.removeprefix("file://")) as handle:
        pq.write_table(table, handle)


def read_plan(path: str | Path) -> StagePlan:
    path = str(path)
    if "://" in path and not path.startswith("file://"):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        table = pq.read_table(inner, filesystem=filesystem)
    else:
        table = pq.read_table(path.removeprefix("file://"))
    raw = (table.schema.metadata or {}).get(PLAN_METADATA_KEY)
    if raw is None:
        raise InputError("plan", f"{path} is not a peft-search plan (no plan metadata)")
    meta = json.loads(raw)
    if meta.get("format") != PLAN_FORMAT:
        raise InputError("plan", f"{path} has plan format {meta.get('format')}, this version reads {PLAN_FORMAT}")
    rows = []
    for record in table.to_pylist():
        config = json.loads(record.pop("config_json"))
        rows.append(PlanRow(**record, config=config))
    return StagePlan(
        stage=meta["stage"],
        component=meta["component"],
        choices=tuple(meta["choices"]),
        space=meta["space"],
        rows=tuple(rows),
        redraws=meta["redraws"],
        duplicates=meta["duplicates"],
        infeasible=meta["infeasible"],
        skipped=meta["skipped"],
    )


# ---- compute estimates ------------------------------------------------------------------------------


def trial_steps(fidelity: Fidelity, spec: SearchSpec, train_size: int | None = None) -> int | None:
    """Optimiser steps of one trial; None when it depends on a dataset size nobody gave.

    As the trial layer trains: exactly `max_steps` when given, else `epochs` passes; batch_size is the
    global batch (split over workers), times gradient_accumulation_steps per optimiser step.
    """
    if fidelity.max_steps is not None:
        return fidelity.max_steps
    sizes = [n for n in (fidelity.max_train_examples, train_size) if n is not None]
    if not sizes:
        return None
    hyper = spec.hyperparameters
    steps_per_epoch = math.ceil(min(sizes) / (hyper.batch_size * hyper.gradient_accumulation_steps))
    return math.ceil(fidelity.epochs * steps_per_epoch)


@dataclass(frozen=True)
class StageEstimate:
    stage: int
    component: str
    choices: int
    trials: int  # an upper bound: duplicate designs and skipped stages plan fewer
    steps: int | None  # optimiser steps over all trials; None when a task's size is unknown


@dataclass(frozen=True)
class SearchEstimate:
    stages: tuple[StageEstimate, ...]
    final_trials: int  # tuning plus training runs of the final evaluation
    final_steps: int | None

    @property
    def trials(self) -> int:
        return sum(s.trials for s in self.stages) + self.final_trials

    @property
    def steps(self) -> int | None:
        parts = [s.steps for s in self.stages] + ([self.final_steps] if self.final_trials else [])
        return None if any(p is None for p in parts) else sum(parts)

    def describe(self, seconds_per_step: float | None = None) -> str:
        """The dry run's table: stages, trials, steps (and hours, given a measured seconds per step)."""

        def steps_text(steps: int | None) -> str:
            if steps is None:
                return "unknown"
            text = f"{steps:,}"
            if seconds_per_step:
                seconds = steps * seconds_per_step
                text += f" (~{seconds / 3600:,.1f} h)" if seconds >= 3600 else f" (~{seconds / 60:.0f} min)"
            return text

        lines = [f"{'stage':<6} {'component':<16} {'choices':>7} {'trials':>8}  steps"]
        for s in self.stages:
            lines.append(f"{s.stage:<6} {s.component:<16} {s.choices:>7} {s.trials:>8,}  {steps_text(s.steps)}")
        if self.final_trials:
            lines.append(f"{'final':<6} {'evaluation':<16} {'':>7} {self.final_trials:>8,}  {steps_text(self.final_steps)}")
        lines.append(f"{'total':<6} {'':<16} {'':>7} {self.trials:>8,}  {steps_text(self.steps)}")
        lines.append("trials are upper bounds: duplicate designs and stages of untuned groups plan fewer")
        return "\n".join(lines)


def estimate_search(spec: SearchSpec, train_sizes: dict[str, int] | None = None) -> SearchEstimate:
    """Trials and optimiser steps of the whole search, without sampling anything.

    `train_sizes` (task -> training examples) makes epoch-based fidelities countable.
    """
    train_sizes = train_sizes or {}

    def steps_per_design(fidelity: Fidelity) -> int | None:
        per_task = [trial_steps(fidelity, spec, train_sizes.get(task)) for task in spec.tasks]
        return None if any(s is None for s in per_task) else sum(per_task) * len(spec.seeds)

    stages = []
    per_design = steps_per_design(spec.fidelity)
    for i, stage in enumerate(spec.stages):
        designs = len(stage.candidates) * spec.designs_per_choice
        stages.append(
            StageEstimate(
                stage=i,
                component=stage.component,
                choices=len(stage.candidates),
                trials=designs * len(spec.tasks) * len(spec.seeds),
                steps=None if per_design is None else designs * per_design,
            )
        )
    final_trials, final_steps = 0, 0
    if spec.final is not None:
        final = spec.final
        runs_per_task = len(final.contenders) * (final.tuning.trials + len(final.seeds))
        final_trials = runs_per_task * len(spec.tasks)
        # Tuning trials train on the training data less the held-back part; close enough to count alike.
        per_task = [trial_steps(final.fidelity, spec, train_sizes.get(task)) for task in spec.tasks]
        final_steps = None if any(s is None for s in per_task) else sum(per_task) * runs_per_task
    return SearchEstimate(stages=tuple(stages), final_trials=final_trials, final_steps=final_steps)


__all__ = [
    "PLAN_SCHEMA",
    "PlanRow",
    "SearchEstimate",
    "StageEstimate",
    "StagePlan",
    "choice_seed",
    "estimate_search",
    "plan_path",
    "plan_stage",
    "plan_table",
    "read_plan",
    "trial_config",
    "trial_id",
    "trial_steps",
    "write_plan",
]
