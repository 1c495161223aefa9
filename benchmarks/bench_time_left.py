"""Time left against the actual, on Ray (issue 38): a one-stage search of rehearsed trials (each holds a
logical GPU for its modelled seconds: search/simulate.py `rehearse`) on a local multi-node cluster of
logical GPUs, without racing (so the stage runs every row and its end is known), with short trials
(about 1 to 2 s, where the driver's starts set the pace) and long ones (the slots set it).

Every progress line's time left (the measured start cost, running trials holding their slots) is held
against the time the stage actually still took; beside it, from the same records at the same moments,
what the estimate before this change said (the assumed 0.45 s start cost, running trials started again).

    .venv/bin/python benchmarks/bench_time_left.py [--lengths short long] [--gpus 16] [--json OUT]

Prints, per trial length, the estimate over the actual at 10%, 25% and 50% of the stage, and the
widest miss from a tenth of the stage to three quarters. Then the simulator held against each run, as
the rehearsal test does: with the assumed start cost, with the one the run measured itself, and with
the one measured on the *other* length's run (`simulate --start-from`: a cost that must carry over),
each as one cost per start and as the costs on new and on reused actors apart.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft_search.search.progress import listening  # noqa: E402
from peft_search.peft import load_backbone, profile_backbone  # noqa: E402
from peft_search.search.simulate import (TrialModel, measured_start_cost, measured_trial_model, rehearse,  # noqa: E402
                                         simulate_search)
from peft_search.search.spec import SearchSpec  # noqa: E402
from peft_search.search.stage.plan import plan_path, read_plan  # noqa: E402
from peft_search.search.storage.paths import StoragePath  # noqa: E402
from peft_search.search.storage.records import read_records  # noqa: E402
from peft_search.search.time_left import TRIAL_START_S, list_schedule_s, rows_left, task_durations  # noqa: E402

# RTE, MRPC and STS-B at one epoch of batch 32: 78, 115 and 180 steps (their published train sizes);
# rehearsed trials never read data.
LENGTHS = {"short": (0.01, 12), "long": (0.15, 4)}  # step time (s), designs per choice
JOB = {
    "name": "time-left",
    "backbone": "minilm",
    "tasks": ["rte", "mrpc", "stsb"],
    "budget_fraction": 0.005,
    "stages": [{"component": "grouping", "candidates": ["uniform", "spindle", "bottleneck"]}],
    "racing": None,
    "fidelity": {"epochs": 1},
    "hyperparameters": {"batch_size": 32},
    "resources": {"cpus": 1, "gpus": 1},
    "retries": 0,
}
LEFT = re.compile(r"(?:about|at most) ([\d.]+) (s|min|h) left")
UNIT = {"s": 1, "min": 60, "h": 3600}


@contextmanager
def logical_gpu_cluster(gpus: int):
    """A local Ray cluster of two nodes with `gpus` logical GPUs (and as many CPUs) between them, the
    head holding none: the benchmarks' stand-in for a GPU cluster."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=gpus // 2, num_gpus=gpus // 2)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def seconds_left(line: str) -> float | None:
    found = LEFT.search(line)
    return float(found.group(1)) * UNIT[found.group(2)] if found else None


def timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def measure(length: str, gpus: int, address: str, storage: str) -> dict:
    step_time_s, designs = LENGTHS[length]
    spec = SearchSpec.from_dict({**JOB, "designs_per_choice": designs, "storage": storage})
    lines: list[tuple[float, str]] = []
    with listening(lambda prefix, done, line: lines.append((time.time(), line))):
        result = rehearse(spec, gpus, TrialModel(step_time_s=step_time_s), address=address)
    run_dir = StoragePath.parse(result.run_dir)
    timed = measured_trial_model(result.run_dir, step_time_s)  # its starts on new and on reused actors
    records = read_records(run_dir, 0)
    plan = read_plan(plan_path(run_dir, 0))
    start = min(timestamp(r["started_at"]) for r in records)
    end = max(timestamp(r["finished_at"]) for r in records)
    rows = []
    for at, line in lines:
        new = seconds_left(line)
        actual = end - at
        if new is None or actual <= 0:
            continue
        # The estimate before issue 38's measured start cost, from the records finished by then.
        seen = [r for r in records if timestamp(r["finished_at"]) <= at]
        old = list_schedule_s([row.task for row in rows_left(plan, seen)], task_durations(seen), gpus, TRIAL_START_S)
        rows.append({"fraction": (at - start) / (end - start), "actual_s": actual, "estimate_s": new, "before_s": old})
    return {"length": length, "step_time_s": step_time_s, "trials": len(records), "stage_s": end - start,
            "mean_trial_s": sum(r["wall_time_s"] for r in records) / len(records), "lines": rows,
            "wall_s": result.wall_s, "gpu_use": result.gpu_use,
            "start_cost_s": measured_start_cost(result.run_dir),
            "fresh_start_s": timed.fresh_start_s, "reused_start_s": timed.start_s}


