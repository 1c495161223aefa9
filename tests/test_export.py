"""Export of the discovered design: files, model card, and a reload onto a fresh backbone that gives
the exported dev score exactly (CPU), from kept weights and from weights trained by export itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from peft_search.cli import main
from peft_search.search.final.export import evaluate_export, export_run
from peft_search.space import Design

from tiny_search_run import needs_minilm_and_tweets, tiny_run

pytestmark = [needs_minilm_and_tweets, pytest.mark.slow]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.getbasetemp())


def test_export_then_load_reproduces_the_dev_score_exactly(run_dir, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    assert f"exported to {out}" in capsys.readouterr().out
    state = json.loads((run_dir / "state.json").read_text())
    design = Design.from_json((out / "design.json").read_text())
    assert design.to_dict() == state["discovered"]["design"]
    summary = json.loads((out / "export.json").read_text())
    entry = summary["tasks"]["tweets"]
    assert entry["weights_from"] == "the final evaluation"
    # The exported score is the final evaluation's dev score of the kept run (seed final.seeds[0]).
    kept = [json.loads(p.read_text()) for p in (run_dir / "final" / "runs").glob("*.json")]
    kept = next(r for r in kept if r["contender"] == "discovered" and r["weights"])
    assert entry["score"] == kept["score"] and entry["learning_rate"] == kept["learning_rate"]
    tensors = load_file(str(out / "tweets" / "peft.safetensors"))
    assert sum(t.numel() for t in tensors.values()) == entry["realised_params"] + entry["head_params"]
    card = (out / "README.md").read_text()
    assert design.design_id in card and "load_peft(model, \"tweets\")" in card and f"{entry['score']:.4f}" in card

    again = evaluate_export(out, "tweets")  # a fresh backbone, the exported files only
    assert again["score"] == entry["score"]
    assert again["accuracy"] == entry["metrics"]["accuracy"]


def test_export_trains_the_design_when_no_weights_were_kept(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report", "tune", "weights"))
    out = export_run(copy, tmp_path / "export", say=lambda line: None)
    entry = json.loads((out / "export.json").read_text())["tasks"]["tweets"]
    assert entry["weights_from"] == "trained by export"
    tuned = json.loads((copy / "final" / "tuning" / "tweets" / "discovered" / "best.json").read_text())
    assert entry["learning_rate"] == tuned["learning_rate"]
    assert evaluate_export(out, "tweets")["score"] == entry["score"]


def test_export_refuses_bad_input_with_exit_status_2(run_dir, tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "is not a peft-search run directory" in capsys.readouterr().err
    from peft_search.search.controller import Controller
    from peft_search.search.spec import load_spec

    undecided = tmp_path / "undecided"
    Controller.create(load_spec(run_dir / "spec.yaml"), undecided)
    assert main(["export", str(undecided), "--out", str(tmp_path / "y")]) == 2
    assert "no discovered design to export" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert main(["export", str(run_dir), "--out", str(run_dir / "inside")]) == 2
    assert "outside the run" in capsys.readouterr().err
