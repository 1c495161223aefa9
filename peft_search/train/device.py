"""Where a trial runs: the Accelerator every trial and every evaluation uses, and how its runtime
failures are recognised (out of memory) and measured (peak memory).

bf16 autocast on GPU, fp32 on CPU. Batches are split across workers (`split_batches`), so a step
sees the same global batch whatever the number of workers. Imports torch and accelerate only.
"""

from __future__ import annotations

import resource

import torch

from peft_search.errors import InputError


def mixed_precision(precision: str) -> str:
    """Accelerate's `mixed_precision` for a trial's precision, on this machine; fp16 needs a GPU."""
    use_gpu = torch.cuda.is_available()
    if precision == "fp16" and not use_gpu:
        raise InputError("precision", "fp16 needs a CUDA GPU (this trial has none); use bf16, which runs on CPUs too")
    if precision == "auto":
        return "bf16" if use_gpu and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def make_accelerator(gradient_accumulation_steps: int = 1, precision: str = "auto"):
    """The Accelerator of a trial (inside a Ray Train worker it picks up Ray's process group)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    use_gpu = torch.cuda.is_available()
    wanted = mixed_precision(precision)
    # Accelerate keeps one precision per process and refuses another; a process that trains trials
    # of different precisions (a reused Tune actor, the tests) starts a fresh AcceleratorState. The
    # PartialState (a Ray Train worker's process group) is kept.
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != wanted:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=wanted,
        gradient_accumulation_steps=gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        cpu=not use_gpu,
    )


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: kilobytes


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )
