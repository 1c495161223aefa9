"""The job spec: the shipped jobs validate, defaults expand canonically, bad specs name their field."""

from pathlib import Path

import pytest
import yaml

from peft_search.errors import InputError
from peft_search.search.spec import (
    CONTENDERS,
    SearchSpec,
    SpecError,
    load_final_file,
    load_spec,
    parse_spec_text,
    spec_diff,
    spec_schema,
)
from peft_search.space import ALLOCATION_PATTERNS, GROUPING_PATTERNS, component_names

JOBS = Path(__file__).resolve().parent.parent / "jobs"
MINIMAL = {"backbone": "minilm", "tasks": ["sst2"]}


def spec_from(**changes) -> SearchSpec:
    return SearchSpec.from_dict({**MINIMAL, **changes})


SHIPPED = sorted(p.name for p in JOBS.glob("*.yaml"))


@pytest.mark.parametrize("job", SHIPPED)
def test_shipped_jobs_validate_and_round_trip(job):
    spec = load_spec(JOBS / job)
    assert parse_spec_text(spec.to_yaml()) == spec
    assert yaml.safe_load(spec.to_yaml()) == spec.to_dict()


def test_shipped_jobs_match_their_purpose():
    quick = load_spec(JOBS / "quickstart.yaml")
    assert quick.backbone == "minilm" and quick.tasks == ["tweets"] and quick.data.source == "bundled"
    decoder = load_spec(JOBS / "glue-qwen2.5-0.5b.yaml")
    assert decoder.backbone.startswith("Qwen/") and decoder.data.source == "hub" and decoder.resources.gpus >= 1
    paper = load_spec(JOBS / "glue-t5-base.yaml")
    assert paper.tasks == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
    assert (paper.budget_fraction, paper.designs_per_choice, paper.fidelity.epochs) == (0.005, 100, 3)
    assert [s.component for s in paper.stages] == list(component_names(4))
    assert paper.resources.gpus >= 1
    tracked = load_spec(JOBS / "tracked.yaml")
    assert tracked.tracking.mlflow.tracking_uri == "http://127.0.0.1:5000" and tracked.data.source == "bundled"
    cpu = load_spec(JOBS / "glue-minilm-cpu.yaml")
    assert cpu.data.source == "local" and cpu.data.dir is None
    assert [s.component for s in cpu.stages] == list(component_names(4))
    study = load_spec(JOBS / "study-minilm-cpu.yaml")
    assert study.tasks == ["sst2", "stsb"] and study.racing is not None and study.sampling == "paired"
    assert [s.component for s in study.stages] == list(component_names(4))
    final = load_final_file(JOBS.parent / "docs" / "study" / "final.yaml", study)
    assert final.tasks == ["sst2", "stsb", "mrpc", "cola", "qnli", "mnli", "qqp"] and len(final.seeds) >= 3
    assert final.tuning.task == "sst2" and sorted(final.designs) == ["joint", "random"]
    for baseline in ("joint", "random"):
        joint = load_spec(JOBS / f"study-minilm-cpu-{baseline}.yaml")
        assert joint.joint.sampler == {"joint": "tpe", "random": "random"}[baseline]
        # The same space and training as the staged search: only the search differs.
        assert [s.model_dump() for s in joint.stages] == [s.model_dump() for s in study.stages]
        same = ("backbone", "tasks", "data", "budget_fraction", "num_groups", "fidelity", "hyperparameters", "seeds")
        assert {k: joint.to_dict()[k] for k in same} == {k: study.to_dict()[k] for k in same}
    check = load_spec(JOBS / "cluster-check.yaml")
    assert check.data.source == "bundled" and check.racing is None


def test_shipped_task_names_are_known_to_the_trial_layer():
    tasks = pytest.importorskip("peft_search.train.tasks")
    for job in SHIPPED:
        load_spec(JOBS / job, known_tasks=tasks.get_task)


def test_default_stages_are_the_papers_order_with_every_candidate():
    spec = spec_from(num_groups=3)
    assert [s.component for s in spec.stages] == ["grouping", "allocation", "tunable_groups", "strategy.G1", "strategy.G2", "strategy.G3"]
    assert spec.stages[0].candidates == list(GROUPING_PATTERNS)
    assert spec.stages[1].candidates == list(ALLOCATION_PATTERNS)
    assert len(spec.stages[2].candidates) == 7  # non-empty subsets of 3 groups
    assert len(spec.stages[3].candidates) == 15  # non-empty subsets of 4 strategies
    # A stage given by name alone gets every candidate too.
    assert spec_from(stages=["allocation"]).stages[0].candidates == list(ALLOCATION_PATTERNS)


