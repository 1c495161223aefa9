"""LoRA on the attention projections the backbone registry names (query and value; gpt2's fused
c_attn), docs/design.md, "Modules": W x + scaling B A x, A Kaiming-uniform, B zero, as in HF peft."""

from __future__ import annotations

import math

import torch
from torch import nn

from peft_search.peft.strategies.base import Strategy, WrappedLinear, linear_features

# LoRA's update is scaled by alpha / rank with alpha = 2 * rank: the budget gives each block its own
# rank, and a rank-independent scale keeps one learning rate right for all of them.
LORA_SCALING = 2.0


class LoraLinear(WrappedLinear):
    """W x + scaling * B A x, with A Kaiming-uniform and B zero (starts as identity), as in HF peft."""

    def __init__(self, base_layer: nn.Module, rank: int):
        super().__init__(base_layer)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        in_features, out_features = linear_features(base_layer)
        self.lora_A = nn.Linear(in_features, rank, bias=False, **factory)
        self.lora_B = nn.Linear(rank, out_features, bias=False, **factory)
        self.scaling = LORA_SCALING
        if weight.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)

    @property
    def rank(self) -> int:
        return self.lora_A.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling

    @staticmethod
    def param_count(linear: nn.Module, rank: int) -> int:
        return rank * sum(linear_features(linear))


class LoraStrategy(Strategy):
    name = "lora"
    size_field = "lora_rank"
    learning_rate_scale = 1.0

    def unit_cost(self, site) -> int:
        return sum(LoraLinear.param_count(a.projection(p), 1) for a in site.attentions for p in a.lora_projections)

    def inject(self, site, size: int) -> None:
        for attention in site.attentions:
            for projection in attention.lora_projections:
                setattr(attention.module, projection, LoraLinear(attention.projection(projection), size))

    def own_parameters(self, module):
        return [module.lora_A.weight, module.lora_B.weight] if isinstance(module, LoraLinear) else None


LORA = LoraStrategy()
