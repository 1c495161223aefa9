"""Learning parity: our LoRA (the `lora` preset, trained by `run_trial`, the path every search trial
takes), or with `--strategy` DoRA, rsLoRA, LoHa, VeRA or (IA)3, against HF peft's on the same backbone, trained by a plain torch loop with transformers'
own linear schedule, on the same training examples in the same order, scored on the same dev set.

Recipe (issue 23's): MiniLM, 2,000 training examples (our seeded stratified subsample, used by both),
200 optimizer steps at batch 16, max length 64, AdamW without weight decay, 6% warm-up then linear
decay, gradients clipped at norm 1, learning rate 1e-3, LoRA on query and value at our plan's ranks
(HF peft's `rank_pattern`; alpha = 2 x rank on both), the head trained. Each side initialises its own
modules after seeding with the run's seed; dropout draws differ. Scored on every dev example.

A third side, `hf_own_data`, shares nothing with peft_search but the task's file and field names:
the GLUE TSV read with `csv`, a uniformly random sample of the training examples drawn with the
seed, the tokenizer called directly, transformers' DataCollatorWithPadding, HF peft's LoRA at
r = 12, alpha = 24 on query and value (as issue 23's measurement), the same plain loop and schedule.
It checks that our data path (subsample, tokenisation, collation, labels) handicaps neither side.

First, a step-for-step check on MiniLM + STS-B (tests/test_train_equivalence.py's check on the real
backbone): our loop and the reference from the same weights and RNG state, 50 steps, the largest
difference in step loss and in dev predictions.

    .venv/bin/python benchmarks/bench_learning_parity.py --data-dir ../shared/data/glue \
        [--tasks sst2 stsb mrpc] [--seeds 0 1 2 3 4] [--out benchmarks/data/learning-parity.jsonl]

Every finished run is appended to --out at once; running again skips the runs it holds (resumable).

`--strategy dora|rslora|loha|vera|ia3` (issue 39): the strategy's preset on both sides, HF peft's own
implementation of it (tests/hf_reference.py, `hf_twin`: same modules, sizes and scaling) starting from our
initial tensors (so the two differ by dropout draws and the schedule's first step only); the sides are
`ours` and `hf_peft` (HF peft's own data path is LoRA's check of our data path, made once). A strategy
whose rate is a multiple of the base ((IA)3's and VeRA's `learning_rate_scale`) trains its tensors at that
multiple on both sides (recorded as `lr_scale` in the settings).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hf_reference import (  # noqa: E402 - tests/ holds the reference, shared with the equivalence test
    LossRecorder,
    hf_learning_rate_scale,
    hf_lora_twin,
    hf_twin,
    our_lora_ranks,
    predict,
    train_reference,
    warmup_steps_for,
)
from peft_search.train import TrialConfig, run_trial  # noqa: E402
from peft_search.train.batching import evaluation_loader, training_loader  # noqa: E402
from peft_search.train.loop import train_worker  # noqa: E402
from peft_search.train.metrics import compute_metrics  # noqa: E402
from peft_search.train.prepare import load_model, prepare  # noqa: E402

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def recipe(args, task: str, seed: int, **overrides) -> TrialConfig:
    values = dict(model="minilm", task=task, data_dir=args.data_dir, preset=args.strategy, max_steps=args.steps,
                  max_train_examples=args.train_examples, learning_rate=args.lr, batch_size=16, max_length=64,
                  seed=seed, cache_dir=args.cache_dir)
    return TrialConfig(**{**values, **overrides})


def step_for_step(args) -> dict:
    """Our loop and the reference, same start, same batches, same RNG: the largest differences."""
    config = recipe(args, "stsb", 0, max_steps=50, max_eval_examples=400)
    prepared = prepare(config)
    bare = load_model(config.model, prepared.data.task)
    reference = (hf_lora_twin(bare, ours=prepared.model) if args.strategy == "lora"
                 else hf_twin(args.strategy, bare, prepared.model))
    recorder = LossRecorder(prepared.model)
    torch.manual_seed(1234)
    outcome = train_worker(config, prepared)
    recorder.remove()
    loader = training_loader(prepared.data.train, prepared.tokenizer, prepared.data.task, config.batch_size, config.seed)
    torch.manual_seed(1234)
    theirs = train_reference(reference, loader, lr=config.base_learning_rate, total_steps=config.max_steps,
                             warmup_steps=warmup_steps_for(config.max_steps, config.warmup_ratio),
                             lr_scale=hf_learning_rate_scale(args.strategy))
    dev = evaluation_loader(prepared.data.validation, prepared.tokenizer, prepared.data.task, config.batch_size)
    ours_predicted, _ = predict(prepared.model, dev, True)
    theirs_predicted, _ = predict(reference, dev, True)
    return {
        "steps": len(theirs),
        "max_loss_difference": float(np.max(np.abs(np.array(recorder.losses) - np.array(theirs)))),
        "max_prediction_difference": float(np.max(np.abs(ours_predicted - theirs_predicted))),
        "first_loss": theirs[0], "last_loss": theirs[-1], "status": outcome["status"],
    }


def train_hf_peft(config: TrialConfig) -> dict:
    """HF peft's LoRA on our ranks, trained by the plain loop with transformers' schedule."""
    from accelerate.utils import set_seed

    started = time.perf_counter()
    prepared = prepare(config)  # our data (the same examples) and our plan's ranks; its model is not trained
    task = prepared.data.task
    set_seed(config.seed)
    if config.preset == "lora":
        model = hf_lora_twin(load_model(config.model, task), ranks=our_lora_ranks(prepared.model))
    else:  # HF peft's implementation of the strategy, from our initial tensors
        model = hf_twin(config.preset, load_model(config.model, task), prepared.model)
    loader = training_loader(prepared.data.train, prepared.tokenizer, task, config.batch_size, config.seed)
    losses = train_reference(model, loader, lr=config.base_learning_rate, total_steps=config.max_steps, schedule="transformers",
                             warmup_steps=warmup_steps_for(config.max_steps, config.warmup_ratio),
                             lr_scale=hf_learning_rate_scale(config.preset))  # our per-strategy rate, on its tensors
    dev = evaluation_loader(prepared.data.validation, prepared.tokenizer, task, config.batch_size)
    predictions, labels = predict(model, dev, task.regression)
    metrics = compute_metrics(task.metrics, predictions, labels, 1 if task.regression else task.num_labels)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"score": metrics[task.main_metric], "metrics": metrics, "trainable_params": trainable,
            "train_loss_last20": float(np.mean(losses[-20:])), "wall_s": round(time.perf_counter() - started, 1)}


def train_hf_own_data(config: TrialConfig) -> dict:
    """HF peft's LoRA on a data path of its own (see the module docstring)."""
    import csv

    from accelerate.utils import set_seed
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from peft_search.peft import resolve_model
    from peft_search.train.metrics import compute_metrics
    from peft_search.train.tasks import get_task

    started = time.perf_counter()
    task = get_task(config.task)
    directory = Path(config.data_dir) / task.glue_dir

    def read(name: str) -> list[tuple]:
        with open(directory / name, encoding="utf-8-sig", newline="") as handle:  # MRPC starts with a BOM
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        header = rows[0]
        columns = [header.index(field) for field in (*task.text_fields, task.label_field)]
        return [tuple(row[i] for i in columns) for row in rows[1:] if len(row) == len(header)]

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model))
    label = (lambda value: float(value)) if task.regression else (lambda value: task.labels.index(value))

    def encode(rows):
        texts = [[row[i] for row in rows] for i in range(len(task.text_fields))]
        encoded = tokenizer(*texts, truncation=True, max_length=config.max_length)
        return [{**{k: v[i] for k, v in encoded.items()}, "labels": label(rows[i][-1])} for i in range(len(rows))]

    train_rows, dev_rows = read("train.tsv"), read("dev.tsv")
    sample = np.random.default_rng(config.seed).choice(len(train_rows), config.max_train_examples, replace=False)
    collate = DataCollatorWithPadding(tokenizer)
    set_seed(config.seed)
    model = load_model(config.model, task)
    import peft

    model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=12, lora_alpha=24,
                                                       target_modules=["query", "value"]))
    loader = torch.utils.data.DataLoader(encode([train_rows[i] for i in sample]), batch_size=config.batch_size, shuffle=True,
                                         collate_fn=collate, generator=torch.Generator().manual_seed(config.seed))
    train_reference(model, _float_labels(loader) if task.regression else loader, lr=config.base_learning_rate, total_steps=config.max_steps,
                    schedule="transformers", warmup_steps=warmup_steps_for(config.max_steps, config.warmup_ratio))
    dev = torch.utils.data.DataLoader(encode(dev_rows), batch_size=2 * config.batch_size, collate_fn=collate)
    predictions, labels = predict(model, _float_labels(dev) if task.regression else dev, task.regression)
    metrics = compute_metrics(task.metrics, predictions, labels, 1 if task.regression else len(task.labels))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"score": metrics[task.main_metric], "metrics": metrics, "trainable_params": trainable,
            "train_loss_last20": None, "wall_s": round(time.perf_counter() - started, 1)}