def test_candidates_are_canonical():
    spec = spec_from(
        stages=[
            {"component": "strategy.G2", "candidates": ["lora+adapter", "bitfit"]},
            {"component": "tunable_groups", "candidates": ["G3+G2", "g2"]},
        ]
    )
    assert spec.stages[0].candidates == ["adapter+lora", "bitfit"]
    assert spec.stages[1].candidates == ["G2+G3", "G2"]


def test_yaml_reads_exponent_floats_and_specs_are_frozen():
    spec = parse_spec_text("backbone: minilm\ntasks: [sst2]\nhyperparameters: {learning_rate: 1e-3}\n")
    assert spec.hyperparameters.learning_rate == pytest.approx(1e-3)
    with pytest.raises(Exception):
        spec.budget_fraction = 0.5


BAD_SPECS = [
    # (changes, path, words the message must contain)
    ({"batch_sz": 3}, "batch_sz", ["unknown key", "designs_per_choice"]),
    ({"stages": [{"component": "grouping", "candidate": ["spindle"]}]}, "stages[0].candidate", ["unknown key", "candidates"]),
    ({"hyperparameters": {"batch_size": "32"}}, "hyperparameters.batch_size", ["integer", "'32'"]),
    ({"retries": True}, "retries", ["integer"]),
    ({"tasks": "sst2"}, "tasks", ["list"]),
    ({"budget_fraction": 1.5}, "budget_fraction", ["less than 1", "1.5"]),
    ({"budget_fraction": 0}, "budget_fraction", ["greater than 0"]),
    (
        {"stages": ["grouping", {"component": "allocation", "candidates": []}]},
        "stages[1].candidates",
        ["empty list", "increasing, uniform, decreasing"],
    ),
    ({"stages": [{"component": "strategy.G5"}]}, "stages[0].component", ["unknown component", "strategy.G4"]),
    ({"stages": [{"component": "layers"}]}, "stages[0].component", ["unknown component", "grouping"]),
    ({"stages": [{"component": "grouping", "candidates": ["spindle", "zigzag"]}]}, "stages[0].candidates[1]", ["zigzag", "bottleneck"]),
    ({"stages": [{"component": "strategy.G1", "candidates": ["adapter+oft"]}]}, "stages[0].candidates[0]", ["oft", "lora"]),
    ({"stages": [{"component": "tunable_groups", "candidates": ["G5"]}]}, "stages[0].candidates[0]", ["G5", "G1..G4"]),
    ({"stages": [{"component": "grouping", "candidates": ["spindle", "spindle"]}]}, "stages[0].candidates[1]", ["twice"]),
    ({"stages": ["grouping", "grouping"]}, "stages[1].component", ["already refined by stages[0]"]),
    ({"stages": []}, "stages", ["empty list", "grouping, allocation"]),
    (
        {"stages": [{"component": "strategy.G3", "candidates": ["lora"]}, {"component": "tunable_groups", "candidates": ["G1+G2"]}]},
        "stages[1].candidates[0]",
        ["leaves out G3"],
    ),
    ({"tasks": []}, "tasks", ["empty list"]),
    ({"tasks": ["sst2", "sst2"]}, "tasks[1]", ["twice"]),
    ({"tasks": ["sst 2"]}, "tasks[0]", ["not a task name"]),
    ({"seeds": []}, "seeds", ["empty list"]),
    ({"resources": {"gpus": 1.5}}, "resources.gpus", ["a fraction of one GPU", "got 1.5"]),
    ({"data": {"source": "hub", "dir": "/data"}}, "data.dir", ["source: local"]),
    ({"data": {"source": "ftp"}}, "data.source", ["'hub'", "'local'"]),
    ({"fidelity": {"max_train_examples": 100}}, "fidelity.epochs", ["epochs, max_steps"]),
    ({"fidelity": {"epochs": 0}}, "fidelity.epochs", ["greater than or equal to 0.001"]),
    ({"seeds": [0, -1]}, "seeds[1]", ["integers from 0 to 4294967295"]),
    (
        {"hyperparameters": {"batch_size": 15}, "resources": {"workers": 2}},
        "hyperparameters.batch_size",
        ["multiple of 2"],
    ),
    ({"hyperparameters": {"warmup_ratio": 1.0}}, "hyperparameters.warmup_ratio", ["less than 1"]),
    ({"resources": {"cpus": 0}}, "resources.cpus", ["greater than 0"]),
    ({"final": {"contenders": ["lora", "oft"]}}, "final.contenders[1]", ["oft", ", ".join(CONTENDERS)]),
    ({"final": {"tuning": {"learning_rate_min": 0.1, "learning_rate_max": 0.01}}}, "final.tuning.learning_rate_max", ["above"]),
    ({"final": {"tuning": {"learning_rate_max": 2.0}}}, "final.tuning.learning_rate_max", ["at most 1, got 2"]),
    ({"final": {"tuning": {"relative": True, "learning_rate_max": 300}}}, "final.tuning.learning_rate_max",
     ["a factor of at most 200 (relative: true), got 300"]),
    ({"final": {"tuning": {"task": "qnli"}}}, "final.tuning.task", ["'qnli' is not a task of the final", "sst2", "null"]),
    ({"final": {"tasks": ["mrpc"], "tuning": {"task": "sst2"}}}, "final.tuning.task", ["give one of mrpc"]),
    ({"final": {"resources": {"cpus": 0}}}, "final.resources.cpus", ["greater than 0"]),
    ({"final": {"max_concurrent_trials": 0}}, "final.max_concurrent_trials", ["greater than or equal to 1"]),
    ({"hyperparameters": {"batch_size": 16}, "final": {"resources": {"workers": 3}}}, "final.resources.workers",
     ["batch_size 16 does not split over 3 workers"]),
    ({"sampling": "pairs"}, "sampling", ["'paired'", "'independent'"]),
    ({"sampling": "independent"}, "racing", ["needs sampling: paired", "racing: null"]),
    ({"racing": {"min_blocks": 1}}, "racing.min_blocks", ["greater than or equal to 2"]),
    ({"racing": {"confidence": 1.0}}, "racing.confidence", ["less than 1"]),
    ({"racing": {"confidence": 0.5}}, "racing.confidence", ["greater than 0.5"]),
    ({"racing": {"max_blocks": 8}}, "racing.max_blocks", ["unknown key", "min_blocks, confidence, delta, on_tie"]),
    ({"racing": {"delta": 0}}, "racing.delta", ["greater than 0"]),
    ({"racing": {"delta": 1.5}}, "racing.delta", ["less than or equal to 1"]),
    ({"racing": {"on_tie": "coin"}}, "racing.on_tie", ["best_mean", "first", "paper"]),
    ({"racing": {"blocks_per_round": 0}}, "racing.blocks_per_round", ["greater than or equal to 1"]),
    ({"racing": "yes"}, "racing", ["Racing"]),
]


