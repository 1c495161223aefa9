"""Trial throughput on a 2-core machine: one trial at a time with 2 torch threads (`resources.cpus: 2,
max_concurrent_trials: 1`) against two trials at once with 1 thread each (`cpus: 1`, 2 concurrent).

Each variant trains the same pair of real trials (MiniLM, the s4-t5 design, STS-B and SST-2 from
local GLUE files, batch 16, max length 64): variant A runs them one after the other in one process
with 2 threads; variant B runs them in two processes at once with 1 thread each. Rounds alternate
A and B so that machine noise hits both alike; the figure is trials per minute, median over rounds.

    .venv/bin/python benchmarks/bench_trial_threads.py --data-dir ../shared/data/glue [--rounds 2] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

TASKS = ("stsb", "sst2")


def train(task: str, data_dir: str, steps: int, threads: int) -> float:
    """Train one trial in this process with `threads` torch threads; its wall time in seconds."""
    import torch

    torch.set_num_threads(threads)
    from peft_search.train import TrialConfig, run_trial

    config = TrialConfig(model="minilm", task=task, data_dir=data_dir, preset="s4-t5", seed=0, epochs=None,
                         max_steps=steps, max_train_examples=1000, max_eval_examples=300, batch_size=16, max_length=64)
    started = time.perf_counter()
    result = run_trial(config)
    assert result.status == "finished", result
    return time.perf_counter() - started


def child(task: str, data_dir: str, steps: int, threads: int) -> subprocess.Popen:
    code = ("import sys, json; sys.path.insert(0, 'benchmarks'); from bench_trial_threads import train; "
            f"print(json.dumps(train({task!r}, {data_dir!r}, {steps}, {threads})))")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


def one_at_a_time(data_dir: str, steps: int) -> float:
    started = time.perf_counter()
    for task in TASKS:
        assert child(task, data_dir, steps, 2).wait() == 0
    return time.perf_counter() - started


def two_at_once(data_dir: str, steps: int) -> float:
    started = time.perf_counter()
    children = [child(task, data_dir, steps, 1) for task in TASKS]
    assert all(c.wait() == 0 for c in children)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    # Warm the token cache so neither variant pays for tokenising.
    for task in TASKS:
        assert child(task, args.data_dir, 1, 2).wait() == 0
    sequential, concurrent = [], []
    for round_ in range(args.rounds):
        sequential.append(one_at_a_time(args.data_dir, args.steps))
        concurrent.append(two_at_once(args.data_dir, args.steps))
        print(f"round {round_ + 1}: one at a time (2 threads) {sequential[-1]:.1f} s, two at once (1 thread each) "
              f"{concurrent[-1]:.1f} s", flush=True)
    a, b = statistics.median(sequential), statistics.median(concurrent)
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "steps": args.steps,
                      "trials": len(TASKS), "one_at_a_time_s": round(a, 1), "two_at_once_s": round(b, 1),
                      "throughput_ratio": round(a / b, 2)}))


if __name__ == "__main__":
    main()
