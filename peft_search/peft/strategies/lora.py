"""LoRA on the attention projections the backbone registry names (query and value; gpt2's fused
c_attn; xlnet's bare q and v weights), docs/design.md, "Modules": W x + scaling B A x, A
Kaiming-uniform, B zero, as in HF peft."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from peft_search.peft.strategies.base import Strategy, WrappedLinear, linear_features

# LoRA's update is scaled by alpha / rank with alpha = 2 * rank: the budget gives each block its own
# rank, and a rank-independent scale keeps one learning rate right for all of them.
LORA_SCALING = 2.0


def lora_factors(projection: nn.Module | torch.Tensor, weight: torch.Tensor, rank: int) -> tuple[nn.Linear, nn.Linear]:
    """LoRA's A (rank x in, Kaiming-uniform) and B (out x rank, zero) for `projection`, on its
    weight's device and dtype: HF peft's initialisation, so the update starts at zero."""
    in_features, out_features = linear_features(projection)
    factory = {"device": weight.device, "dtype": weight.dtype}
    lora_A = nn.Linear(in_features, rank, bias=False, **factory)
    lora_B = nn.Linear(rank, out_features, bias=False, **factory)
    if weight.device.type != "meta":
        nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(lora_B.weight)
    return lora_A, lora_B


class LoraLinear(WrappedLinear):
    """W x + scaling * B A x, with A Kaiming-uniform and B zero (starts as identity), as in HF peft."""

    def __init__(self, base_layer: nn.Module, rank: int, scaling: float = LORA_SCALING):
        super().__init__(base_layer)
        self.lora_A, self.lora_B = lora_factors(base_layer, base_layer.weight, rank)
        self.scaling = scaling

    @property
    def rank(self) -> int:
        return self.lora_A.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling

    @staticmethod
    def param_count(linear: nn.Module, rank: int) -> int:
        return rank * sum(linear_features(linear))


class LoraWeight(nn.Module):
    """LoRA on a projection the attention holds as a bare weight of shape (in, heads, head size) and
    multiplies in an einsum (xlnet's q and v): a parametrization (torch.nn.utils.parametrize, as HF
    peft's `target_parameters` does) that reads the weight as W + scaling (B A)^T. x W then equals
    x W + scaling B A x of `LoraLinear`, computed from the same A and B."""

    def __init__(self, weight: torch.Tensor, rank: int, scaling: float = LORA_SCALING):
        super().__init__()
        self.lora_A, self.lora_B = lora_factors(weight, weight, rank)
        self.scaling = scaling

    @property
    def rank(self) -> int:
        return self.lora_A.out_features

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        update = (self.lora_B.weight @ self.lora_A.weight).T * self.scaling  # (in, out)
        return weight + update.reshape(weight.shape).to(weight.dtype)


def adapt_projections(site, on_linear, on_bare_weight) -> None:
    """Put a module on each of the block's LoRA projections (query and value; gpt2's fused c_attn):
    `on_linear(layer)` replaces a layer (a `WrappedLinear`); `on_bare_weight(weight)` is registered as
    a parametrization of a bare weight (xlnet's q and v: torch.nn.utils.parametrize, as HF peft's
    `target_parameters`). Every low-rank strategy enters where LoRA does."""
    for attention in site.attentions:
        for name in attention.lora_projections:
            projection = attention.projection(name)
            if isinstance(projection, torch.Tensor):
                parametrize.register_parametrization(attention.module, name, on_bare_weight(projection))
            else:
                setattr(attention.module, name, on_linear(projection))


def projections_cost(site, cost_of) -> int:
    """`cost_of(projection)` summed over the block's LoRA projections."""
    return sum(cost_of(a.projection(p)) for a in site.attentions for p in a.lora_projections)


class LoraStrategy(Strategy):
    name = "lora"
    size_field = "lora_rank"
    learning_rate_scale = 1.0
    modules = (LoraLinear, LoraWeight)  # exactly these: rsLoRA's subclasses are its own

    def unit_cost(self, site) -> int:
        return projections_cost(site, lambda projection: LoraLinear.param_count(projection, 1))

    def inject(self, site, size: int) -> None:
        adapt_projections(site, lambda layer: LoraLinear(layer, size), lambda weight: LoraWeight(weight, size))

    def own_parameters(self, module):
        return [module.lora_A.weight, module.lora_B.weight] if type(module) in self.modules else None


LORA = LoraStrategy()
