"""VeRA: vector-based random matrix adaptation (Kopiczko et al., ICLR 2024; HF peft's `VeraConfig`), on
LoRA's projections (docs/design.md, "Strategies").

One pair of frozen random matrices is shared by the whole model: A (r x the widest input) and B (the
widest output x r), Kaiming-uniform from a generator seeded with VERA_PRNG_KEY (HF peft's
`projection_prng_key`, 0), so they are never saved and the same on every load. Each projection trains
two vectors: d (r, starting at 0.1, HF peft's `d_initial`) and b (out, starting at 0, so the model
starts as the backbone), and adds b * (B[:out] (d * (A[:, :in] x))).

A fixed size, as BitFit: the rank is VERA_RANK (HF peft's default, 256) in every block, and a
projection costs r + out trained parameters whatever the budget. (A rank set by the budget would grow
the frozen matrices and their compute with it: at T5-base's 0.5% a block's share buys a rank of
tens of thousands.)"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peft_search.peft.strategies.base import Strategy, WrappedLinear, as_bare_weight, dense_weight, linear_features
from peft_search.peft.strategies.lora import adapt_projections, projections_cost

VERA_RANK = 256
VERA_PRNG_KEY = 0
VERA_D_INITIAL = 0.1


def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Kaiming-uniform with gain sqrt(2) (a ReLU's), from `generator`: HF peft's `_kaiming_init`."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeraProjections(nn.Module):
    """The model's one pair of frozen random matrices; every VeRA layer holds this same module, so a
    device move moves them once (nn.Module visits a shared child once per parent, the tensors once)."""

    def __init__(self, rank: int, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        generator = torch.Generator(device="cpu").manual_seed(VERA_PRNG_KEY)
        vera_A = _kaiming_uniform((rank, in_features), generator)
        vera_B = _kaiming_uniform((out_features, rank), generator)
        self.register_buffer("vera_A", vera_A.to(device=device, dtype=dtype), persistent=False)
        self.register_buffer("vera_B", vera_B.to(device=device, dtype=dtype), persistent=False)


class VeraVectors(nn.Module):
    """One projection's trained vectors, d (rank) and b (out)."""

    def __init__(self, in_features: int, out_features: int, rank: int, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.vera_lambda_d = nn.Parameter(torch.full((rank,), VERA_D_INITIAL, device=device, dtype=dtype))
        self.vera_lambda_b = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
        self.projections: VeraProjections | None = None  # set once the model's layers are known (`activate`)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """b * (B (d * (A x))), A and B sliced to this projection's shape, as in HF peft."""
        vera_A = self.projections.vera_A[:, : self.in_features]
        vera_B = self.projections.vera_B[: self.out_features, :]
        return self.vera_lambda_b * F.linear(self.vera_lambda_d * F.linear(x, vera_A), vera_B)

    def delta_weight(self) -> torch.Tensor:
        if self.projections is None:
            # Only between injection and `activate`, while b is still 0, so the update is exactly zero:
            # parametrize's trial call of a bare weight's chain (another strategy registered after VeRA's).
            return self.vera_lambda_b.new_zeros(self.out_features, self.in_features)
        vera_A = self.projections.vera_A[:, : self.in_features]
        vera_B = self.projections.vera_B[: self.out_features, :]
        return self.vera_lambda_b[:, None] * (vera_B * self.vera_lambda_d[None]) @ vera_A

    @staticmethod
    def param_count(projection, rank: int = VERA_RANK) -> int:
        return rank + linear_features(projection)[1]


def _vectors_for(projection, weight: torch.Tensor) -> VeraVectors:
    in_features, out_features = linear_features(projection)
    return VeraVectors(in_features, out_features, VERA_RANK, device=weight.device, dtype=weight.dtype)


class VeraLinear(WrappedLinear):
    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.vera = _vectors_for(base_layer, base_layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.vera.output(x)


class VeraWeight(nn.Module):
    """VeRA on a bare (in, heads, head size) weight (xlnet's q and v), as a parametrization: W + dW."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.vera = _vectors_for(weight, weight)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return as_bare_weight(dense_weight(weight) + self.vera.delta_weight(), weight)


class VeraStrategy(Strategy):
    name = "vera"
    size_field = "vera_params"  # a fixed size: its parameter count, as BitFit's
    elastic = False
    learning_rate_scale = 10.0  # its few vectors stay near chance at the base rate (docs/design.md, "Learning rates")

    def fixed_cost(self, site) -> int:
        return projections_cost(site, VeraVectors.param_count)

    def inject(self, site, size: int) -> None:
        adapt_projections(site, VeraLinear, VeraWeight)

    def own_parameters(self, module):
        return [module.vera_lambda_d, module.vera_lambda_b] if isinstance(module, VeraVectors) else None

    def activate(self, model, sites) -> None:
        """One pair of frozen matrices for every VeRA layer of the model, as wide as the widest."""
        layers = [m for m in model.modules() if isinstance(m, VeraVectors)]
        if not layers:
            return
        reference = layers[0].vera_lambda_b
        projections = VeraProjections(VERA_RANK, max(m.in_features for m in layers), max(m.out_features for m in layers),
                                      device=reference.device, dtype=reference.dtype)
        for layer in layers:
            layer.projections = projections


VERA = VeraStrategy()