@pytest.mark.parametrize("changes, path, words", BAD_SPECS)
def test_invalid_specs_name_the_field_and_what_is_allowed(changes, path, words):
    with pytest.raises(SpecError) as caught:
        spec_from(**changes)
    assert caught.value.path == path
    for word in words:
        assert word in caught.value.message


def test_errors_from_a_file_are_prefixed_with_its_name(tmp_path):
    job = tmp_path / "x.yaml"
    job.write_text("backbone: minilm\ntasks: [sst2]\nstages:\n  - grouping\n  - allocation\n  - {component: tunable_groups, candidates: []}\n")
    with pytest.raises(InputError) as caught:
        load_spec(job)
    assert str(caught.value).startswith(f"{job}: stages[2].candidates: empty list; give at least one of")
    assert caught.value.field == f"{job}: stages[2].candidates"


def test_missing_required_keys_and_bad_files(tmp_path):
    with pytest.raises(SpecError) as caught:
        SearchSpec.from_dict({"tasks": ["sst2"]})
    assert caught.value.path == "backbone" and caught.value.message.startswith("required")
    (tmp_path / "broken.yaml").write_text("backbone: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_spec(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- backbone\n")
    with pytest.raises(InputError, match="mapping"):
        load_spec(tmp_path / "list.yaml")
    with pytest.raises(InputError, match="cannot read"):
        load_spec(tmp_path / "absent.yaml")


def test_several_problems_are_all_listed():
    with pytest.raises(SpecError) as caught:
        spec_from(budget_fraction=2.0, seed="zero")
    assert caught.value.path == "budget_fraction"
    assert "also seed:" in caught.value.message


def test_task_names_checked_against_a_list_or_a_lookup():
    spec = spec_from(tasks=["sst2", "tweet"])
    with pytest.raises(SpecError) as caught:
        spec.check_tasks(["sst2", "tweets"])
    assert caught.value.path == "tasks[1]" and "tweets" in caught.value.message

    def lookup(name):
        if name != "sst2":
            raise InputError("task", f"unknown task {name!r}; known: sst2")

    with pytest.raises(SpecError) as caught:
        spec.check_tasks(lookup)
    assert caught.value.path == "tasks[1]" and "known: sst2" in caught.value.message
    spec_from(tasks=["file:text=review,label=stars"]).check_tasks(lambda name: None)


def test_data_dir_given_later(tmp_path):
    spec = spec_from(data={"source": "local"})
    with pytest.raises(SpecError) as caught:
        spec.check_ready()
    assert caught.value.path == "data.dir" and "--data-dir" in caught.value.message
    ready = spec.with_data_dir(tmp_path)
    ready.check_ready()
    assert ready.data.dir == str(tmp_path) and spec.data.dir is None
    with pytest.raises(SpecError, match="not a directory"):
        spec.with_data_dir(tmp_path / "absent").check_ready()
    assert spec_from().with_data_dir(tmp_path).data.source == "local"  # a hub job switched to local files
    with pytest.raises(InputError, match="bundled"):
        spec_from(data={"source": "bundled"}).with_data_dir(tmp_path)
    assert spec_from().with_storage("s3://bucket/runs").storage == "s3://bucket/runs"


