"""LoHa: low-rank Hadamard product (LyCORIS; Hyeon-Woo et al., "FedPara", ICLR 2022; HF peft's
`LoHaConfig`), on LoRA's projections (docs/design.md, "Strategies").

The update is dW = s (W1a W1b) * (W2a W2b), the elementwise product of two rank-r products (out x in),
so rank r buys an update of rank up to r^2 for twice LoRA's parameters. HF peft's initialisation:
W1a, W1b and W2a Kaiming-uniform, W2b zero (dW starts at zero). Scaling s = alpha / r with alpha = 2r,
a constant 2 as for our LoRA (one learning rate for every block's rank). The layer adds x dW^T to the
output of the projection it wraps.

Cost per projection: 2 x rank x (in + out)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peft_search.peft.strategies.base import Strategy, WrappedLinear, as_bare_weight, dense_weight, linear_features
from peft_search.peft.strategies.lora import adapt_projections, projections_cost

LOHA_SCALING = 2.0


class HadamardProduct(torch.autograd.Function):
    """s (W1a W1b) * (W2a W2b), saving only the four factors for the backward pass and recomputing the two
    out x in products there (as HF peft's LyCORIS-derived `HadaWeight` does): autograd would otherwise keep
    both products, two more weight-sized matrices per projection."""

    @staticmethod
    def forward(ctx, w1a, w1b, w2a, w2b, scaling: float):
        ctx.save_for_backward(w1a, w1b, w2a, w2b)
        ctx.scaling = scaling
        return (w1a @ w1b) * (w2a @ w2b) * scaling

    @staticmethod
    def backward(ctx, grad_out):
        w1a, w1b, w2a, w2b = ctx.saved_tensors
        grad_out = grad_out * ctx.scaling
        through_first = grad_out * (w2a @ w2b)
        through_second = grad_out * (w1a @ w1b)
        return through_first @ w1b.T, w1a.T @ through_first, through_second @ w2b.T, w2a.T @ through_second, None


class HadamardFactors(nn.Module):
    """The four factors of a LoHa update of an (out, in) weight, with HF peft's names and initialisation."""

    def __init__(self, in_features: int, out_features: int, rank: int, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.hada_w1_a = nn.Parameter(torch.empty(out_features, rank, **factory))
        self.hada_w1_b = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.hada_w2_a = nn.Parameter(torch.empty(out_features, rank, **factory))
        self.hada_w2_b = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.scaling = LOHA_SCALING
        if self.hada_w1_a.device.type != "meta":
            for factor in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a):
                nn.init.kaiming_uniform_(factor, a=math.sqrt(5))
            nn.init.zeros_(self.hada_w2_b)

    def delta_weight(self) -> torch.Tensor:
        return HadamardProduct.apply(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scaling)

    @staticmethod
    def param_count(projection, rank: int) -> int:
        return 2 * rank * sum(linear_features(projection))


def _factors_for(projection, weight: torch.Tensor, rank: int) -> HadamardFactors:
    in_features, out_features = linear_features(projection)
    return HadamardFactors(in_features, out_features, rank, device=weight.device, dtype=weight.dtype)


class LohaLinear(WrappedLinear):
    """A projection plus its LoHa update: y + x dW^T."""

    def __init__(self, base_layer: nn.Module, rank: int):
        super().__init__(base_layer)
        self.loha = _factors_for(base_layer, base_layer.weight, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + F.linear(x, self.loha.delta_weight())


class LohaWeight(nn.Module):
    """LoHa on a bare (in, heads, head size) weight (xlnet's q and v), as a parametrization: W + dW."""

    def __init__(self, weight: torch.Tensor, rank: int):
        super().__init__()
        self.loha = _factors_for(weight, weight, rank)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return as_bare_weight(dense_weight(weight) + self.loha.delta_weight(), weight)


class LohaStrategy(Strategy):
    name = "loha"
    size_field = "loha_rank"
    learning_rate_scale = 1.0

    def unit_cost(self, site) -> int:
        return projections_cost(site, lambda projection: HadamardFactors.param_count(projection, 1))

    def inject(self, site, size: int) -> None:
        adapt_projections(site, lambda layer: LohaLinear(layer, size), lambda weight: LohaWeight(weight, size))

    def own_parameters(self, module):
        return list(module.parameters()) if isinstance(module, HadamardFactors) else None


LOHA = LohaStrategy()
