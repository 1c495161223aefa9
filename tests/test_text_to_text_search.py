"""The text-to-text objective everywhere a trial goes: a real small search from Python (tiny random-init
T5, a stand-in, on BoolQ and COPA in SuperGLUE's JSONL layout: a raced stage, a final evaluation
against LoRA with tuned rates, status, report, export, load_peft and generation), `--dry-run` (memory
without a task head, the LM head's logits counted) and `simulate` of the eight-task SuperGLUE job,
and bad specs refused naming the field. One local Ray serves the module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import peft_search
from conftest import needs_minilm
from peft_search.stand_ins import tiny_language_model, write_superglue

pytestmark = needs_minilm
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_ray_for_the_module():
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand-ins")
    return {"t5": tiny_language_model(root / "t5", "t5"), "superglue": str(write_superglue(root / "sg"))}


def job(stand_ins, **changes):
    spec = {
        "name": "t2t", "backbone": stand_ins["t5"], "objective": "text_to_text", "tasks": ["boolq", "copa"],
        "data": {"source": "local", "dir": stand_ins["superglue"]}, "budget_fraction": 0.01, "num_groups": 4,
        "stages": [{"component": "strategy.G1", "candidates": ["lora", "prefix"]}], "designs_per_choice": 2,
        "racing": {"min_blocks": 2}, "fidelity": {"max_steps": 4}, "hyperparameters": {"batch_size": 4, "max_length": 64},
        "seed": 0, "seeds": [0], "resources": {"cpus": 1, "gpus": 0}, "max_concurrent_trials": 2, "retries": 0,
        "final": {"contenders": ["discovered", "lora"], "tasks": ["copa"], "seeds": [0], "fidelity": {"max_steps": 4},
                  "tuning": {"trials": 1, "relative": True, "learning_rate_min": 0.5, "learning_rate_max": 2.0}},
    }
    return {**spec, **changes}


@pytest.fixture(scope="module")
def run(stand_ins, tmp_path_factory):
    return peft_search.run(job(stand_ins), storage=str(tmp_path_factory.mktemp("runs")))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_text_to_text_search_runs_decides_evaluates_and_exports(run, tmp_path):
    import pyarrow.parquet as pq

    assert run.status == "finished" and run.stages[0].decided and run.stages[0].kept in ("lora", "prefix")
    results = pq.read_table(Path(run.run_dir) / "results.parquet").to_pylist()
    assert len(results) == 8 and {r["head"] for r in results} == {"lm"} and {r["head_params"] for r in results} == {0}
    records = [json.loads(p.read_text()) for p in (Path(run.run_dir) / "stages" / "0" / "trials").glob("*.json")]
    assert len(records) == 8 and all(json.loads(r["config_json"])["objective"] == "text_to_text" for r in records)
    assert {json.loads(r["metrics_json"]).keys() >= {"accuracy", "generation_exact_match"} for r in results} == {True}
    final = pq.read_table(run.final_path).to_pylist()
    assert {(r["contender"], r["task"]) for r in final if r["phase"] == "final"} == {("discovered", "copa"), ("lora", "copa")}
    report = (Path(run.run_dir) / "report" / "index.html").read_text()
    assert "objective text_to_text" in report and "Final evaluation" in report

    out = peft_search.export(run, tmp_path / "method")
    exported = json.loads((Path(out) / "export.json").read_text())
    assert exported["tasks"]["copa"]["objective"] == "text_to_text" and exported["tasks"]["copa"]["num_labels"] is None
    assert 'objective="text_to_text"' in (Path(out) / "README.md").read_text()
    from peft_search.search.final.export import evaluate_export

    assert evaluate_export(out, "copa")["score"] == exported["tasks"]["copa"]["score"]
    model = peft_search.load_backbone(exported["backbone"], objective="text_to_text")
    peft_search.load_peft(model, Path(out) / "copa")
    answer = model.eval().generate(input_ids=torch.tensor([[101, 2000, 102]]), max_new_tokens=3)
    assert answer.shape[0] == 1


def test_dry_run_counts_no_task_head_and_the_lm_logits(stand_ins, tmp_path, run_cli):
    path = tmp_path / "job.yaml"
    import yaml

    path.write_text(yaml.safe_dump(job(stand_ins)))
    text_out = run_cli("run", str(path), "--storage", str(tmp_path / "runs"), "--dry-run")
    assert text_out.returncode == 0, text_out.stderr
    path.write_text(yaml.safe_dump(job(stand_ins, objective="classification", tasks=["rte"], final=None)))
    classifier_out = run_cli("run", str(path), "--storage", str(tmp_path / "runs"), "--dry-run")
    assert classifier_out.returncode == 0, classifier_out.stderr
    assert not (tmp_path / "runs").exists()

    def memory(out):
        line = next(line for line in out.stdout.splitlines() if "GiB per trial" in line)
        return float(line.split("activations ")[1].split()[0])

    # The LM head's log-softmax over a 30,522-word vocabulary: 4 bytes x 4 examples x 64 positions each.
    assert memory(text_out) - memory(classifier_out) == pytest.approx(4 * 4 * 64 * 30522 / 2**30, abs=0.006)


@pytest.mark.parametrize("changes, field, message", [
    ({"objective": "classification"}, "tasks[0]", "trains with text_to_text only"),
    ({"objective": "generate"}, "objective", "text_to_text"),
    ({"backbone": "minilm"}, "objective", "needs a backbone with a language-modelling head"),
])
def test_bad_text_to_text_specs_are_refused_naming_the_field(stand_ins, tmp_path, run_cli, changes, field, message):
    import yaml

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job(stand_ins, **changes)))
    out = run_cli("run", str(path), "--storage", str(tmp_path / "runs"), "--dry-run")
    assert out.returncode == 2 and f"{field}: " in out.stderr and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()


def test_the_superglue_job_plans_and_simulates(run_cli):
    out = run_cli("run", str(ROOT / "jobs" / "superglue-t5-base.yaml"), "--dry-run", "--address", "auto")
    assert out.returncode == 0, out.stderr
    assert "tasks[7] record: read from the Hub (aps/super_glue)" in out.stdout
    from peft_search.search.simulate import simulate_job

    simulation, _ = simulate_job(str(ROOT / "jobs" / "superglue-t5-base.yaml"), gpus=64,
                                 backbone=str(ROOT / "benchmarks" / "data" / "backbones" / "t5-base"))
    assert simulation.total("trials") > 0 and len(simulation.stages) == 7
