"""The joint search (`joint:` in the spec), as a user runs it: every component at once through Ray's
`OptunaSearch` in one Tune experiment on the real local Ray, MiniLM trials on the bundled tweets
task (tiny fidelity); decided, reported and resumed like a stage. Bad joint keys exit 2 in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import needs_minilm
from drivers import cli, kill_9_when, write_job
from peft_search.cli import main

JOINT = {
    "name": "joint",
    "stages": [
        {"component": "grouping", "candidates": ["uniform", "spindle", "bottleneck"]},
        {"component": "strategy.G1", "candidates": ["adapter", "lora"]},
    ],
    "joint": {"trials": 3, "sampler": "tpe"},
}


def write_joint_job(directory: Path, **changes) -> Path:
    return write_job(directory, "joint.yaml", **{**JOINT, **changes})


@needs_minilm
@pytest.mark.timeout(900)
def test_a_joint_search_trains_whole_designs_survives_kill_9_and_decides(tmp_path):
    storage = tmp_path / "runs"
    job = write_joint_job(tmp_path, joint={"trials": 4, "sampler": "tpe"})
    kill_9_when(["run", str(job), "--storage", str(storage)], lambda: len(list(storage.glob("*/stages/0/trials/*.json"))) >= 2)
    (run,) = storage.iterdir()
    before = {p.name: p.read_text() for p in run.glob("stages/0/trials/*.json")}
    assert 2 <= len(before) < 4

    # The designs recorded are given back to Optuna as evaluated points, not trained again.
    result = cli("resume", str(run))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = {p.name: p.read_text() for p in run.glob("stages/0/trials/*.json")}
    assert all(after[name] == text for name, text in before.items()), "a finished design was trained again"
    state = json.loads((run / "state.json").read_text())
    (stage,) = state["stages"]
    assert state["status"] == "finished" and stage["component"] == "joint" and stage["status"] == "undecided"
    records = [json.loads(text) for text in after.values()]
    assert len(records) == len({r["design_id"] for r in records}) == 4  # four distinct designs, one task, one seed
    for record in records:
        choices = record["joint_choices"]
        assert choices["grouping"] in ("uniform", "spindle", "bottleneck") and choices["strategy.G1"] in ("adapter", "lora")
        assert record["grouping"] == choices["grouping"] and record["strategies"].startswith(f"G1:{choices['strategy.G1']} ")
        assert record["learning_rate"] == 5e-3 and json.loads(record["learning_rates_json"])["head"] == 5e-3
    best = max((r for r in records if r["status"] == "finished"), key=lambda r: (r["score"], r["design_id"]))
    assert state["discovered"]["design_id"] == best["design_id"]
    status = cli("status", str(run))
    assert "best of 4 designs (tpe)" in status.stdout and "P(best) not estimated" in status.stdout, status.stdout
    assert len(pq.read_table(run / "results.parquet")) == 4
    assert (run / "report" / "index.html").is_file()


def test_joint_dry_run_estimates_one_stage(tmp_path, capsys):
    assert main(["run", str(write_joint_job(tmp_path)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "joint" in out and "stage 0 planned" not in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "joint, field",
    [
        ({"trials": 0}, "joint.trials"),
        ({"trials": 3, "sampler": "grid"}, "joint.sampler"),
        ({"trails": 3}, "joint"),
        ("tpe", "joint"),
    ],
)
def test_bad_joint_keys_exit_2_naming_the_field_and_create_nothing(tmp_path, capsys, joint, field):
    job = write_joint_job(tmp_path, joint=joint, storage=str(tmp_path / "runs"))
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert f"{field}" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@needs_minilm
def test_every_suggestion_of_the_whole_space_realises_a_design_or_is_infeasible(tmp_path):
    """All seven components at once: a strategy suggested for a group the suggested tunable_groups
    leave out does not change the design; no suggestion raises."""
    import random

    from peft_search.peft import load_backbone, profile_backbone
    from peft_search.search.spec import SearchSpec
    from peft_search.search.stage.joint import JointSearcher, joint_candidates
    from peft_search.search.storage.paths import StoragePath

    spec = SearchSpec.from_dict({"backbone": "minilm", "tasks": ["tweets"], "data": {"source": "bundled"},
                                 "joint": {"trials": 5}})
    searcher = JointSearcher(StoragePath.parse(tmp_path), spec, profile_backbone(load_backbone("minilm", meta=True)))
    candidates = joint_candidates(spec)
    assert list(candidates) == ["grouping", "allocation", "tunable_groups", "strategy.G1", "strategy.G2",
                                "strategy.G3", "strategy.G4"]
    rng = random.Random(0)
    realised = 0
    for _ in range(100):
        choices = {component: rng.choice(values) for component, values in candidates.items()}
        design = searcher.design(choices)
        if design is None:
            continue
        realised += 1
        tuned = set(design.tunable_groups)
        assert design.grouping == choices["grouping"] and tuned == set(searcher.spec.initial_space().parse_choice(
            "tunable_groups", choices["tunable_groups"]))
        for group in range(1, 5):
            strategies = set(design.strategies[group - 1])
            assert strategies == (set(choices[f"strategy.G{group}"].split("+")) if group in tuned else set())
    assert realised >= 80
