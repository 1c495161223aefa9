"""Training-step time on MiniLM (CPU): full fine-tuning, our LoRA-only design, HF peft LoRA at the
same rank, and a mixed four-strategy design at the same budget, measured side by side.

Rounds interleave the variants (A B C D, A B C D, ...) so that machine noise hits all of them alike;
each figure is the median over rounds of the mean step time within a round.

    .venv/bin/python benchmarks/bench_step_time.py [--rounds 5] [--steps 3] [--rank 8]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch

from peft_search.peft import inject, load_backbone, profile_backbone
from peft_search.space import Design

S4_T5 = Design(
    "spindle",
    "uniform",
    (1, 2, 3, 4),
    (("adapter", "lora"), ("adapter", "prefix"), ("adapter", "prefix", "bitfit"), ("prefix", "bitfit", "lora")),
)
LORA_EVERYWHERE = Design("uniform", "uniform", (1, 2, 3, 4), (("lora",),) * 4)


def make_variants(rank: int):
    bare = load_backbone("minilm")
    profile = profile_backbone(bare)
    # The budget at which every block's share buys exactly `rank`: our LoRA then equals HF peft's.
    budget = (rank * sum(b.unit("lora") for b in profile.blocks) + 0.25) / profile.backbone_params

    full = copy.deepcopy(bare)
    ours = copy.deepcopy(bare)
    lora_report = inject(ours, LORA_EVERYWHERE, budget)
    assert {b.lora_rank for b in lora_report.plan.blocks} == {rank}
    mixed = copy.deepcopy(bare)
    mixed_report = inject(mixed, S4_T5, budget)

    import peft

    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["query", "value"], lora_dropout=0.0, task_type="SEQ_CLS")
    theirs = peft.get_peft_model(copy.deepcopy(bare), config)
    return {
        "full fine-tuning": full,
        f"ours: LoRA r={rank}": ours,
        f"HF peft: LoRA r={rank}": theirs,
        "ours: mixed s4-t5 design": mixed,
    }, {"budget_fraction": budget, "lora_params": lora_report.realised_params, "mixed_params": mixed_report.realised_params}


def step_time(model, optimizer, inputs, labels, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()

    torch.manual_seed(0)
    variants, info = make_variants(args.rank)
    inputs = {
        "input_ids": torch.randint(1000, 30000, (args.batch_size, args.seq_len)),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
    }
    labels = torch.randint(0, 2, (args.batch_size,))
    optimizers = {}
    for name, model in variants.items():
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizers[name] = torch.optim.AdamW(trainable, lr=1e-4)
        step_time(model, optimizers[name], inputs, labels, 1)  # warm-up: allocator, optimizer state

    times = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for name, model in variants.items():
            times[name].append(step_time(model, optimizers[name], inputs, labels, args.steps))
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()), flush=True)

    medians = {name: statistics.median(t) for name, t in times.items()}
    full = medians["full fine-tuning"]
    ours, theirs = medians[f"ours: LoRA r={args.rank}"], medians[f"HF peft: LoRA r={args.rank}"]
    print(f"\nMiniLM, CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"batch {args.batch_size}, sequence {args.seq_len}, {args.rounds} rounds x {args.steps} steps")
    print(f"budget {info['budget_fraction']:.6f}: LoRA {info['lora_params']:,} params, mixed {info['mixed_params']:,} params\n")
    print(f"{'variant':<28} {'s/step':>7} {'vs full':>8}")
    for name, seconds in medians.items():
        print(f"{name:<28} {seconds:>7.3f} {seconds / full:>7.2f}x")
    print(f"\nours / HF peft LoRA: {ours / theirs:.3f}x")
    print(json.dumps({"median_s_per_step": medians, "ours_over_hf_peft": ours / theirs, **info}))


if __name__ == "__main__":
    main()