def _float_labels(loader):
    """The collator makes integer labels of 5.0; a regression's MSE wants floats."""
    class FloatLabels:
        def __iter__(self):
            for batch in loader:
                batch["labels"] = batch["labels"].float()
                yield batch

    return FloatLabels()


def train_ours(config: TrialConfig) -> dict:
    result = run_trial(config)
    if result.status != "finished":
        raise SystemExit(f"our trial {result.status}: {result.error}")
    return {"score": result.score, "metrics": result.metrics, "trainable_params": result.realised_params + result.head_params,
            "train_loss_last20": None, "wall_s": result.wall_time_s}


def interval(differences: list[float]) -> tuple[float, float, float]:
    mean = statistics.mean(differences)
    if len(differences) < 2:
        return mean, math.nan, math.nan
    half = T_975.get(len(differences) - 1, 1.96) * statistics.stdev(differences) / math.sqrt(len(differences))
    return mean, mean - half, mean + half


SIDES = {"hf_peft": "HF peft, our data", "hf_own_data": "HF peft, its own data path"}


def table(records: list[dict], tasks, seeds) -> str:
    """Per task and reference side: both sides' mean +/- std over seeds and ours minus theirs, paired by seed."""
    lines = ["| task (metric) | reference | seeds | ours: mean +/- std | reference: mean +/- std | "
             "ours - reference, paired: mean [95% CI] |", "|---|---|---:|---:|---:|---:|"]
    spread = lambda v: f"{statistics.mean(v):.3f} +/- {statistics.stdev(v) if len(v) > 1 else 0:.3f}"  # noqa: E731
    for task in tasks:
        ours = {r["seed"]: r["score"] for r in records if r["task"] == task and r["side"] == "ours"}
        for side, name in SIDES.items():
            theirs = {r["seed"]: r["score"] for r in records if r["task"] == task and r["side"] == side}
            paired = [s for s in seeds if s in ours and s in theirs]
            if not paired:
                continue
            mine, other = [ours[s] for s in paired], [theirs[s] for s in paired]
            mean, low, high = interval([a - b for a, b in zip(mine, other)])
            metric = next(r["metric"] for r in records if r["task"] == task)
            lines.append(f"| {task} ({metric}) | {name} | {len(paired)} | {spread(mine)} | {spread(other)} | "
                         f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="GLUE root (../shared/data/glue)")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "stsb", "mrpc"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default="benchmarks/data/learning-parity.jsonl")
    parser.add_argument("--skip-step-check", action="store_true")
    parser.add_argument("--strategy", default="lora", choices=["lora", "dora", "rslora", "loha", "vera", "ia3"])
    args = parser.parse_args()

    if not args.skip_step_check:
        check = step_for_step(args)
        print(f"step for step, MiniLM + STS-B, {check['steps']} steps: largest loss difference "
              f"{check['max_loss_difference']:.2e} (loss {check['first_loss']:.3f} -> {check['last_loss']:.3f}), "
              f"largest dev prediction difference {check['max_prediction_difference']:.2e}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    from peft_search.peft.strategies import STRATEGY_REGISTRY

    scale = STRATEGY_REGISTRY[args.strategy].learning_rate_scale  # its tensors train at lr x this, on both sides
    settings = {"steps": args.steps, "train_examples": args.train_examples, "lr": args.lr,
                **({"strategy": args.strategy} if args.strategy != "lora" else {}),  # LoRA's records predate the key
                **({"lr_scale": scale} if scale != 1 else {})}
    records = [r for r in records if r["settings"] == settings]
    done = {(r["task"], r["seed"], r["side"]) for r in records}
    for task in args.tasks:
        for seed in args.seeds:
            sides = (("ours", train_ours), ("hf_peft", train_hf_peft), ("hf_own_data", train_hf_own_data))
            for side, train in sides if args.strategy == "lora" else sides[:2]:
                if (task, seed, side) in done:
                    continue
                config = recipe(args, task, seed)
                outcome = train(config)
                from peft_search.train.tasks import get_task

                record = {"task": task, "seed": seed, "side": side, "metric": get_task(task).main_metric,
                          **({"strategy": args.strategy} if args.strategy != "lora" else {}),
                          "settings": settings, **outcome}
                records.append(record)
                with out.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(f"{args.strategy} {task} seed {seed} {side:<8} {record['metric']} {record['score']:.4f} "
                      f"({record['trainable_params']:,} trainable, {record['wall_s']:.0f}s)", flush=True)
    print()
    print(table(records, args.tasks, args.seeds))


if __name__ == "__main__":
    main()
