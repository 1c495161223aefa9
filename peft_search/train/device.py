"""Where a trial runs: the Accelerator every trial and every evaluation uses, and how its runtime
failures are recognised (out of memory) and measured (peak memory).

bf16 autocast on GPU, fp32 on CPU. Batches are split across workers (`split_batches`), so a step
sees the same global batch whatever the number of workers. Imports torch and accelerate only.
"""

from __future__ import annotations

import resource

import torch


def make_accelerator(gradient_accumulation_steps: int = 1):
    """The Accelerator of a trial (inside a Ray Train worker it picks up Ray's process group)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    use_gpu = torch.cuda.is_available()
    return Accelerator(
        mixed_precision="bf16" if use_gpu else "no",
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
