"""Deterministic planning of one refinement stage, and the plan's Parquet file.

A stage's plan is a pure function of (spec, stage index, the space the stage starts from, the
backbone's profile). With `sampling: paired` (the default) it holds `designs_per_choice` blocks:
block k draws every free component but the one under study once and gives every candidate choice
that same draw with the choice applied (common random numbers; `DesignSpace.sample_blocks`), so the
designs of a block differ only in the component the stage studies. With `sampling: independent`
each choice's designs are drawn on their own (the paper's protocol). Either way every design is
feasible under the budget (infeasible draws are redrawn and counted) and is planned once per task
and training seed (the same seeds for every choice, so a block also shares data order). Seeds are
derived with SHA-256 from (search seed, stage index, component, choice text or "blocks"), the same
on every run, machine and Python version.

Designs drawn twice for one choice (independent) are planned once and counted as duplicates: a trial
is a pure function of its row, so a repeat would cost compute and add nothing. A block that repeats
an earlier block's designs (paired, when nothing but the studied component is free, as in a last
stage) is kept and trains them with training seeds of its own (`block_seed`): its replicates then
measure training noise, paired by seed, instead of the stage resting on one training per choice.

Stages are numbered from 0, as in the spec (`stages[0]`), and the plan of stage i lives at
`stages/<i>/plan.parquet` in the run directory. Imports space and pyarrow; the budget planner
(torch) only inside `plan_stage`; never ray.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from peft_search.errors import InputError
from peft_search.search.spec import Fidelity, SearchSpec
from peft_search.search.seeds import derive_seed
from peft_search.search.storage.columns import schema
from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.records import read_parquet, write_parquet
from peft_search.search.trials import TrialRow, canonical_json, row_id
from peft_search.space import Design, DesignSpace
from peft_search.space.components import TUNABLE_GROUPS, strategy_group
from peft_search.train.trial import TrialConfig

PLAN_FORMAT = 1
PLAN_METADATA_KEY = b"peft_search.plan"


@dataclass(frozen=True)
class PlanRow:
    """One planned trial: a design trained on one task with one seed."""

    trial_id: str  # hash of everything else in the row
    stage: int
    component: str
    choice: str  # text form: spindle, G1+G2, adapter+lora
    choice_index: int  # position of the choice in the stage's candidate list
    sample: int  # index of the design among the choice's distinct designs (paired: its block)
    design_id: str
    design_json: str  # Design.to_json()
    task: str
    seed: int
    planned_params: int  # trainable parameters the budget planner assigns (the trial counts the real ones)
    config: TrialConfig  # what the trial trains, validated when planned
    block: int | None = None  # paired sampling: the block (designs of one block share every other draw)

    @property
    def design(self) -> Design:
        return self.config.design

    def trial_row(self) -> TrialRow:
        """The row as a trial runs it; its record carries the plan's fields and the design's components."""
        design = self.design
        fields = {
            "stage": self.stage,
            "component": self.component,
            "choice": self.choice,
            "sample": self.sample,
            "block": self.block,
            "design_id": self.design_id,
            "design_json": self.design_json,
            "grouping": design.grouping if isinstance(design.grouping, str) else json.dumps(list(design.grouping)),
            "allocation": design.allocation if isinstance(design.allocation, str) else "free",
            "tunable_groups": "+".join(f"G{g}" for g in design.tunable_groups),
            "strategies": " ".join(f"G{g}:{'+'.join(s) or '-'}" for g, s in enumerate(design.strategies, start=1)),
            "task": self.task,
            "seed": self.seed,
        }
        return TrialRow(self.trial_id, self.config, f"stages/{self.stage}/trials", fields)


@dataclass(frozen=True)
class StagePlan:
    stage: int
    component: str
    choices: tuple[str, ...]
    space: dict  # DesignSpace.to_dict() of the space the stage starts from
    rows: tuple[PlanRow, ...]
    redraws: dict[str, int] = field(default_factory=dict)  # infeasible draws thrown away, per choice
    duplicates: dict[str, int] = field(default_factory=dict)  # identical draws planned once, per choice
    reseeded_blocks: int = 0  # blocks repeating an earlier block's designs, trained with seeds of their own
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


def block_seed(train_seed: int, block: int) -> int:
    """The training seed that block `block` uses instead of `train_seed` when it repeats an earlier
    block's designs: stable across runs and Python versions, within 0..2**32-1."""
    return derive_seed(train_seed, "block", block)


