"""Stage planning on a real (tiny) backbone's profile: deterministic, feasible, complete, stored exactly."""

import json

import pytest

from conftest import build
from peft_search.errors import InputError
from peft_search.peft import plan_budget, profile_backbone
from peft_search.search.stage.plan import (
    block_seed,
    choice_seed,
    plan_path,
    plan_stage,
    read_plan,
    write_plan,
)
from peft_search.search.spec import Fidelity, SearchSpec
from peft_search.search.stage.estimate import estimate_search, trial_steps
from peft_search.search.trials import row_id
from peft_search.space import Design, DesignSpace

# The fields of the trial layer's TrialConfig, which every plan row's config must fill.
TRIAL_CONFIG_FIELDS = {
    "model", "task", "data_dir", "design", "preset", "budget_fraction", "seed", "epochs", "max_steps",
    "max_train_examples", "max_eval_examples", "learning_rate", "batch_size", "warmup_ratio", "max_length",
    "gradient_accumulation_steps", "weight_decay", "workers", "cache_dir", "holdout_fraction",
}  # fmt: skip


@pytest.fixture(scope="module")
def profile():
    return profile_backbone(build("bert"))  # 4 blocks


def make_spec(**changes) -> SearchSpec:
    base = {
        "backbone": "minilm",
        "tasks": ["sst2", "mrpc"],
        "seeds": [0, 1],
        "designs_per_choice": 3,
        "budget_fraction": 0.02,
        "fidelity": {"max_steps": 20, "max_train_examples": 200},
        "stages": [{"component": "grouping", "candidates": ["uniform", "spindle"]}, "strategy.G2"],
    }
    return SearchSpec.from_dict({**base, **changes})


def test_a_stage_plans_every_design_task_and_seed(profile):
    spec = make_spec()
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    assert plan.choices == ("uniform", "spindle") and plan.skipped is None
    assert plan.num_trials == 2 * 3 * 2 * 2  # choices x designs x tasks x seeds
    assert len({row.trial_id for row in plan.rows}) == plan.num_trials
    for choice in plan.choices:
        assert len(plan.design_ids(choice)) == 3
    for row in plan.rows:
        design = row.design
        assert design.grouping == row.choice  # the stage's component is clamped to the row's choice
        budget = plan_budget(profile, design, spec.budget_fraction)
        assert budget.feasible and budget.planned_params == row.planned_params
        assert design.design_id == row.design_id
        assert set(row.config.to_dict()) == TRIAL_CONFIG_FIELDS
        assert row.config.design == design and row.config.to_dict()["design"] == design.to_dict()
        assert (row.config.task, row.config.seed, row.config.max_steps) == (row.task, row.seed, 20)
        fields = {k: v for k, v in row.__dict__.items() if k != "trial_id"}
        assert row.trial_id == row_id({**fields, "config": row.config.to_dict()})


def test_planning_is_deterministic_and_seeded_by_hash_not_by_python(profile):
    spec = make_spec()
    assert plan_stage(spec, 0, spec.initial_space(), profile) == plan_stage(spec, 0, spec.initial_space(), profile)
    # A fixed SHA-256 derivation: Python's salted hash() would change this between processes.
    assert choice_seed(0, 1, "grouping", "spindle") == 15219293677224483638
    other = plan_stage(make_spec(seed=1), 0, spec.initial_space(), profile)
    assert other.design_ids("spindle") != plan_stage(spec, 0, spec.initial_space(), profile).design_ids("spindle")


def test_a_choice_gets_the_same_designs_whatever_else_the_stage_lists(profile):
    both = make_spec()
    alone = make_spec(stages=[{"component": "grouping", "candidates": ["spindle"]}, "strategy.G2"])
    assert plan_stage(both, 0, both.initial_space(), profile).design_ids("spindle") == plan_stage(
        alone, 0, alone.initial_space(), profile
    ).design_ids("spindle")


def test_redraws_are_counted(profile):
    # Two blocks' worth of BitFit alone cannot reach a 2% budget: such draws are redrawn.
    spec = make_spec(sampling="independent", racing=None)
    space = spec.initial_space()
    plan = plan_stage(spec, 0, space, profile)
    for choice in plan.choices:
        direct = space.clamp("grouping", choice).sample(
            3, choice_seed(spec.seed, 0, "grouping", choice), profile.num_blocks,
            lambda d: plan_budget(profile, d, spec.budget_fraction).feasible,
        )  # fmt: skip
        assert plan.redraws[choice] == direct.redraws
    assert sum(plan.redraws.values()) > 0


