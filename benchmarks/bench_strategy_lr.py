"""Per-strategy learning-rate scales on a mixed design: the s4-t5 preset on MiniLM + SST-2 (2,000
training examples, 1 epoch, base rate 5e-3) with the prefix and BitFit parts at 1x, 2x or the
default scales (each strategy's `learning_rate_scale`), for several seeds, side by side in one run.

    .venv/bin/python benchmarks/bench_strategy_lr.py --data-dir ../shared/data/glue [--seeds 0 1]

With `--scales`, one strategy's scale swept instead, the head at the base rate as in every trial
(how a strategy's scale is chosen: docs/design.md, "Learning rates"):

    .venv/bin/python benchmarks/bench_strategy_lr.py --data-dir ../shared/data/glue --preset ia3 --scales 1 3 10
"""

from __future__ import annotations

import argparse
import json
import statistics

from peft_search.peft.strategies import STRATEGY_REGISTRY
from peft_search.train import TrialConfig, run_trial

VARIANTS = {
    "prefix x1, bitfit x1 (one rate)": {"prefix": 1.0, "bitfit": 1.0},
    "prefix x2, bitfit x2": {"prefix": 2.0, "bitfit": 2.0},
    "default scales": {name: s.learning_rate_scale for name, s in STRATEGY_REGISTRY.items()},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--preset", default="s4-t5")
    parser.add_argument("--scales", type=float, nargs="+",
                        help="sweep the scale of the preset's one strategy (a single-strategy preset) instead")
    args = parser.parse_args()
    variants = VARIANTS
    if args.scales:
        if args.preset not in STRATEGY_REGISTRY:
            parser.error(f"--scales sweeps one strategy: give a single-strategy preset ({', '.join(STRATEGY_REGISTRY)})")
        variants = {f"{args.preset} x{scale:g}": {args.preset: scale} for scale in args.scales}
    scores: dict[str, list[float]] = {}
    for seed in args.seeds:
        for variant, scales in variants.items():
            # The trainer reads the scales when it builds its optimizer: set them for this trial.
            for strategy, scale in scales.items():
                STRATEGY_REGISTRY[strategy].learning_rate_scale = scale
            config = TrialConfig(model="minilm", task="sst2", data_dir=args.data_dir, preset=args.preset,
                                 max_train_examples=2000, epochs=1, seed=seed)  # fmt: skip
            result = run_trial(config)
            scores.setdefault(variant, []).append(result.score)
            print(f"seed {seed}  {variant:<32} {result.status} {result.score:.4f}", flush=True)
    print(f"\n| scales | {' | '.join(f'seed {s}' for s in args.seeds)} | mean |")
    print(f"|---|{'---:|' * (len(args.seeds) + 1)}")
    for name, values in scores.items():
        print(f"| {name} | {' | '.join(f'{v:.4f}' for v in values)} | {statistics.mean(values):.4f} |")
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
