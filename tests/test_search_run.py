"""The search service end to end, as a user runs it: `peft-search run / resume / status` on the
real local Ray, training real MiniLM trials on the bundled tweets task (tiny fidelity)."""

import json
import re
from dataclasses import replace
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import needs_minilm
from drivers import cli, write_job
from report_page import read_page
from tiny_search_run import needs_minilm_and_tweets, tiny_run, tiny_run_output

pytestmark = [needs_minilm, pytest.mark.timeout(900)]

def only_run(storage: Path) -> Path:
    (run,) = [p for p in storage.iterdir() if p.is_dir()]
    return run


def planned_ids(run: Path) -> set[str]:
    ids = set()
    for plan in sorted(run.glob("stages/*/plan.parquet")):
        ids |= set(pq.read_table(plan).column("trial_id").to_pylist())
    return ids


@needs_minilm_and_tweets
def test_run_decides_every_stage_and_status_reports_it(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    run = tiny_run(base)  # the session's shared run: two stages of two choices, 2 blocks each
    stdout, dashboard = tiny_run_output(base)
    assert dashboard["listening"] == ["127.0.0.1"], f"the dashboard listens on {dashboard['listening']}"
    assert dashboard["answer"] in (200, 401)
    state = json.loads((run / "state.json").read_text())
    outcomes = [s["status"] for s in state["stages"]]
    assert set(outcomes) <= {"selected", "tie", "undecided"}  # docs/design.md, "Outcomes"
    assert f"stage 1/2 (grouping) {outcomes[0]}: " in stdout
    assert f"stage 2/2 (strategy.G1) {outcomes[1]}: " in stdout
    assert "decided" not in stdout.replace("undecided", "")  # never "decided" beside "undecided"
    # The progress line gives the time left once a trial has a duration; "at most": the race may stop earlier.
    assert re.search(r"trials done.*, at most \d+(\.\d)? (s|min) left", stdout), stdout
    # ... and, before the last stage, the search's (this stage's rows and every block of the later ones). Lines come every
    # 2 s: a first stage whose 4 trials all end between two of them (under load) shows none with a
    # time left, so every one it shows is checked (tests/test_time_left.py holds the figures).
    first_stage_left = [line for line in stdout.splitlines() if line.startswith("stage 1/2 (grouping): ") and " left" in line]
    assert all(re.search(r"left \(the search: at most \d+(\.\d)? (s|min)\)", line) for line in first_stage_left), stdout
    assert "discovered design" in stdout

    assert state["status"] == "finished"
    grouping = state["stages"][0]["winner"]
    assert grouping in ("uniform", "spindle")
    assert state["space"]["grouping"] == grouping
    assert state["discovered"]["design"]["grouping"] == grouping  # later stages sample from the decided space
    assert state["discovered"]["design"]["strategies"][0] == [state["stages"][1]["winner"]]

    results = pq.read_table(run / "results.parquet").to_pylist()
    assert {r["trial_id"] for r in results} == planned_ids(run)
    assert len(results) == len(planned_ids(run)) == 8
    assert all(r["status"] == "finished" and 0 <= r["score"] <= 1 for r in results)
    assert all(abs(r["realised_params"] - r["target_params"]) <= 0.02 * r["target_params"] for r in results)
    assert (run / "spec.yaml").is_file() and (run / "stages/0/tune").is_dir()
    # `learning_rate: null` in the spec: each record says what the trial actually trained at (the
    # designs' default base rate) and each strategy's rate as the optimiser had it.
    for r in results:
        assert r["learning_rate"] == 5e-3
        rates = json.loads(r["learning_rates_json"])
        assert rates["head"] == 5e-3 and set(rates) <= {"adapter", "prefix", "bitfit", "lora", "head"}
        assert rates.get("prefix", 3e-2) == pytest.approx(3e-2) and rates.get("bitfit", 1e-2) == pytest.approx(1e-2)

    status = cli("status", str(run), "--json")
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["trials_done"] == 8 and summary["trials_failed"] == 0
    assert summary["stages"][0]["decision"]["winner"] == grouping
    text = cli("status", str(run)).stdout
    assert f"{grouping}: mean" in text and "P(best)" in text and "over 2 blocks" in text  # paired by default
    assert all(r["block"] in (0, 1) for r in results)


def test_failed_and_diverged_trials_are_recorded_and_the_stage_still_decides(tmp_path):
    from peft_search.search.controller import Controller, prepare_spec
    from peft_search.search.stage.plan import PlanRow, plan_path, plan_stage, write_plan
    from peft_search.peft import load_backbone, profile_backbone
    from peft_search.reporting import write_report

    job = write_job(tmp_path, stages=[{"component": "grouping", "candidates": ["uniform", "spindle"]}])
    spec = prepare_spec(job, storage=str(tmp_path / "runs"))
    controller = Controller.create(spec, tmp_path / "runs" / "faulty")
    plan = plan_stage(spec, 0, spec.initial_space(), profile_backbone(load_backbone("minilm", meta=True)))
    rows = list(plan.rows)
    # Real faults, planted in the plan the controller will run: one trial raises (its model does not
    # exist), one diverges (it trains on regression targets near float32's largest value, whose
    # squared error overflows on the first step, as a runaway run's loss does).
    overflow = tmp_path / "overflow"
    overflow.mkdir()
    for split in ("train", "validation"):
        lines = ["sentence,score"] + [f"sentence number {i},{3e38 if i % 2 else -3e38}" for i in range(16)]
        (overflow / f"{split}.csv").write_text("\n".join(lines) + "\n")
    rows[0] = PlanRow(**{**rows[0].__dict__, "config": replace(rows[0].config, model=str(tmp_path / "no-such-model"))})
    rows[1] = PlanRow(**{**rows[1].__dict__, "config": replace(
        rows[1].config, task="file:text=sentence,label=score,regression", data_dir=str(overflow), max_train_examples=16,
        max_eval_examples=16)})
    write_plan(plan.__class__(**{**plan.__dict__, "rows": tuple(rows)}), plan_path(controller.run_dir, 0))

    state = controller.run()
    records = {r["trial_id"]: r for r in pq.read_table(controller.run_dir / "results.parquet").to_pylist()}
    assert records[rows[0].trial_id]["status"] == "failed"
    assert "no-such-model" in records[rows[0].trial_id]["error"]
    assert records[rows[1].trial_id]["status"] == "diverged"
    assert sum(r["status"] == "finished" for r in records.values()) == 2
    stage = state["stages"][0]
    assert stage["status"] in ("selected", "tie", "undecided") and stage["failed"] == 2
    status = cli("status", str(controller.run_dir)).stdout
    assert "2 failed" in status
    import ray

    ray.shutdown()
    # The report renders, shows each failed trial as failed with its error, and counts them per choice.
    page = read_page(write_report(controller.run_dir))
    shown = {row["data-trial"]: row for row in page.trials}
    for planted in rows[:2]:
        assert shown[planted.trial_id]["data-status"] == records[planted.trial_id]["status"]
        assert "failed" in shown[planted.trial_id]["class"]  # diverged is shown as failed too: no score
    assert "no-such-model" in " ".join(page.text)
    for choice in {row.choice for row in rows}:
        failed_here = sum(1 for row in rows[:2] if row.choice == choice)
        assert float(page.decisions[0][choice]["n_failed_trials"]) == failed_here


def test_trials_with_two_workers_run_a_torch_trainer_inside_their_tune_trials(tmp_path):
    job = write_job(
        tmp_path,
        stages=[{"component": "grouping", "candidates": ["uniform", "spindle"]}],
        designs_per_choice=1,
        resources={"cpus": 0.5, "workers": 2},
    )
    storage = tmp_path / "runs"
    result = cli("run", str(job), "--storage", str(storage))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = only_run(storage)
    results = pq.read_table(run / "results.parquet").to_pylist()
    assert len(results) == 2 and all(r["status"] == "finished" for r in results)
    for record in results:
        metrics = json.loads(record["metrics_json"])
        assert {"train_loss", "eval_loss", "accuracy"} <= set(metrics)
    assert json.loads((run / "state.json").read_text())["stages"][0]["status"] in ("selected", "tie", "undecided")


def test_a_stage_where_every_trial_fails_ends_the_run_clearly(tmp_path):
    import ray

    from peft_search.peft import load_backbone, profile_backbone
    from peft_search.search.controller import Controller, SearchFailed, prepare_spec
    from peft_search.search.stage.plan import PlanRow, plan_path, plan_stage, write_plan

    job = write_job(tmp_path, stages=[{"component": "grouping", "candidates": ["uniform", "spindle"]}], designs_per_choice=1)
    spec = prepare_spec(job, storage=str(tmp_path / "runs"))
    controller = Controller.create(spec, tmp_path / "runs" / "doomed")
    plan = plan_stage(spec, 0, spec.initial_space(), profile_backbone(load_backbone("minilm", meta=True)))
    missing = str(tmp_path / "no-such-model")
    rows = tuple(PlanRow(**{**row.__dict__, "config": replace(row.config, model=missing)}) for row in plan.rows)
    write_plan(plan.__class__(**{**plan.__dict__, "rows": rows}), plan_path(controller.run_dir, 0))
    try:
        with pytest.raises(SearchFailed, match="no design finished.*no-such-model"):
            controller.run()
    finally:
        ray.shutdown()
    assert json.loads((controller.run_dir / "state.json").read_text())["status"] == "failed"
    assert len(pq.read_table(plan_path(controller.run_dir, 0)).to_pylist()) == len(list(controller.run_dir.glob("stages/0/trials/*.json")))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "colour"),
        ({"budget_fraction": 1.5}, "budget_fraction"),
        ({"designs_per_choice": "ten"}, "designs_per_choice"),
        ({"stages": [{"component": "grouping", "candidates": []}]}, "stages[0].candidates"),
        ({"stages": [{"component": "grouping", "candidates": ["zigzag"]}]}, "stages[0].candidates"),
        ({"tasks": ["no-such-task"]}, "tasks[0]"),
        ({"backbone": "/no/such/model"}, "backbone: cannot load a config from '/no/such/model': no such directory"),
    ],
)
def test_invalid_spec_exits_2_naming_the_field_and_creates_nothing(tmp_path, change, message, run_cli):
    job = write_job(tmp_path, **change)
    storage = tmp_path / "runs"
    result = run_cli("run", str(job), "--storage", str(storage))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not storage.exists()