def trial_config(
    spec: SearchSpec,
    task: str,
    seed: int,
    design: Design | None = None,
    preset: str | None = None,
    fidelity: Fidelity | None = None,
    learning_rate: float | None = None,
    holdout_fraction: float | None = None,
    workers: int | None = None,
) -> TrialConfig:
    """The `TrialConfig` of one trial of `spec` (the one place that maps spec to trial); InputError
    when the trial layer refuses a value, so a bad spec fails while planning, before any trial runs.

    `fidelity` defaults to the search's; `learning_rate` to the spec's (null = the trial layer's
    default per design); `workers` to `resources.workers`. The final evaluation passes a preset or the
    discovered design, its own fidelity, the tuned learning rate and its own workers.
    """
    fidelity = fidelity or spec.fidelity
    hyper = spec.hyperparameters
    return TrialConfig(
        model=spec.backbone,
        task=task,
        data_dir=spec.data.dir,
        design=design,
        preset=preset,
        budget_fraction=spec.budget_fraction,
        seed=seed,
        epochs=fidelity.epochs,
        max_steps=fidelity.max_steps,
        max_train_examples=fidelity.max_train_examples,
        max_eval_examples=fidelity.max_eval_examples,
        learning_rate=learning_rate if learning_rate is not None else hyper.learning_rate,
        batch_size=hyper.batch_size,
        warmup_ratio=hyper.warmup_ratio,
        max_length=hyper.max_length,
        gradient_accumulation_steps=hyper.gradient_accumulation_steps,
        weight_decay=hyper.weight_decay,
        workers=workers or spec.resources.workers,
        cache_dir=spec.cache_dir,
        holdout_fraction=holdout_fraction,
        gradient_checkpointing=hyper.gradient_checkpointing,
        precision=hyper.precision,
        backbone_dtype=hyper.backbone_dtype,
        objective=spec.objective,
    )


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

    budget_plans: dict[Design, object] = {}  # each design's budget is planned once: sampling reads it, rows too

    def budget_plan(design: Design):
        if design not in budget_plans:
            budget_plans[design] = plan_budget(profile, design, spec.budget_fraction)
        return budget_plans[design]

    def is_feasible(design: Design) -> bool:
        return budget_plan(design).feasible

    reseeded: set[int] = set()
    if spec.sampling == "paired":
        drawn, redraws, reseeded, infeasible = _paired_designs(spec, stage, space, profile.num_blocks, is_feasible)
        duplicates = {}
    else:
        drawn, redraws, duplicates, infeasible = _independent_designs(spec, stage, space, profile.num_blocks, is_feasible)
    rows: list[PlanRow] = []
    for choice_index, choice in enumerate(choices):
        for sample, block, design in drawn.get(choice, ()):
            planned = budget_plan(design).planned_params
            seeds = [block_seed(seed, block) for seed in spec.seeds] if block in reseeded else spec.seeds
            for task in spec.tasks:
                for train_seed in seeds:
                    fields = {
                        "stage": stage,
                        "component": component,
                        "choice": choice,
                        "choice_index": choice_index,
                        "sample": sample,
                        "block": block,
                        "design_id": design.design_id,
                        "design_json": design.to_json(),
                        "task": task,
                        "seed": train_seed,
                        "planned_params": planned,
                        "config": trial_config(spec, task, train_seed, design),
                    }
                    rows.append(PlanRow(trial_id=row_id({**fields, "config": fields["config"].to_dict()}), **fields))
    if len(infeasible) == len(choices):
        raise InputError(
            f"stages[{stage}]",
            f"no candidate of {component} has a design within 2% of the budget {spec.budget_fraction:g} on this "
            f"backbone; try another budget_fraction ({next(iter(infeasible.values()))})",
        )
    return StagePlan(**base, rows=tuple(rows), redraws=redraws, duplicates=duplicates, reseeded_blocks=len(reseeded),
                     infeasible=infeasible)


def _independent_designs(spec: SearchSpec, stage: int, space: DesignSpace, num_blocks: int, is_feasible):
    """Each choice's designs drawn on their own (the paper's protocol): choice -> [(sample, None, design)].

    Identical designs drawn twice for one choice are planned once (counted as duplicates)."""
    component = spec.stages[stage].component
    drawn, redraws, duplicates, infeasible = {}, {}, {}, {}
    for choice in spec.stages[stage].candidates:
        clamped = space.clamp(component, space.parse_choice(component, choice))
        try:
            result = clamped.sample(spec.designs_per_choice, choice_seed(spec.seed, stage, component, choice), num_blocks, is_feasible)
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
        drawn[choice] = [(sample, None, design) for sample, design in enumerate(designs)]
    return drawn, redraws, duplicates, infeasible