def test_later_stages_sample_from_the_refined_space(profile):
    spec = make_spec()
    space = spec.initial_space().clamp("grouping", "spindle")
    plan = plan_stage(spec, 1, space, profile)
    assert plan.component == "strategy.G2" and len(plan.choices) == 15
    for row in plan.rows:
        design = row.design
        assert design.grouping == "spindle"
        assert 2 in design.tunable_groups and "+".join(design.strategies[1]) == row.choice


def test_a_fully_fixed_space_plans_each_design_once(profile):
    spec = make_spec(designs_per_choice=4, sampling="independent", racing=None)
    space = DesignSpace(num_groups=4, grouping="uniform", allocation="uniform", tunable_groups=(1, 2))
    space = space.clamp("strategy.G1", ("lora",))
    plan = plan_stage(spec, 1, space, profile)
    # On this tiny backbone LoRA alone on G1+G2 rounds 2.7% away from the budget (rank 16 of 256
    # parameters per unit against 4,210): that choice has no feasible design and is reported.
    assert set(plan.infeasible) == {"lora"} and "infeasible" in plan.infeasible["lora"]
    assert plan.design_ids("lora") == []
    for choice in plan.choices:
        if choice != "lora":
            assert len(plan.design_ids(choice)) == 1
            assert plan.duplicates[choice] == 3
    assert plan.num_trials == 14 * 1 * 2 * 2


def test_a_budget_no_choice_can_meet_is_refused(profile):
    spec = make_spec(budget_fraction=0.5, stages=[{"component": "strategy.G1", "candidates": ["bitfit"]}])
    space = DesignSpace(num_groups=4, grouping="uniform", allocation="uniform", tunable_groups=(1,))
    with pytest.raises(InputError) as caught:
        plan_stage(spec, 0, space, profile)
    assert caught.value.field == "stages[0]" and "budget_fraction" in caught.value.message


def test_a_strategy_stage_of_an_untuned_group_is_skipped(profile):
    spec = make_spec()
    space = DesignSpace(num_groups=4, tunable_groups=(1, 3))
    plan = plan_stage(spec, 1, space, profile)
    assert plan.rows == () and "G2 is not tuned" in plan.skipped


def test_bad_stage_index_is_refused(profile):
    spec = make_spec()
    with pytest.raises(InputError, match="stages 0..1"):
        plan_stage(spec, 2, spec.initial_space(), profile)


def test_plan_file_round_trips_exactly_and_atomically(profile, tmp_path):
    spec = make_spec()
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    path = plan_path(tmp_path / "run", 0)
    assert str(path) == f"{tmp_path}/run/stages/0/plan.parquet"
    write_plan(plan, path)
    assert read_plan(path) == plan
    # Overwriting replaces the file whole and leaves no temporary file behind.
    skipped = plan_stage(spec, 1, DesignSpace(num_groups=4, tunable_groups=(1,)), profile)
    write_plan(skipped, path)
    assert read_plan(path) == skipped
    assert sorted(p.name for p in (tmp_path / "run" / "stages" / "0").iterdir()) == ["plan.parquet"]
    row = read_plan(plan_path(tmp_path / "run", 0))
    assert row.skipped is not None


def test_rows_build_the_trial_layers_config(profile):
    trial = pytest.importorskip("peft_search.train.trial")
    spec = make_spec()
    row = plan_stage(spec, 0, spec.initial_space(), profile).rows[0]
    assert isinstance(row.config, trial.TrialConfig)  # validated when planned, not inside the Tune worker
    assert trial.TrialConfig.from_dict(row.config.to_dict()) == row.config
    assert Design.from_dict(json.loads(row.design_json)) == row.design


