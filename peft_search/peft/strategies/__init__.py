"""The strategy registry (docs/design.md, "Strategies"): every PEFT strategy the design space names,
one module each. Adding a strategy is one module here, its name in `space.components.STRATEGIES`,
and its tests; budget, injection and the optimiser's groups only read this registry."""

from __future__ import annotations

from peft_search.peft.model_parts import backbone_parameters
from peft_search.peft.strategies.adapter import ADAPTER, Adapter, AdaptedLinear
from peft_search.peft.strategies.base import Strategy, WrappedLinear, linear_features
from peft_search.peft.strategies.bitfit import BITFIT
from peft_search.peft.strategies.dora import DORA
from peft_search.peft.strategies.ia3 import IA3
from peft_search.peft.strategies.loha import LOHA
from peft_search.peft.strategies.lora import LORA, LORA_SCALING, LoraLinear
from peft_search.peft.strategies.prefix import PREFIX, PREFIX_ATTENTION, Prefix
from peft_search.peft.strategies.rslora import RSLORA
from peft_search.peft.strategies.vera import VERA
from peft_search.space import STRATEGIES

STRATEGY_REGISTRY: dict[str, Strategy] = {s.name: s for s in (ADAPTER, PREFIX, BITFIT, LORA, DORA, IA3, VERA, LOHA, RSLORA)}
if tuple(STRATEGY_REGISTRY) != STRATEGIES:  # the space's vocabulary and the registry are one list
    raise ImportError(f"strategy registry {tuple(STRATEGY_REGISTRY)} differs from the space's {STRATEGIES}")

HEAD = "head"  # the task head: outside the backbone, always trained
HEAD_LEARNING_RATE_SCALE = 1.0


def learning_rate_scale(group: str) -> float:
    """The multiple of the base rate a parameter group trains at: a strategy's, or the head's."""
    return HEAD_LEARNING_RATE_SCALE if group == HEAD else STRATEGY_REGISTRY[group].learning_rate_scale


def injection_order(strategies) -> list[Strategy]:
    return sorted((STRATEGY_REGISTRY[name] for name in strategies), key=lambda s: s.injection_order)


def trainable_parameters_by_strategy(model) -> dict[str, list]:
    """The trainable parameters of an injected model by what they belong to: each strategy's modules
    claim theirs (`Strategy.own_parameters`); the other trainable backbone tensors are BitFit's (the
    backbone's own biases), and everything outside the backbone is the `head`. The optimiser gives
    each group its learning rate."""
    groups: dict[str, list] = {name: [] for name in STRATEGY_REGISTRY} | {HEAD: []}
    claimed: set[int] = set()
    for module in model.modules():
        for strategy in STRATEGY_REGISTRY.values():
            parameters = strategy.own_parameters(module)
            if parameters is None:
                continue
            for parameter in parameters:
                if parameter.requires_grad and id(parameter) not in claimed:
                    groups[strategy.name].append(parameter)
                    claimed.add(id(parameter))
    backbone = {id(p) for p in backbone_parameters(model)}
    for parameter in model.parameters():
        if parameter.requires_grad and id(parameter) not in claimed:
            groups[BITFIT.name if id(parameter) in backbone else HEAD].append(parameter)
            claimed.add(id(parameter))
    return groups


__all__ = [
    "ADAPTER", "BITFIT", "DORA", "HEAD", "IA3", "LOHA", "LORA", "RSLORA", "VERA", "LORA_SCALING", "PREFIX", "PREFIX_ATTENTION", "STRATEGY_REGISTRY",
    "AdaptedLinear", "Adapter", "LoraLinear", "Prefix", "Strategy", "WrappedLinear", "injection_order",
    "learning_rate_scale", "linear_features", "trainable_parameters_by_strategy",
]  # fmt: skip