def simulated(measured: dict, gpus: int, start_s: float, storage: str, fresh_start_s: float | None = None) -> dict:
    """The simulator's wall-clock and GPU use for the same job, trial model and seed."""
    step_time_s, designs = LENGTHS[measured["length"]]
    spec = SearchSpec.from_dict({**JOB, "designs_per_choice": designs, "storage": storage})
    stage = simulate_search(spec, profile_backbone(load_backbone("minilm", meta=True)), gpus,
                            TrialModel(step_time_s=step_time_s, start_s=start_s, fresh_start_s=fresh_start_s)).stages[0]
    return {"start_s": start_s, "fresh_start_s": fresh_start_s, "wall_s": stage.wall_s, "gpu_use": stage.gpu_use,
            "wall_ratio": stage.wall_s / measured["wall_s"], "gpu_use_points": 100 * (stage.gpu_use - measured["gpu_use"])}


def summary(measured: dict) -> dict:
    lines = measured["lines"]

    def at(fraction: float, key: str) -> float | None:
        later = [row for row in lines if row["fraction"] >= fraction and row[key] is not None]
        return later[0][key] / later[0]["actual_s"] if later else None

    def widest(key: str) -> float | None:
        ratios = [row[key] / row["actual_s"] for row in lines if 0.1 <= row["fraction"] <= 0.75 and row[key] is not None]
        return max(ratios, key=lambda r: abs(r - 1)) if ratios else None

    return {key: {f"at {f:.0%}": at(f, key) for f in (0.1, 0.25, 0.5)} | {"widest 10-75%": widest(key)}
            for key in ("estimate_s", "before_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", choices=sorted(LENGTHS), default=["short", "long"])
    parser.add_argument("--gpus", type=int, default=16, help="logical GPUs, over two nodes")
    parser.add_argument("--json", help="write every line's figures here")
    args = parser.parse_args()
    results = []
    with logical_gpu_cluster(args.gpus) as cluster:
        with tempfile.TemporaryDirectory() as storage:
            for length in args.lengths:
                measured = measure(length, args.gpus, cluster.address, storage)
                measured["summary"] = summary(measured)
                results.append(measured)
                print(f"{length}: {measured['trials']} trials of {measured['mean_trial_s']:.1f} s on {args.gpus} logical GPUs, "
                      f"stage {measured['stage_s']:.0f} s", flush=True)
                for key, name in (("estimate_s", "now"), ("before_s", "before")):
                    figures = ", ".join(f"{k} {v:.2f}x" if v is not None else f"{k} -" for k, v in measured["summary"][key].items())
                    print(f"  time left / actual, {name}: {figures}", flush=True)
            for measured in results:
                # The assumed cost; the run's own (one cost, then new and reused actors apart); the other run's.
                costs = [(TRIAL_START_S, None)]
                for run in [measured, *(r for r in results if r is not measured)]:
                    costs += [(run["start_cost_s"], None), (run["reused_start_s"], run["fresh_start_s"])]
                measured["simulated"] = [simulated(measured, args.gpus, start_s, storage, fresh_s) for start_s, fresh_s in costs]
                print(f"{measured['length']}: on Ray {measured['wall_s']:.1f} s, GPU use {measured['gpu_use']:.1%} "
                      f"(start cost measured on it: {measured['start_cost_s']:.2f} s; on reused actors "
                      f"{measured['reused_start_s']:.2f} s, on new ones {measured['fresh_start_s'] or float('nan'):.2f} s)", flush=True)
                for sim in measured["simulated"]:
                    fresh = f" ({sim['fresh_start_s']:.2f} s on a new actor)" if sim["fresh_start_s"] is not None else ""
                    print(f"  simulated at {sim['start_s']:.2f} s a start{fresh}: {sim['wall_s']:.1f} s ({sim['wall_ratio']:.2f}x), "
                          f"GPU use {sim['gpu_use']:.1%} ({sim['gpu_use_points']:+.1f} points)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpus": args.gpus, "results": results}, indent=1))


if __name__ == "__main__":
    main()
