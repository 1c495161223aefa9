"""fp32 against bf16 with a bfloat16 backbone (`hyperparameters.precision: bf16`,
`backbone_dtype: bfloat16`) on this machine: the same LoRA trial (MiniLM, SST-2 from the GLUE
copies), each in a fresh process so that its peak resident memory is its own, side by side per seed.

    .venv/bin/python benchmarks/bench_precision.py --data-dir ../shared/data/glue [--seeds 0 1] [--steps 100]

Prints one row per run (score, wall time, peak RSS) and the ratios bf16 / fp32 per seed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys
from peft_search.train import TrialConfig, run_trial
config = TrialConfig(**json.loads(sys.argv[1]))
result = run_trial(config)
print(json.dumps({"status": result.status, "score": result.score, "wall_time_s": result.wall_time_s,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(config: dict) -> dict:
    output = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    base = dict(model="minilm", task="sst2", data_dir=args.data_dir, preset="lora", max_steps=args.steps, epochs=None,
                max_train_examples=args.steps * 16, max_eval_examples=872, batch_size=16, max_length=64)
    variants = {"fp32": {}, "bf16 + bfloat16 backbone": {"precision": "bf16", "backbone_dtype": "bfloat16"}}
    print("| seed | variant | score | wall time (s) | peak RSS (MB) |\n|---:|---|---:|---:|---:|")
    results = {}
    for seed in args.seeds:
        for name, changes in variants.items():  # side by side: fp32 then bf16, per seed
            result = run({**base, **changes, "seed": seed})
            results[(seed, name)] = result
            print(f"| {seed} | {name} | {result['score']:.4f} | {result['wall_time_s']:.1f} | {result['peak_rss_mb']:.0f} |", flush=True)
    print("\n| seed | score bf16 - fp32 | time bf16 / fp32 | peak RSS bf16 / fp32 |\n|---:|---:|---:|---:|")
    for seed in args.seeds:
        full, half = results[(seed, "fp32")], results[(seed, "bf16 + bfloat16 backbone")]
        print(f"| {seed} | {half['score'] - full['score']:+.4f} | {half['wall_time_s'] / full['wall_time_s']:.2f} | "
              f"{half['peak_rss_mb'] / full['peak_rss_mb']:.2f} |")


if __name__ == "__main__":
    main()
