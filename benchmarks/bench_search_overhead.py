"""Orchestration cost of a search stage on the local Ray, and throughput with 1 vs 2 concurrent trials.

Runs one real stage (MiniLM, bundled tweets, short trials) through `peft-search run` twice, side by
side in one invocation: trials one at a time with 2 CPUs each, then two at a time with 1 CPU each.
Per-trial overhead = (stage wall time - sum of the trials' own wall times) / trials, for the serial
run; a trial's own wall time (from its record) covers loading the backbone, data, training and
evaluation. Throughput = trials per minute of stage wall time.

    .venv/bin/python benchmarks/bench_search_overhead.py [--designs 4] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def job(designs: int, steps: int, cpus: float, concurrent: int) -> dict:
    return {
        "name": f"overhead-c{concurrent}",
        "backbone": "minilm",
        "tasks": ["tweets"],
        "data": {"source": "bundled"},
        "stages": [{"component": "grouping", "candidates": ["uniform", "spindle"]}],
        "designs_per_choice": designs,
        "fidelity": {"max_steps": steps, "max_train_examples": 256, "max_eval_examples": 128},
        "hyperparameters": {"batch_size": 16, "max_length": 64},
        "resources": {"cpus": cpus},
        "max_concurrent_trials": concurrent,
        "retries": 0,
    }


def run_stage(spec: dict, workdir: Path) -> dict:
    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    storage = workdir / spec["name"]
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "peft_search.cli", "run", str(path), "--storage", str(storage)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    command_wall = time.monotonic() - started
    (run,) = storage.iterdir()
    state = json.loads((run / "state.json").read_text())
    records = [json.loads(p.read_text()) for p in run.glob("stages/0/trials/*.json")]
    stage_wall = state["stages"][0]["wall_time_s"]
    trial_walls = [r["wall_time_s"] for r in records]
    return {
        "trials": len(records),
        "command_wall_s": round(command_wall, 1),
        "stage_wall_s": stage_wall,
        "sum_trial_wall_s": round(sum(trial_walls), 1),
        "mean_trial_wall_s": round(sum(trial_walls) / len(trial_walls), 2),
        "trials_per_min": round(len(records) / stage_wall * 60, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", type=int, default=4, help="designs per choice (2 choices)")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(temp)
        serial = run_stage(job(args.designs, args.steps, cpus=2, concurrent=1), workdir)
        parallel = run_stage(job(args.designs, args.steps, cpus=1, concurrent=2), workdir)
    overhead = (serial["stage_wall_s"] - serial["sum_trial_wall_s"]) / serial["trials"]
    print(json.dumps({"serial": serial, "two_concurrent": parallel}, indent=2))
    print(f"\nper-trial orchestration overhead (serial): {overhead:.2f} s "
          f"({overhead / serial['mean_trial_wall_s']:.0%} of a trial's own {serial['mean_trial_wall_s']:.1f} s)")
    print(f"throughput: {serial['trials_per_min']:.2f} trials/min one at a time (2 CPUs each), "
          f"{parallel['trials_per_min']:.2f} two at a time (1 CPU each): "
          f"{parallel['trials_per_min'] / serial['trials_per_min']:.2f}x")


if __name__ == "__main__":
    main()