def test_spec_diff_names_each_changed_field():
    old = spec_from(stages=["grouping", {"component": "strategy.G1", "candidates": ["adapter", "lora"]}])
    assert spec_diff(old, old) == []
    new = spec_from(
        budget_fraction=0.01,
        storage="elsewhere",
        stages=["grouping", {"component": "strategy.G1", "candidates": ["adapter"]}],
    )
    lines = spec_diff(old, new)
    assert "budget_fraction: 0.005 -> 0.01" in lines
    assert 'stages[1].candidates: ["adapter", "lora"] -> ["adapter"]' in lines
    assert any(line.startswith("storage:") for line in lines)
    assert not any(line.startswith("storage") for line in spec_diff(old, new, ignore=("storage",)))
    added = spec_diff(old, spec_from(stages=old.to_dict()["stages"], final={}))
    assert len(added) == 1 and added[0].startswith("final: added")


def test_schema_documents_every_key():
    schema = spec_schema()
    assert set(schema["properties"]) == set(SearchSpec.model_fields)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["backbone", "tasks"]
    assert "strictly between 0 and 1" in schema["properties"]["budget_fraction"]["description"]


def test_paired_racing_is_the_default_and_independent_fixed_n_stays_possible():
    spec = spec_from()
    assert spec.sampling == "paired" and spec.racing.min_blocks == 8 and spec.racing.confidence == 0.95
    assert spec.racing.lookahead == "auto"
    fixed = spec_from(sampling="independent", racing=None)
    assert fixed.sampling == "independent" and fixed.racing is None


def test_tuning_range_is_rates_or_factors_of_each_contenders_untuned_rate():
    absolute = spec_from(final={"tuning": {"learning_rate_min": 1e-4, "learning_rate_max": 1e-2}}).final.tuning
    assert absolute.learning_rate_range(5e-5) == absolute.learning_rate_range(5e-3) == (1e-4, 1e-2)
    # Factors: full fine-tuning (5e-5 untuned) and a design (5e-3) search the same neighbourhood of their own rate.
    relative = spec_from(final={"tuning": {"relative": True, "learning_rate_min": 0.3, "learning_rate_max": 3}}).final.tuning
    assert relative.learning_rate_range(5e-5) == pytest.approx((1.5e-5, 1.5e-4))
    assert relative.learning_rate_range(5e-3) == pytest.approx((1.5e-3, 1.5e-2))
    assert relative.range_text() == "0.3 to 3 times each contender's untuned rate"


def test_a_run_spec_from_before_pairing_keeps_its_protocol(tmp_path):
    from peft_search.search.spec import load_run_spec

    old = Path(__file__).parent / "data" / "runs-v0.1" / "partial" / "spec.yaml"
    spec = load_run_spec(old)
    assert spec.sampling == "independent" and spec.racing is None


def test_a_run_raced_before_kn_plus_plus_races_on_under_kn_and_a_new_job_gets_kn_plus_plus(tmp_path):
    from peft_search.search.spec import load_run_spec

    written = spec_from().to_dict()
    assert written["racing"]["procedure"] == "kn++"  # the default, written out in a new run's spec.yaml
    del written["racing"]["procedure"]  # as a run directory written before issue 38's KN++ has it
    old = tmp_path / "spec.yaml"
    old.write_text(yaml.safe_dump(written))
    assert load_run_spec(old).racing.procedure == "kn"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"racing": {"min_blocks": 1}}, "racing.min_blocks"),
        ({"racing": {"confidence": 2}}, "racing.confidence"),
        ({"racing": {"delta": -0.1}}, "racing.delta"),
        ({"racing": {"on_tie": "random"}}, "racing.on_tie"),
        ({"sampling": "random"}, "sampling"),
        ({"sampling": "independent"}, "racing"),
    ],
)
def test_bad_racing_and_sampling_keys_exit_2_and_create_nothing(tmp_path, capsys, change, field):
    from peft_search.cli import main

    job = tmp_path / "job.yaml"
    base = yaml.safe_load((JOBS / "quickstart.yaml").read_text())
    job.write_text(yaml.safe_dump({**base, **change}))
    for dry_run in ([], ["--dry-run"]):
        assert main(["run", str(job), "--storage", str(tmp_path / "runs"), *dry_run]) == 2
        error = capsys.readouterr().err
        assert f"{job}: {field}:" in error and "Traceback" not in error
    assert not (tmp_path / "runs").exists()
