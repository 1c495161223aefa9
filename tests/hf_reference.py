"""The reference side of our training's oracle checks: HF peft's LoRA twin of one of our injected
models, and a plain torch training loop (no Accelerate, no peft_search code on its step path).

Used by tests/test_train_equivalence.py (tiny model, step for step) and by
benchmarks/bench_learning_parity.py (MiniLM, real GLUE tasks). HF peft is a test-only dependency.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from peft_search.peft.strategies import LoraLinear
from peft_search.peft.strategies.lora import LoraWeight

MAX_GRAD_NORM = 1.0


def our_lora_ranks(model) -> dict[str, int]:
    """{module name: rank} of every LoRA-wrapped projection of our injected `model`."""
    return {name: module.rank for name, module in model.named_modules() if isinstance(module, LoraLinear)}


def hf_lora_twin(bare_model, ours=None, ranks: dict[str, int] | None = None, fan_in_fan_out: bool = False,
                 task_type: str = "SEQ_CLS"):
    """HF peft's LoRA on `bare_model` (modified in place) on exactly the projections our injected
    model `ours` wraps, rank for rank, with alpha = rank x our LORA_SCALING (same scale), no LoRA
    dropout, the task head trained (`task_type="SEQ_CLS"`; a language model trained through its own
    head: "SEQ_2_SEQ_LM" or "CAUSAL_LM"). With `ours`, its LoRA A and B and its head are copied in,
    so both models start equal; with only `ranks`, HF peft initialises its own. `fan_in_fan_out`
    for projections that store their weight transposed (gpt2's Conv1D).
    """
    import peft

    from peft_search.peft.strategies import LORA_SCALING

    ranks = ranks if ranks is not None else our_lora_ranks(ours)
    common_rank = max(set(ranks.values()), key=list(ranks.values()).count)
    config = peft.LoraConfig(
        task_type=task_type,
        target_modules=list(ranks),
        r=common_rank,
        lora_alpha=common_rank * LORA_SCALING,
        rank_pattern={name: rank for name, rank in ranks.items() if rank != common_rank},
        alpha_pattern={name: rank * LORA_SCALING for name, rank in ranks.items() if rank != common_rank},
        lora_dropout=0.0,
        fan_in_fan_out=fan_in_fan_out,
    )
    twin = peft.get_peft_model(bare_model, config)
    if ours is not None:
        copy_into_twin(ours, twin)
    return twin


@torch.no_grad()
def merged_lora_reference(bare_model, ours):
    """`bare_model` (modified in place) with each of our LoRA updates on a bare weight (xlnet's q and
    v, `LoraWeight`) merged in: W + scaling (B A)^T, the weight HF peft's `merge_and_unload` writes
    for LoRA. The oracle where HF peft cannot adapt the weight itself: its `target_parameters` reads
    a 3-D weight as a mixture of experts, not as (in, heads, head size)."""
    weights = dict(bare_model.named_parameters())
    merged = 0
    for name, module in ours.named_modules():
        if isinstance(module, LoraWeight):
            owner, weight_name = name.split(".parametrizations.")
            weight = weights[f"{owner}.{weight_name.split('.')[0]}"]
            weight.copy_(module(weight))
            merged += 1
    assert merged, "no LoRA on a bare weight to merge"
    return bare_model


def copy_into_twin(ours, twin, head: bool = True) -> None:
    """Our LoRA A/B and (with `head`) head weights into HF peft's twin (names differ only by peft's
    wrapping). Without `head` the twin keeps its own head: built from the same bare model, it is equal."""
    theirs = dict(twin.named_parameters())
    head_names = {n for n, p in ours.named_parameters() if p.requires_grad and "lora_" not in n}
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, LoraLinear):
                theirs[f"base_model.model.{name}.lora_A.default.weight"].copy_(module.lora_A.weight)
                theirs[f"base_model.model.{name}.lora_B.default.weight"].copy_(module.lora_B.weight)
        for name, parameter in ours.named_parameters():
            if head and name in head_names:
                module, rest = name.split(".", 1)  # `classifier.weight`: peft keeps a trained copy
                theirs[f"base_model.model.{module}.modules_to_save.default.{rest}"].copy_(parameter)


def constant_then_linear(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Our loop's schedule (loop.linear_schedule), written out again: warm-up from lr/(w+1), then
    linear decay to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def hf_decay_groups(model, weight_decay: float) -> list[dict]:
    """The transformers Trainer's AdamW groups: no decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_reference(model, loader, *, lr: float, total_steps: int, warmup_steps: int, weight_decay: float = 0.0,
                    schedule: str = "ours") -> list[float]:
    """A plain torch loop: AdamW, a linear schedule (`ours`, or `transformers` for
    get_linear_schedule_with_warmup, which warms up from 0), gradients clipped at norm 1, as many
    passes over `loader` as `total_steps` needs. Returns the loss of every step."""
    optimizer = torch.optim.AdamW(hf_decay_groups(model, weight_decay), lr=lr)
    if schedule == "transformers":
        from transformers import get_linear_schedule_with_warmup

        scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, constant_then_linear(warmup_steps, total_steps))
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    model.train()
    while len(losses) < total_steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if len(losses) == total_steps:
                break
    return losses


@torch.no_grad()
def predict(model, loader, regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) of `model` over `loader`: values for a regression, else class ids."""
    model.eval()
    outputs, labels = [], []
    for batch in loader:
        logits = model(**batch).logits.float()
        outputs.append(logits.squeeze(-1) if regression else logits.argmax(-1))
        labels.append(batch["labels"])
    return torch.cat(outputs).numpy(), torch.cat(labels).numpy()


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(warmup_ratio * total_steps)


class LossRecorder:
    """Records the loss of every training-mode forward of a model (a forward hook: our loop's steps
    are observed, not changed)."""

    def __init__(self, model):
        self.losses: list[float] = []
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        if module.training and getattr(output, "loss", None) is not None:
            self.losses.append(output.loss.item())

    def remove(self) -> None:
        self.handle.remove()