def test_trial_steps_and_search_estimate():
    spec = make_spec(hyperparameters={"batch_size": 16})
    assert trial_steps(Fidelity(epochs=2), spec, train_size=100) == 2 * 7
    assert trial_steps(Fidelity(epochs=2, max_steps=10), spec, train_size=100) == 10  # max_steps wins
    assert trial_steps(Fidelity(epochs=0.5), spec, train_size=100) == 4
    assert trial_steps(Fidelity(epochs=1, max_train_examples=64), spec, train_size=10_000) == 4
    assert trial_steps(Fidelity(max_steps=30), spec) == 30
    assert trial_steps(Fidelity(epochs=3), spec) is None  # depends on the unknown dataset size
    estimate = estimate_search(spec)
    assert [s.trials for s in estimate.stages] == [2 * 3 * 2 * 2, 15 * 3 * 2 * 2]
    assert estimate.steps == estimate.trials * 20
    final = estimate_search(make_spec(final={"contenders": ["discovered", "lora"], "seeds": [0, 1], "tuning": {"trials": 3}, "fidelity": {"epochs": 1}}), {"sst2": 320, "mrpc": 160})
    assert final.final_trials == 2 * (3 + 2) * 2
    assert final.final_steps == (10 + 5) * 2 * (3 + 2)
    assert "total" in final.describe(seconds_per_step=0.5)
    # Tuned on one task: its tuning runs once per contender, the seeded runs on every task.
    once = estimate_search(make_spec(final={"contenders": ["discovered", "lora"], "seeds": [0, 1], "tuning": {"trials": 3, "task": "mrpc"},
                                            "fidelity": {"epochs": 1}}), {"sst2": 320, "mrpc": 160})
    assert once.final_trials == 2 * (3 + 2 * 2)
    assert once.final_steps == 2 * (3 * 5 + 2 * (10 + 5))
    # Racing: between the first round's trials (min_blocks blocks) and every block's.
    raced = estimate_search(make_spec(designs_per_choice=4, racing={"min_blocks": 2}))
    assert [(s.fewest_trials, s.trials) for s in raced.stages] == [(2 * 2 * 2 * 2, 2 * 4 * 2 * 2), (15 * 2 * 2 * 2, 15 * 4 * 2 * 2)]
    assert raced.fewest_trials == 2 * 2 * 2 * 2 + 15 * 2 * 2 * 2 and f"{raced.fewest_trials:,} to {raced.trials:,}" in raced.describe()
    fixed = estimate_search(make_spec(designs_per_choice=4, racing=None))
    assert fixed.fewest_trials == fixed.trials and " to " not in fixed.describe()


def test_paired_blocks_differ_only_in_the_component_under_study(profile):
    spec = make_spec(designs_per_choice=4, stages=[{"component": "grouping", "candidates": ["uniform", "spindle", "bottleneck"]}])
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    blocks = sorted({row.block for row in plan.rows})
    assert blocks == [0, 1, 2, 3]
    for block in blocks:
        designs = {row.choice: row.design for row in plan.rows if row.block == block}
        assert set(designs) == {"uniform", "spindle", "bottleneck"}
        assert {d.grouping for d in designs.values()} == {"uniform", "spindle", "bottleneck"}
        assert len({(d.tunable_groups, d.strategies) for d in designs.values()}) == 1  # shared draw
        rows = [row for row in plan.rows if row.block == block]
        assert {(r.task, r.seed) for r in rows if r.choice == "uniform"} == {(r.task, r.seed) for r in rows if r.choice == "spindle"}
    # Different blocks draw different designs.
    assert len({row.design_id for row in plan.rows if row.choice == "uniform"}) > 1


def test_paired_plans_round_trip_with_their_blocks(tmp_path, profile):
    spec = make_spec()
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    write_plan(plan, plan_path(tmp_path, 0))
    again = read_plan(plan_path(tmp_path, 0))
    assert again == plan and {row.block for row in again.rows} == {0, 1, 2}


def test_a_fully_fixed_paired_space_replicates_its_block_with_seeds_of_its_own(tmp_path, profile):
    spec = make_spec(designs_per_choice=4, racing={"min_blocks": 2})
    space = DesignSpace(num_groups=4, grouping="uniform", allocation="uniform", tunable_groups=(1, 2))
    space = space.clamp("strategy.G1", ("lora",))
    plan = plan_stage(spec, 1, space, profile)
    assert set(plan.infeasible) == {"lora"}
    # Nothing but G2's strategy is free: every block holds the same designs. Blocks 1 to 3 repeat
    # block 0's with seeds of their own (still the same seeds for every choice of a block), so the
    # stage has 4 replicates to race on instead of one training per choice.
    assert {row.block for row in plan.rows} == {0, 1, 2, 3} and plan.reseeded_blocks == 3 and plan.duplicates == {}
    for choice in plan.choices:
        if choice != "lora":
            assert len(plan.design_ids(choice)) == 1
    seeds = {}
    for row in plan.rows:
        seeds.setdefault(row.block, set()).add((row.task, row.seed))
        assert row.config.seed == row.seed
    assert seeds[0] == {(task, seed) for task in spec.tasks for seed in spec.seeds}
    assert seeds[1] == {(task, block_seed(seed, 1)) for task in spec.tasks for seed in spec.seeds}
    assert len({seed for block in seeds.values() for _, seed in block}) == 4 * len(spec.seeds)
    assert len({row.trial_id for row in plan.rows}) == plan.num_trials == 14 * 4 * 2 * 2
    write_plan(plan, plan_path(tmp_path, 1))
    assert read_plan(plan_path(tmp_path, 1)) == plan
    # Blocks that differ are trained with the spec's seeds, as before.
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    assert plan.reseeded_blocks == 0 and {row.seed for row in plan.rows} == set(spec.seeds)
