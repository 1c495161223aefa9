"""Trial figures (issue 3): preset throughput, trial start-up cold vs warm cache, preset accuracy.

    .venv/bin/python benchmarks/bench_trials.py throughput [--rounds 3 --steps 12]
    .venv/bin/python benchmarks/bench_trials.py startup [--rounds 3]
    .venv/bin/python benchmarks/bench_trials.py accuracy [--presets lora full ...] [--lrs 5e-3 1e-2]

throughput: train samples/s of every preset on MiniLM, batch 32, every example exactly 128 tokens
  (SST-2 sentences joined until they pass 128 tokens, then truncated), through the real trial
  (`run_trial`, max_steps), presets interleaved round by round so that they share the machine's
  conditions; median over rounds, and the ratio to full fine-tuning.
startup: `prepare` (tokenizer, data, backbone, injection) on the full SST-2 train set (67,349
  examples) with an empty tokenisation cache, then with the cache it left; median over rounds.
accuracy: every preset in the issue's must-hold setting (SST-2, 2,000 train examples, 1 epoch,
  seed 0, batch 32, max length 128) at its default learning rate, or at each of --lrs.
Each prints a Markdown table; --out FILE also writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft_search.train import PRESETS, TrialConfig, run_trial  # noqa: E402
from peft_search.train import data as data_module  # noqa: E402
from peft_search.train.prepare import load_tokenizer, prepare  # noqa: E402

GLUE = ROOT.parent / "shared" / "data" / "glue"
MODEL = "minilm"


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}; load average {load} (the cores are shared)")


def long_examples(directory: Path, count: int, tokens: int = 128) -> Path:
    """A JSONL file task whose every example is at least `tokens` tokens long."""
    tokenizer = load_tokenizer(MODEL)
    sentences = [line.split("\t")[0] for line in (GLUE / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    rows, current, index = [], [], 0
    while len(rows) < count:
        current.append(sentences[index % len(sentences)])
        index += 1
        text = " ".join(current)
        if len(tokenizer(text)["input_ids"]) > tokens:
            rows.append({"text": text, "label": len(rows) % 2})
            current = []
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    return directory


def throughput(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = long_examples(Path(tmp), 32 * args.steps)
        rates: dict[str, list[float]] = {p: [] for p in args.presets}
        for round_ in range(args.rounds):
            for preset in args.presets:
                config = TrialConfig(
                    model=MODEL, task="file", data_dir=str(data_dir), preset=preset, max_steps=args.steps,
                    batch_size=32, max_length=128, cache_dir=str(Path(tmp) / "cache"),
                )
                result = run_trial(config)
                assert result.status == "finished", result.error
                rates[preset].append(result.train_samples_per_s)
                print(f"round {round_ + 1} {preset:8s} {result.train_samples_per_s:7.2f} samples/s", file=sys.stderr)
    median = {p: statistics.median(v) for p, v in rates.items()}
    full = median.get("full")
    print(f"\n| preset | train samples/s (median of {args.rounds}) | x full fine-tuning |\n|---|---:|---:|")
    for preset in args.presets:
        ratio = f"{median[preset] / full:.2f}" if full else "-"
        print(f"| {preset} | {median[preset]:.1f} | {ratio} |")
    return {"rates": rates, "median": median, "steps": args.steps, "rounds": args.rounds}


def startup(args) -> dict:
    timings = {"cold": [], "warm": []}
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory() as cache:
            config = TrialConfig(model=MODEL, task="sst2", data_dir=str(GLUE), preset="lora", cache_dir=cache)
            for state in ("cold", "warm"):
                before = data_module.STATS["tokenised_examples"]
                started = time.perf_counter()
                prepare(config)
                timings[state].append(time.perf_counter() - started)
                tokenised = data_module.STATS["tokenised_examples"] - before
                print(f"round {round_ + 1} {state}: {timings[state][-1]:.2f}s, tokenised {tokenised:,}", file=sys.stderr)
    median = {k: statistics.median(v) for k, v in timings.items()}
    print(f"\n| trial start-up (SST-2 full train, 67,349 examples) | seconds (median of {args.rounds}) |\n|---|---:|")
    print(f"| cold tokenisation cache | {median['cold']:.2f} |\n| warm tokenisation cache | {median['warm']:.2f} |")
    return {"timings": timings, "median": median}


def accuracy(args) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for preset in args.presets:
            for lr in args.lrs or [None]:
                config = TrialConfig(
                    model=MODEL, task="sst2", data_dir=str(GLUE), preset=preset, max_train_examples=2000, epochs=1,
                    seed=0, learning_rate=lr, cache_dir=cache,
                )
                result = run_trial(config)
                rows.append({"preset": preset, "lr": config.base_learning_rate, **result.to_dict()})
                print(f"{preset:8s} lr {config.base_learning_rate:g}: {result.status} {result.score}", file=sys.stderr)
    print("\n| preset | lr | trainable backbone params | dev accuracy | train samples/s |\n|---|---:|---:|---:|---:|")
    for row in rows:
        score = f"{row['score']:.4f}" if row["score"] is not None else row["status"]
        print(f"| {row['preset']} | {row['lr']:g} | {row['realised_params']:,} | {score} | {row['train_samples_per_s']} |")
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=("throughput", "startup", "accuracy"))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lrs", nargs="+", type=float)
    parser.add_argument("--out", help="write the raw numbers to this JSON file")
    args = parser.parse_args()
    if not GLUE.is_dir():
        sys.exit(f"needs the GLUE copies at {GLUE}")
    started = time.strftime("%Y-%m-%d %H:%M")
    result = {"throughput": throughput, "startup": startup, "accuracy": accuracy}[args.figure](args)
    if args.out:
        Path(args.out).write_text(json.dumps({"date": started, "machine": machine(), "argv": sys.argv[1:], **result}, indent=2))
    print(f"\n{started}; {machine()}")


if __name__ == "__main__":
    main()
