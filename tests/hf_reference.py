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


# The names HF peft gives each strategy's trainable tensors (anything else trainable is the task head).
HF_PARAMETER_MARKS = {"lora": "lora_", "dora": "lora_", "rslora": "lora_", "loha": "hada_", "vera": "vera_lambda_",
                      "ia3": "ia3_l"}


def hf_learning_rate_scale(strategy: str) -> Callable[[str], float]:
    """Parameter name -> the factor our trainer applies to the base rate: `strategy`'s
    `learning_rate_scale` for HF peft's tensors of that strategy, 1 for the head (as ours)."""
    from peft_search.peft.strategies import STRATEGY_REGISTRY

    mark, scale = HF_PARAMETER_MARKS[strategy], STRATEGY_REGISTRY[strategy].learning_rate_scale
    return lambda name: scale if mark in name else 1.0


def hf_decay_groups(model, weight_decay: float, lr: float | None = None,
                    lr_scale: Callable[[str], float] | None = None) -> list[dict]:
    """The transformers Trainer's AdamW groups: no decay on biases and LayerNorm weights; with `lr` and
    `lr_scale`, each group split further by its parameters' rate (lr x lr_scale(name)), as our trainer's."""
    groups: dict[tuple[bool, float], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            no_decay = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
            groups.setdefault((no_decay, lr_scale(name) if lr_scale else 1.0), []).append(parameter)
    ordered = sorted(groups.items(), key=lambda item: item[0])  # decay first, as before
    return [{"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
             **({"lr": lr * scale} if lr_scale else {})} for (no_decay, scale), params in ordered]


def train_reference(model, loader, *, lr: float, total_steps: int, warmup_steps: int, weight_decay: float = 0.0,
                    schedule: str = "ours", lr_scale: Callable[[str], float] | None = None) -> list[float]:
    """A plain torch loop: AdamW, a linear schedule (`ours`, or `transformers` for
    get_linear_schedule_with_warmup, which warms up from 0), gradients clipped at norm 1, as many
    passes over `loader` as `total_steps` needs. `lr_scale`: parameter name -> factor of `lr`
    (hf_learning_rate_scale; None: one rate). Returns the loss of every step."""
    optimizer = torch.optim.AdamW(hf_decay_groups(model, weight_decay, lr, lr_scale), lr=lr)
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


# ---- the other strategies' twins (issue 39) ------------------------------------------------------------


def our_modules(model, kind) -> dict[str, torch.nn.Module]:
    """{module name: module} of every module of type `kind` (exactly) in our injected model."""
    return {name: module for name, module in model.named_modules() if type(module) is kind}


def _ranked_config(config_class, ranks: dict[str, int], alpha_of, task_type: str, **settings):
    """A peft config on exactly `ranks`' modules, rank for rank (rank_pattern, alpha_pattern)."""
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    return config_class(task_type=task_type, target_modules=list(ranks), r=common, rank_pattern={
        name: rank for name, rank in ranks.items() if rank != common}, **settings, **alpha_of(common, ranks))


def hf_twin(strategy: str, bare_model, ours, task_type: str = "SEQ_CLS"):
    """HF peft's `strategy` on `bare_model` (modified in place) on exactly the modules our injected model
    `ours` adapts, with our sizes and scalings, no dropout, the task head trained; our trained tensors
    (and head) copied in, so both start equal. DoRA: LoraConfig(use_dora=True), alpha = 2r; rsLoRA:
    LoraConfig(use_rslora=True), alpha 8; LoHa: LoHaConfig, alpha = 2r; VeRA: VeraConfig(r=256,
    projection_prng_key=0, d_initial=0.1); (IA)3: IA3Config on our keys, values and feed-forward
    output projections (those feed-forward)."""
    import peft

    from peft_search.peft.strategies.dora import DoraLinear
    from peft_search.peft.strategies.ia3 import Ia3Input, Ia3Output
    from peft_search.peft.strategies.loha import LohaLinear
    from peft_search.peft.strategies.rslora import RSLORA_ALPHA, RsLoraLinear
    from peft_search.peft.strategies.vera import VERA_D_INITIAL, VERA_PRNG_KEY, VERA_RANK, VeraLinear

    def lora_alpha(common, ranks):
        return {"lora_alpha": 2 * common, "alpha_pattern": {n: 2 * r for n, r in ranks.items() if r != common}}

    copies: list[tuple[str, torch.Tensor]] = []  # (peft's parameter name under the layer, our tensor)
    if strategy in ("dora", "rslora"):
        modules = our_modules(ours, DoraLinear if strategy == "dora" else RsLoraLinear)
        ranks = {name: module.lora_A.out_features for name, module in modules.items()}
        settings = ({"use_dora": True} if strategy == "dora"
                    else {"use_rslora": True, "lora_alpha": RSLORA_ALPHA})
        alpha = lora_alpha if strategy == "dora" else (lambda common, ranks: {})
        config = _ranked_config(peft.LoraConfig, ranks, alpha, task_type, lora_dropout=0.0, **settings)
        for name, module in modules.items():
            copies += [(f"{name}.lora_A.default.weight", module.lora_A.weight),
                       (f"{name}.lora_B.default.weight", module.lora_B.weight)]
            if strategy == "dora":
                copies.append((f"{name}.lora_magnitude_vector.default.weight", module.magnitude))
    elif strategy == "loha":
        modules = our_modules(ours, LohaLinear)
        ranks = {name: module.loha.hada_w1_b.shape[0] for name, module in modules.items()}
        config = _ranked_config(peft.LoHaConfig, ranks, lambda common, ranks: {
            "alpha": 2 * common, "alpha_pattern": {n: 2 * r for n, r in ranks.items() if r != common}}, task_type)
        for name, module in modules.items():
            copies += [(f"{name}.{factor}.default", getattr(module.loha, factor))
                       for factor in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")]
    elif strategy == "vera":
        modules = our_modules(ours, VeraLinear)
        config = peft.VeraConfig(task_type=task_type, target_modules=list(modules), r=VERA_RANK, vera_dropout=0.0,
                                 d_initial=VERA_D_INITIAL, projection_prng_key=VERA_PRNG_KEY)
        for name, module in modules.items():
            copies += [(f"{name}.vera_lambda_d.default", module.vera.vera_lambda_d),
                       (f"{name}.vera_lambda_b.default", module.vera.vera_lambda_b)]
    elif strategy == "ia3":
        outputs, inputs = our_modules(ours, Ia3Output), our_modules(ours, Ia3Input)
        config = peft.IA3Config(task_type=task_type, target_modules=[*outputs, *inputs], feedforward_modules=list(inputs))
        copies += [(f"{name}.ia3_l.default", module.ia3_l) for name, module in {**outputs, **inputs}.items()]
    else:
        raise ValueError(strategy)
    twin = peft.get_peft_model(bare_model, config)
    theirs = dict(twin.named_parameters())
    head_names = {n for n, p in ours.named_parameters() if p.requires_grad and n.split(".")[0] in ("classifier", "score")}
    with torch.no_grad():
        for name, tensor in copies:
            target = theirs[f"base_model.model.{name}"]
            target.copy_(tensor.reshape(target.shape))
        for name in head_names:
            module, rest = name.split(".", 1)
            theirs[f"base_model.model.{module}.modules_to_save.default.{rest}"].copy_(dict(ours.named_parameters())[name])
    return twin
