"""Packed trials on Ray (issue 38): a one-stage search of rehearsed trials (each row holds a logical GPU
for its modelled seconds and reports a replayed score: search/simulate.py `rehearse`) on a local
cluster of two nodes with logical GPUs, one row per Tune trial (`rows_per_trial: 1`, the dispatch
before packing) against the default (`auto`: short rows packed back to back, docs/design.md "Packed
trials"), run alternately so that both see the same machine.

    .venv/bin/python benchmarks/bench_packed_trials.py [--lengths short long] [--repeats 2] [--gpus 16] [--json OUT]

`short`: 108 rows of 0.8 to 1.8 s (the driver's starts set the pace); `long`: 36 rows of 12 to 27 s
(the slots set it: nothing should change). Without racing the stage runs every row, so both settings
train the same rows and keep the same choice. Prints per run: the stage's wall-clock, GPU use (the
rows' own seconds over the GPUs' time), rows recorded, Tune trials started, the kept choice; and the
simulator's figures for the same job at the start costs the run timed itself (on reused and on new
actors: `simulate --start-from`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from peft_search.peft import load_backbone, profile_backbone  # noqa: E402
from peft_search.search.simulate import TrialModel, measured_trial_model, rehearse, simulate_search  # noqa: E402
from peft_search.search.spec import SearchSpec  # noqa: E402
from peft_search.search.storage.paths import StoragePath  # noqa: E402

from bench_time_left import JOB, LENGTHS, logical_gpu_cluster  # noqa: E402  the same stage and trial lengths

SETTINGS = {"one row a trial": 1, "packed (auto)": "auto"}


def job(length: str, rows_per_trial, storage: str) -> SearchSpec:
    _, designs = LENGTHS[length]
    return SearchSpec.from_dict({**JOB, "name": "packed", "designs_per_choice": designs, "rows_per_trial": rows_per_trial,
                                 "storage": storage})


def tune_trials(run_dir: str) -> int:
    """Tune trials the stage started: one directory each under its experiment (stages/0/tune*)."""
    return sum(1 for experiment in StoragePath.parse(run_dir).glob("stages/0/tune*")
               for path in Path(str(experiment)).iterdir() if path.is_dir())


def measure(length: str, setting: str, gpus: int, address: str, storage: str) -> dict:
    step_time_s, _ = LENGTHS[length]
    spec = job(length, SETTINGS[setting], storage)
    result = rehearse(spec, gpus, TrialModel(step_time_s=step_time_s), address=address)
    model = measured_trial_model(result.run_dir, step_time_s)  # the start costs the run timed, new and reused actors apart
    simulated = simulate_search(spec, profile_backbone(load_backbone("minilm", meta=True)), gpus, model).stages[0]
    return {"length": length, "setting": setting, "wall_s": result.wall_s, "gpu_use": result.gpu_use,
            "rows": result.trials, "tune_trials": tune_trials(result.run_dir), "kept": result.kept[0],
            "start_cost_s": model.start_s, "fresh_start_s": model.fresh_start_s,
            "simulated_wall_s": simulated.wall_s, "simulated_gpu_use": simulated.gpu_use,
            "simulated_tune_trials": simulated.tune_trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", choices=sorted(LENGTHS), default=["short", "long"])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting per length, alternated")
    parser.add_argument("--gpus", type=int, default=16, help="logical GPUs, over two nodes")
    parser.add_argument("--json", help="write every run's figures here")
    args = parser.parse_args()
    runs = []
    with logical_gpu_cluster(args.gpus) as cluster:
        with tempfile.TemporaryDirectory() as storage:
            for length in args.lengths:
                for _ in range(args.repeats):
                    for setting in SETTINGS:
                        run = measure(length, setting, args.gpus, cluster.address, storage)
                        runs.append(run)
                        print(f"{length}, {setting}: {run['wall_s']:.1f} s, GPU use {run['gpu_use']:.1%}, {run['rows']} rows in "
                              f"{run['tune_trials']} Tune trials, kept {run['kept']}, start cost {run['start_cost_s']:.2f} s "
                              f"({run['fresh_start_s'] or float('nan'):.2f} s on a new actor); "
                              f"simulated at it: {run['simulated_wall_s']:.1f} s, {run['simulated_gpu_use']:.1%}, "
                              f"{run['simulated_tune_trials']} trials", flush=True)
    summary = {}
    for length in args.lengths:
        walls = {setting: [r["wall_s"] for r in runs if r["length"] == length and r["setting"] == setting] for setting in SETTINGS}
        one, packed = (statistics.mean(walls[s]) for s in SETTINGS)
        summary[length] = {"wall_ratio_packed_over_one": packed / one,
                           "kept": sorted({r["kept"] for r in runs if r["length"] == length})}
        print(f"{length}: packed / one row a trial, wall-clock {packed / one:.2f}x (means of {args.repeats})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpus": args.gpus, "runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
