"""rsLoRA: LoRA with rank-stabilised scaling (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor
for Fine-Tuning with LoRA"; HF peft's `LoraConfig(use_rslora=True)`): the update B A x is scaled by
alpha / sqrt(r) instead of alpha / r, so that a larger rank learns as fast as a small one instead of
slower. Same modules, places and cost as LoRA (docs/design.md, "Strategies").

alpha is fixed at RSLORA_ALPHA, HF peft's default `lora_alpha` (8): the budget gives each block its own
rank, and the scaling then follows the rank as rsLoRA prescribes. (Our `lora` keeps alpha = 2r, a
constant scale of 2 at every rank.)"""

from __future__ import annotations

import math

from peft_search.peft.strategies.lora import LoraLinear, LoraStrategy, LoraWeight, adapt_projections

RSLORA_ALPHA = 8.0


def rslora_scaling(rank: int) -> float:
    return RSLORA_ALPHA / math.sqrt(rank)


class RsLoraLinear(LoraLinear):
    """LoRA on a projection, scaled by alpha / sqrt(rank)."""

    def __init__(self, base_layer, rank: int):
        super().__init__(base_layer, rank, scaling=rslora_scaling(rank))


class RsLoraWeight(LoraWeight):
    """LoRA on a bare weight (xlnet), scaled by alpha / sqrt(rank)."""

    def __init__(self, weight, rank: int):
        super().__init__(weight, rank, scaling=rslora_scaling(rank))


class RsLoraStrategy(LoraStrategy):
    name = "rslora"
    size_field = "rslora_rank"
    learning_rate_scale = 1.0
    modules = (RsLoraLinear, RsLoraWeight)

    def inject(self, site, size: int) -> None:
        adapt_projections(site, lambda layer: RsLoraLinear(layer, size), lambda weight: RsLoraWeight(weight, size))


RSLORA = RsLoraStrategy()
