"""The final evaluation: the trial layer's held-back training slice, and a real small run's fair
comparison (same tuning for every contender, never on dev; tuned rate = best held-back score)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from peft_search.cli import main
from peft_search.errors import InputError
from peft_search.reporting import write_report
from peft_search.reporting.tables import comparison, format_mean_std, paired_differences
from peft_search.search.spec import load_spec
from peft_search.search.status import run_status
from peft_search.train.data import hold_out
from peft_search.train.prepare import load_data, load_tokenizer
from peft_search.train.trial import TrialConfig

from drivers import cli
from tiny_search_run import needs_minilm_and_tweets, tiny_run

pytestmark = needs_minilm_and_tweets


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.getbasetemp())


def _rows(split) -> list[tuple]:
    return [(tuple(split.example(i)["input_ids"].tolist()), int(split.labels[i])) for i in range(len(split))]


def test_holdout_is_a_stratified_fixed_slice_of_train_and_never_dev(tmp_path):
    config = TrialConfig(model="minilm", task="tweets", preset="lora", max_train_examples=200, max_eval_examples=50,
                         max_length=32, cache_dir=str(tmp_path))
    tokenizer = load_tokenizer("minilm")
    plain = load_data(config, tokenizer)
    held = load_data(TrialConfig.from_dict({**config.to_dict(), "holdout_fraction": 0.25}), tokenizer)
    assert len(held.validation) == 50 and len(held.train) == 150
    train, part, rest = _rows(plain.train), _rows(held.validation), _rows(held.train)
    # The two parts are exactly the training examples, each once: the dev split plays no part.
    assert sorted(part + rest) == sorted(train)
    assert sorted(part) != sorted(_rows(plain.validation))
    # Stratified: each class's share of the slice is its share of train, to rounding.
    for label in np.unique(plain.train.labels):
        share = float(np.mean(plain.train.labels == label))
        assert abs(float(np.mean(held.validation.labels == label)) - share) <= 1 / 50 + 1e-9
    # Fixed: the same slice whatever the training seed of the trial, given the same training examples.
    again = hold_out(plain, 0.25)
    assert _rows(again.validation) == part
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(InputError, match="holdout_fraction"):
            TrialConfig.from_dict({**config.to_dict(), "holdout_fraction": bad})


@pytest.mark.slow
def test_final_comparison_is_fair_and_matches_final_parquet(run_dir):
    spec = load_spec(run_dir / "spec.yaml")
    rows = pq.read_table(run_dir / "final.parquet").to_pylist()
    tune = [r for r in rows if r["phase"] == "tune"]
    final = [r for r in rows if r["phase"] == "final"]
    contenders = ["discovered", "bitfit", "all-lora"]
    assert sorted({r["contender"] for r in rows}) == sorted(contenders)
    assert {json.loads(r["design_json"])["strategies"][0][0] for r in rows if r["contender"] == "all-lora"} == {"lora"}
    # Same number of tuning trials per contender and task, over the same learning rates (one sampler
    # seed per task), trained on the same seed, scored on the held-back slice (holdout_fraction set).
    rates = {}
    for contender in contenders:
        mine = [r for r in tune if r["contender"] == contender]
        assert len(mine) == spec.final.tuning.trials
        assert all(json.loads(r["config_json"])["holdout_fraction"] == spec.final.tuning.holdout_fraction for r in mine)
        assert all(r["seed"] == spec.final.seeds[0] for r in mine)
        rates[contender] = sorted(r["learning_rate"] for r in mine)
        # Relative tuning: factors 0.5 to 2 of the designs' untuned rate (5e-3, train/presets.py).
        assert all(0.5 * 5e-3 <= lr <= 2.0 * 5e-3 for lr in rates[contender])
        # The final runs use the rate with the best held-back score (ties: the lower rate), on dev.
        best = max((r for r in mine if r["status"] == "finished"), key=lambda r: (r["score"], -r["learning_rate"]))
        runs = [r for r in final if r["contender"] == contender]
        assert [r["seed"] for r in runs] == spec.final.seeds
        for r in runs:
            assert r["learning_rate"] == best["learning_rate"]
            # The optimiser's rates: the tuned base for the head, x each strategy's scale.
            assert json.loads(r["learning_rates_json"])["head"] == pytest.approx(best["learning_rate"])
            assert "holdout_fraction" not in json.loads(r["config_json"]) or json.loads(r["config_json"])["holdout_fraction"] is None
            assert r["status"] == "finished" and 0 <= r["score"] <= 1
    assert rates["discovered"] == rates["bitfit"] == rates["all-lora"]
    # Same budget: the discovered design within 2% of the target; BitFit is the fixed-size exception.
    discovered = next(r for r in final if r["contender"] == "discovered")
    assert abs(discovered["realised_params"] - discovered["target_params"]) <= 0.02 * discovered["target_params"]
    # The comparison table (what the report shows) is the mean and std over seeds of the dev scores.
    table = {row["contender"]: row for row in comparison(rows, spec.tasks)}
    for contender in contenders:
        scores = [r["score"] for r in final if r["contender"] == contender]
        cell = table[contender]["tasks"]["tweets"]
        assert cell["mean"] == statistics.fmean(scores) and table[contender]["average"] == cell["mean"]
        assert cell["std"] == (statistics.stdev(scores) if len(scores) > 1 else 0.0)
        # A run that collapsed to one class is counted in its cell, and the report's cell says so.
        collapsed = sum(r["collapsed"] for r in final if r["contender"] == contender)
        assert all(r["baseline_score"] is not None for r in final if r["contender"] == contender)
        assert cell["collapsed"] == collapsed
        assert format_mean_std(cell).endswith(f"({collapsed} of {len(scores)} collapsed)" if collapsed else f"{cell['std']:.4f}")
    # The paired table: per seed, discovered minus the other contender, on the same seeds.
    paired = {row["contender"]: row for row in paired_differences(rows, spec.tasks)}
    assert sorted(paired) == ["all-lora", "bitfit"]
    mine = {r["seed"]: r["score"] for r in final if r["contender"] == "discovered"}
    theirs = {r["seed"]: r["score"] for r in final if r["contender"] == "bitfit"}
    cell = paired["bitfit"]["tasks"]["tweets"]
    assert cell["pairs"] == len(spec.final.seeds)
    assert cell["mean"] == pytest.approx(statistics.fmean(mine[s] - theirs[s] for s in mine))
    assert paired["bitfit"]["average"]["mean"] == pytest.approx(cell["mean"])
    # The discovered design's weights are kept for export.
    assert (run_dir / discovered["weights"] / "peft.safetensors").is_file()
    html = (run_dir / "report" / "index.html").read_text()
    assert 'data-contender="discovered"' in html and 'data-contender="bitfit"' in html
    assert "Discovered design minus each contender, paired by seed" in html
    assert (run_dir / "report" / "final-comparison.png").is_file()
    assert json.loads((run_dir / "final" / "done.json").read_text())["runs"] == len(final)
    # final.max_concurrent_trials: 2: on 2 or more CPUs, runs overlapped.
    if (os.cpu_count() or 1) >= 2:
        spans = sorted((r["started_at"], r["finished_at"]) for r in rows)
        assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_paired_differences_are_paired_by_seed_with_a_t_interval():
    def row(contender, task, seed, score, status="finished"):
        return {"phase": "final", "contender": contender, "task": task, "seed": seed, "score": score, "status": status}
    rows = [row("discovered", "a", s, x) for s, x in [(0, 0.80), (1, 0.70), (2, 0.90)]]
    rows += [row("lora", "a", s, x) for s, x in [(0, 0.78), (1, 0.67), (2, 0.875)]]  # always a little worse
    rows += [row("discovered", "b", s, x) for s, x in [(0, 0.5), (1, 0.6), (2, 0.7)]]
    rows += [row("lora", "b", 0, 0.4), row("lora", "b", 1, None, "failed"), row("lora", "b", 2, 0.8)]
    rows.append({**row("lora", "a", 0, 0.0), "phase": "tune"})  # tuning runs never count
    [lora] = paired_differences(rows, ["a", "b"])
    a = lora["tasks"]["a"]
    # Differences 0.02, 0.03, 0.025: mean 0.025, sd 0.005, t(0.975, 2) = 4.3027.
    assert a["pairs"] == 3 and a["mean"] == pytest.approx(0.025)
    half = 4.302653 * 0.005 / 3 ** 0.5
    assert (a["low"], a["high"]) == (pytest.approx(0.025 - half, abs=1e-6), pytest.approx(0.025 + half, abs=1e-6))
    assert a["low"] > 0  # consistently better: the paired interval excludes 0 though the seeds vary a lot
    b = lora["tasks"]["b"]
    assert b["pairs"] == 2 and b["mean"] == pytest.approx((0.1 - 0.1) / 2)
    # The average pairs seeds finished on every task by both: seeds 0 and 2.
    assert lora["average"]["pairs"] == 2
    assert lora["average"]["mean"] == pytest.approx(statistics.fmean([(0.02 + 0.1) / 2, (0.025 - 0.1) / 2]))
    assert paired_differences(rows[:3], ["a"]) == []  # nothing to compare with


def test_evaluate_with_a_final_file_records_it_and_the_report_shows_it(run_dir, tmp_path):
    """`--final FILE` on a run whose spec has another final section: what was evaluated is kept in
    final/final.json and the report describes that one. Every run already has a record, so nothing
    trains again."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report", "tune"))
    spec = load_spec(copy / "spec.yaml")
    section = {**spec.final.model_dump(mode="json"), "tuning": {**spec.final.tuning.model_dump(mode="json"), "task": "tweets"}}
    final_file = tmp_path / "final.yaml"
    final_file.write_text(json.dumps(section))
    records = sorted(p.name for p in (copy / "final").rglob("*.json") if p.name not in ("done.json", "final.json"))
    result = cli("evaluate", str(copy), "--final", str(final_file), timeout=300)  # its own process: its Ray ends with it
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Ray dashboard" not in result.stdout  # nothing to train, so no Ray was started
    recorded = json.loads((copy / "final" / "final.json").read_text())
    assert recorded["tuning"]["task"] == "tweets" and recorded["seeds"] == spec.final.seeds
    assert sorted(p.name for p in (copy / "final").rglob("*.json") if p.name not in ("done.json", "final.json")) == records
    html = (copy / "report" / "index.html").read_text()
    assert "trials per contender on tweets (its rate used on every task)" in html


