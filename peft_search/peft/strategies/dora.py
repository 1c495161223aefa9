"""DoRA: weight-decomposed low-rank adaptation (Liu et al., ICML 2024; HF peft's
`LoraConfig(use_dora=True)`), on LoRA's projections (docs/design.md, "Strategies").

The adapted weight is m * (W + s B A) / ||W + s B A||, its rows' norms (one per output) detached from
the gradient as the paper's section 4.3 and HF peft do; m, a trained magnitude per output, starts at
the rows' norms of W (B is zero), so the model starts as the backbone. As HF peft computes it, the
output is the frozen layer's plus (m / norm - 1) x W x + (m / norm) s B A x, the layer's own output
reused (its bias not rescaled). LoRA's A, B and scaling (alpha = 2r: s = 2).

Cost per projection: rank x (in + out), plus `out` for the magnitude at any rank (its fixed cost).
DoRA wraps the backbone's projection before every other strategy but BitFit (injection order 1), so
the rescaled output is the frozen weight's alone: another low-rank update on the same projection (LoRA,
LoHa, ...) adds to it unscaled, and (IA)3 rescales the sum.

The weight norm is recomputed at every forward, in training and evaluation, as HF peft does by
default (its `ENABLE_DORA_CACHING` is off: the norm depends on B A, which changes every step)."""

from __future__ import annotations

import torch
from torch import nn

from peft_search.peft.strategies.base import Strategy, WrappedLinear, as_bare_weight, dense_weight, linear_features, unwrapped
from peft_search.peft.strategies.lora import LORA_SCALING, adapt_projections, lora_factors, projections_cost


def initial_magnitude(weight: torch.Tensor) -> nn.Parameter:
    """The rows' norms of an (out, in) weight: DoRA's magnitude at B = 0."""
    return nn.Parameter(torch.linalg.norm(weight.detach(), dim=1))


class DoraLinear(WrappedLinear):
    """A projection under DoRA: W x + b + (m / ||W + s B A|| - 1) W x + (m / ||W + s B A||) s B A x."""

    def __init__(self, base_layer: nn.Module, rank: int):
        super().__init__(base_layer)
        self.lora_A, self.lora_B = lora_factors(base_layer, base_layer.weight, rank)
        self.scaling = LORA_SCALING
        self.magnitude = initial_magnitude(dense_weight(base_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        weight = dense_weight(self.base_layer)
        update = self.lora_B.weight @ self.lora_A.weight
        norm = torch.linalg.norm(weight + self.scaling * update.detach(), dim=1).detach()
        scale = self.magnitude / norm
        bias = unwrapped(self.base_layer).bias
        # result + (scale - 1)(result - bias) + scale s B A x, with the per-output factors folded into
        # vectors first: three full-size operations where the literal form takes five.
        rescaled = result * scale + bias * (1 - scale) if bias is not None else result * scale
        return rescaled + self.lora_B(self.lora_A(x)) * (scale * self.scaling)

    @staticmethod
    def param_count(projection, rank: int) -> int:
        in_features, out_features = linear_features(projection)
        return rank * (in_features + out_features) + out_features


class DoraWeight(nn.Module):
    """DoRA on a bare (in, heads, head size) weight (xlnet's q and v), as a parametrization: the weight
    read as m * (W + s B A) / ||W + s B A|| (rows of the (out, in) matrix), what `DoraLinear` computes."""

    def __init__(self, weight: torch.Tensor, rank: int):
        super().__init__()
        self.lora_A, self.lora_B = lora_factors(weight, weight, rank)
        self.scaling = LORA_SCALING
        self.magnitude = initial_magnitude(dense_weight(weight))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dense = dense_weight(weight)
        update = self.lora_B.weight @ self.lora_A.weight
        norm = torch.linalg.norm(dense + self.scaling * update.detach(), dim=1).detach()
        return as_bare_weight((dense + self.scaling * update) * (self.magnitude / norm)[:, None], weight)


class DoraStrategy(Strategy):
    name = "dora"
    size_field = "dora_rank"
    learning_rate_scale = 1.0
    injection_order = 1  # on the bare projection: see the module docstring

    def fixed_cost(self, site) -> int:
        return projections_cost(site, lambda projection: linear_features(projection)[1])  # the magnitudes

    def unit_cost(self, site) -> int:
        return projections_cost(site, lambda projection: sum(linear_features(projection)))

    def inject(self, site, size: int) -> None:
        adapt_projections(site, lambda layer: DoraLinear(layer, size), lambda weight: DoraWeight(weight, size))

    def own_parameters(self, module):
        if isinstance(module, (DoraLinear, DoraWeight)):
            return [module.lora_A.weight, module.lora_B.weight, module.magnitude]
        return None


DORA = DoraStrategy()