def _paired_designs(spec: SearchSpec, stage: int, space: DesignSpace, num_blocks: int, is_feasible):
    """Blocks of designs sharing every draw but the component under study (common random numbers):
    (choice -> [(block, block, design)], redraws, the blocks that repeat an earlier one, infeasible);
    block k's sampling seed follows from (search seed, stage, component).

    A choice with no feasible design at all is found first, on its own, and planned empty (otherwise
    every block would be redrawn for it); a block in which any other choice's design is infeasible is
    redrawn whole, and counted under `blocks`. A block identical to an earlier one for every choice
    (a space with nothing free but the component under study) is returned among the repeats: the
    plan trains it with seeds of its own."""
    component = spec.stages[stage].component
    infeasible = {}
    for choice in spec.stages[stage].candidates:
        clamped = space.clamp(component, space.parse_choice(component, choice))
        try:
            clamped.sample(1, choice_seed(spec.seed, stage, component, choice), num_blocks, is_feasible)
        except InputError as error:
            if error.field != "space":
                raise
            infeasible[choice] = error.message
    feasible = [c for c in spec.stages[stage].candidates if c not in infeasible]
    if not feasible:
        return {}, {}, set(), infeasible
    result = space.sample_blocks(
        component, [space.parse_choice(component, c) for c in feasible], spec.designs_per_choice,
        choice_seed(spec.seed, stage, component, "blocks"), num_blocks, is_feasible,
    )
    blocks = result.blocks
    first = {}
    repeats = {k for k, block in enumerate(blocks) if first.setdefault(block, k) != k}
    drawn = {choice: [(k, k, block[j]) for k, block in enumerate(blocks)] for j, choice in enumerate(feasible)}
    return drawn, {"blocks": result.redraws}, repeats, infeasible


# ---- the plan file ----------------------------------------------------------------------------------

PLAN_COLUMNS = (  # one row per planned trial; storage.columns says what each holds
    "trial_id", "stage", "component", "choice", "choice_index", "sample", "block", "design_id", "design_json", "task",
    "seed", "planned_params", "config_json",
)
PLAN_SCHEMA = schema(PLAN_COLUMNS)


def plan_path(run_dir: StoragePath | str | Path, stage: int) -> StoragePath:
    """`<run_dir>/stages/<stage>/plan.parquet`."""
    return StoragePath.parse(run_dir) / "stages" / str(stage) / "plan.parquet"


def plan_table(plan: StagePlan) -> pa.Table:
    columns = {name: [] for name in PLAN_SCHEMA.names}
    for row in plan.rows:
        for name in PLAN_SCHEMA.names:
            columns[name].append(canonical_json(row.config.to_dict()) if name == "config_json" else getattr(row, name))
    metadata = {
        "format": PLAN_FORMAT,
        "stage": plan.stage,
        "component": plan.component,
        "choices": list(plan.choices),
        "space": plan.space,
        "redraws": plan.redraws,
        "duplicates": plan.duplicates,
        "reseeded_blocks": plan.reseeded_blocks,
        "infeasible": plan.infeasible,
        "skipped": plan.skipped,
    }
    with_metadata = PLAN_SCHEMA.with_metadata({PLAN_METADATA_KEY: canonical_json(metadata).encode()})
    return pa.Table.from_pydict(columns, schema=with_metadata)


def write_plan(plan: StagePlan, path: StoragePath | str | Path) -> None:
    """Write the plan as Parquet, atomically: a reader sees the old file or the whole new one."""
    write_parquet(StoragePath.parse(path), plan_table(plan))


def read_plan(path: StoragePath | str | Path) -> StagePlan:
    table = read_parquet(StoragePath.parse(path))
    raw = (table.schema.metadata or {}).get(PLAN_METADATA_KEY)
    if raw is None:
        raise InputError("plan", f"{path} is not a peft-search plan (no plan metadata)")
    meta = json.loads(raw)
    if meta.get("format") != PLAN_FORMAT:
        raise InputError("plan", f"{path} has plan format {meta.get('format')}, this version reads {PLAN_FORMAT}")
    rows = []
    for record in table.to_pylist():
        config = TrialConfig.from_dict(json.loads(record.pop("config_json")))
        rows.append(PlanRow(**{"block": None, **record}, config=config))
    return StagePlan(
        stage=meta["stage"],
        component=meta["component"],
        choices=tuple(meta["choices"]),
        space=meta["space"],
        rows=tuple(rows),
        redraws=meta["redraws"],
        duplicates=meta["duplicates"],
        reseeded_blocks=meta.get("reseeded_blocks", 0),  # older plans dropped repeated blocks instead
        infeasible=meta["infeasible"],
        skipped=meta["skipped"],
    )


__all__ = [
    "PLAN_SCHEMA",
    "PlanRow",
    "StagePlan",
    "block_seed",
    "choice_seed",
    "plan_path",
    "plan_stage",
    "plan_table",
    "read_plan",
    "trial_config",
    "write_plan",
]
