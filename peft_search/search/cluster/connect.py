"""Connecting to a cluster: what a Ray started here could ever offer a trial (`local_capacity`), so
that a job asking for more is refused before Ray starts instead of waiting forever. Starting Ray
itself is `peft_search.ray_session` (docs/design.md, "Service rules").
"""

from __future__ import annotations

import os


def local_capacity() -> dict[str, float]:
    """The CPUs and GPUs Ray started in this process would have, counted as Ray counts them (CPU
    limits of a container included)."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource
        from ray._private.utils import get_num_cpus

        return {"CPU": float(get_num_cpus()),
                "GPU": float(get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators())}
    except (ImportError, AttributeError):  # Ray's private helpers moved: count as the OS does
        import torch

        return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