def test_an_unfinished_final_evaluation_shows_its_runs_so_far_in_report_and_status(run_dir, tmp_path):
    """An evaluation stopped half way (hours into a long one): the report and peft-search status show
    what has a record and say it has not finished; the report shows no contender without a seeded run."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report", "tune", "final.parquet", "done.json"))
    for path in (copy / "final" / "runs").glob("*.json"):
        if json.loads(path.read_text())["contender"] == "bitfit":
            path.unlink()  # bitfit was tuned, but none of its seeded runs has finished yet
    recorded = len(list((copy / "final" / "runs").glob("*.json")))
    html = write_report(copy).read_text()
    assert 'data-contender="discovered"' in html and 'data-contender="all-lora"' in html
    assert 'data-contender="bitfit"' not in html
    assert f"Not finished: {recorded} seeded runs recorded so far" in html
    assert "Discovered design minus each contender, paired by seed" in html
    # peft-search status counts the seeded runs against those planned: every contender, task and seed.
    spec = load_spec(copy / "spec.yaml")
    status = run_status(copy)
    assert status["final"]["runs_done"] == recorded and not status["final"]["done"]
    assert status["final"]["runs_planned"] == len(spec.final.contenders) * len(spec.tasks) * len(spec.final.seeds)
    assert status["final"]["tuning_trials"] == len(spec.final.contenders) * spec.final.tuning.trials
    assert f"final evaluation: {recorded} of {status['final']['runs_planned']} seeded runs recorded" in status["text"]


def test_evaluate_refuses_bad_input_with_exit_status_2(run_dir, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is not a peft-search run directory" in capsys.readouterr().err
    from peft_search.search.controller import Controller

    spec = load_spec(run_dir / "spec.yaml")
    undecided = tmp_path / "undecided"
    Controller.create(spec, undecided)
    assert main(["evaluate", str(undecided)]) == 2
    assert "no discovered design" in capsys.readouterr().err
    no_final = tmp_path / "no-final"
    Controller.create(spec.__class__.from_dict({**spec.to_dict(), "final": None}), no_final)
    assert main(["evaluate", str(no_final)]) == 2
    assert "has no final section; give one with --final FILE" in capsys.readouterr().err
    bad = tmp_path / "final.yaml"
    bad.write_text("contenders: [discovered, magic]\n")
    assert main(["evaluate", str(no_final), "--final", str(bad)]) == 2
    assert "final.contenders[1]: unknown contender 'magic'" in capsys.readouterr().err
    for designs, message in [({"joint": str(tmp_path / "missing")}, "final.designs.joint: "),
                             ({"lora": str(bad)}, "final.designs.lora: 'lora' cannot name a contender")]:
        bad_design = tmp_path / "designs.yaml"
        bad_design.write_text(json.dumps({"contenders": ["discovered"], "designs": designs}))
        before = sorted(p.name for p in (run_dir / "final").rglob("*"))
        assert main(["evaluate", str(run_dir), "--final", str(bad_design)]) == 2
        assert message in capsys.readouterr().err
        assert sorted(p.name for p in (run_dir / "final").rglob("*")) == before
    assert not (no_final / "final").exists() and not (no_final / "final.parquet").exists()


def test_evaluate_refuses_final_resources_this_machine_lacks_before_writing(run_dir, tmp_path, run_cli):
    final_file = tmp_path / "final.yaml"
    final_file.write_text("contenders: [bitfit]\nseeds: [0]\nfidelity: {max_steps: 2}\nresources: {cpus: 1000}\n")
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    result = run_cli("evaluate", str(run_dir), "--final", str(final_file))
    assert result.returncode == 2 and "final.resources.cpus: 1000 CPUs per trial, but this machine has" in result.stderr
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before