def test_unwritable_storage_exits_2(tmp_path):
    job = write_job(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        result = cli("run", str(job), "--storage", str(locked / "runs"), timeout=120)
    finally:
        locked.chmod(0o700)
    assert result.returncode == 2 and "storage" in result.stderr
    assert not (locked / "runs").exists()


def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path, run_cli):
    job = write_job(tmp_path)
    storage = tmp_path / "runs"
    result = run_cli("run", str(job), "--storage", str(storage), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "grouping" in result.stdout and "strategy.G1" in result.stdout and "total" in result.stdout
    assert not storage.exists()


def test_resume_refuses_a_changed_spec_unless_forced(tmp_path, run_cli):
    from peft_search.search.controller import Controller, prepare_spec

    job = write_job(tmp_path)
    spec = prepare_spec(job, storage=str(tmp_path / "runs"))
    run = tmp_path / "runs" / "r"
    Controller.create(spec, run)
    changed = write_job(tmp_path, budget_fraction=0.01)
    result = run_cli("resume", str(run), "--spec", str(changed))
    assert result.returncode == 2
    assert "budget_fraction: 0.005 -> 0.01" in result.stderr
    not_a_run = run_cli("resume", str(tmp_path))
    assert not_a_run.returncode == 2 and "not a peft-search run directory" in not_a_run.stderr


def test_two_searches_started_in_the_same_second_get_their_own_run_directories(tmp_path):
    """Two users, one storage: each `Controller.create` claims its directory by creating it, so two
    runs of one job created at once never share one (the second gets a `-2` suffix)."""
    import threading

    from peft_search.search.controller import Controller
    from peft_search.search.spec import load_spec

    spec = load_spec(write_job(tmp_path, storage=str(tmp_path / "runs")))
    created, start = [], threading.Barrier(4)

    def create():
        start.wait()
        created.append(Controller.create(spec, job_path="job.yaml").run_dir)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({str(run_dir) for run_dir in created}) == 4
    assert all((run_dir.local / "state.json").is_file() for run_dir in created)
