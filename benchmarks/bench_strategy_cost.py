"""Training-step time and step memory of each strategy added in issue 39 (DoRA, rsLoRA, LoHa, VeRA,
(IA)3), ours against HF peft's own implementation on the same model, side by side in one run.

Both sides are MiniLM with the strategy's preset at the job's default budget (0.005): ours injected by
`inject`, HF peft's built by tests/hf_reference.py's `hf_twin` on exactly the same modules, sizes and
scaling, from our initial tensors. One step = forward, backward and an AdamW step on the same fixed
batch. Rounds interleave every variant (ours, HF peft, for each strategy) so that machine noise hits all
alike; each time is the median over rounds of the mean step time within a round.

Step memory, CPU (no allocator statistics there): the bytes autograd saves for the backward pass during
the forward (`torch.autograd.graph.saved_tensors_hooks`, each storage counted once), plus the trainable
parameters with their gradients and AdamW's two moments. That is what a step adds on top of the frozen
weights, and what a GPU's peak allocation grows with; a GPU run's `torch.cuda.max_memory_allocated`
would be the direct figure (`--device cuda`).

    .venv/bin/python benchmarks/bench_strategy_cost.py [--rounds 5] [--steps 3] [--batch 32] [--length 128]
        [--strategies dora rslora loha vera ia3] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hf_reference import hf_twin  # noqa: E402 - tests/ holds the HF peft twins, shared with the parity tests
from peft_search.peft import inject, load_backbone  # noqa: E402
from peft_search.train.presets import preset_design  # noqa: E402

BUDGET = 0.005


def variants(strategies, device: str) -> dict[str, torch.nn.Module]:
    bare = load_backbone("minilm", num_labels=2)
    out = {}
    for strategy in strategies:
        ours = copy.deepcopy(bare)
        inject(ours, preset_design(strategy), BUDGET)
        theirs = hf_twin(strategy, copy.deepcopy(bare), ours)
        out[f"ours {strategy}"], out[f"hf_peft {strategy}"] = ours.to(device), theirs.to(device)
    return out


def batch(size: int, length: int, device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1000, 20000, (size, length), generator=generator).to(device),
            "attention_mask": torch.ones(size, length, dtype=torch.long, device=device),
            "labels": torch.randint(0, 2, (size,), generator=generator).to(device)}


def step_memory(model, inputs) -> int:
    """Bytes saved for backward in one forward, plus trainable state (parameters, gradients, AdamW moments)."""
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**inputs).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = {p.untyped_storage().data_ptr() for p in model.parameters()} | {
        b.untyped_storage().data_ptr() for b in model.buffers()}
    saved = sum(size for pointer, size in seen.items() if pointer not in frozen)  # the weights are there anyway
    return saved + 4 * trainable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--strategies", nargs="+", default=["dora", "rslora", "loha", "vera", "ia3"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    models = variants(args.strategies, args.device)
    inputs = batch(args.batch, args.length, args.device)
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
                  for name, m in models.items()}
    memory = {name: step_memory(model, inputs) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(args.rounds):
        for name, model in models.items():
            model.train()
            started = time.perf_counter()
            for _ in range(args.steps):
                model(**inputs).loss.backward()
                optimizers[name].step()
                optimizers[name].zero_grad(set_to_none=True)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - started) / args.steps)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows = []
    for strategy in args.strategies:
        ours, theirs = f"ours {strategy}", f"hf_peft {strategy}"
        trainable = sum(p.numel() for p in models[ours].parameters() if p.requires_grad)
        rows.append({"strategy": strategy, "trainable_params": trainable,
                     "ours_s": statistics.median(times[ours]), "hf_peft_s": statistics.median(times[theirs]),
                     "ours_memory_bytes": memory[ours], "hf_peft_memory_bytes": memory[theirs]})
    print(f"| strategy | trainable | ours s/step | HF peft s/step | time ours/HF | step memory ours MiB | HF MiB | memory ours/HF |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['strategy']} | {row['trainable_params']:,} | {row['ours_s']:.3f} | {row['hf_peft_s']:.3f} | "
              f"{row['ours_s'] / row['hf_peft_s']:.2f}x | {row['ours_memory_bytes'] / 2**20:.1f} | "
              f"{row['hf_peft_memory_bytes'] / 2**20:.1f} | {row['ours_memory_bytes'] / row['hf_peft_memory_bytes']:.3f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.machine(), "torch": torch.__version__,
                                               "threads": torch.get_num_threads(), "settings": vars(args), "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
