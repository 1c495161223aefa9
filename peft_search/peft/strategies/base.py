"""What every PEFT strategy is (docs/design.md, "Strategies"): one `Strategy` per module in this
package, owning its modules, its parameter cost, how it enters a block, which parameters are its
own, and its learning-rate scale. Budget, injection and the optimiser read the registry
(`peft_search.peft.strategies.STRATEGY_REGISTRY`) and never name a strategy.
"""

from __future__ import annotations

import torch
from torch import nn


def linear_features(layer: nn.Module | torch.Tensor) -> tuple[int, int]:
    """(in, out) of a projection: an `nn.Linear`; transformers' `Conv1D` (gpt2), which computes
    x @ W + b with W stored as (in, out), the transpose of a Linear's (HF peft's `fan_in_fan_out`);
    or a bare weight of shape (in, heads, head size) that the attention multiplies in an einsum
    (xlnet's q, k, v: out = heads x head size). A projection another strategy wraps is read through
    to the backbone's own layer."""
    layer = unwrapped(layer)
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, torch.Tensor):
        return layer.shape[0], layer[0].numel()
    from transformers.pytorch_utils import Conv1D

    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    raise TypeError(f"not a projection: {type(layer).__name__}")


def unwrapped(layer):
    """The backbone's own projection under any strategies' wrappers (`WrappedLinear.base_layer`)."""
    while isinstance(getattr(layer, "base_layer", None), nn.Module):
        layer = layer.base_layer
    return layer


def dense_weight(layer: nn.Module | torch.Tensor) -> torch.Tensor:
    """A projection's frozen weight as an (out, in) matrix, as `nn.Linear` stores it: a Linear's own,
    a `Conv1D`'s transposed, a bare (in, heads, head size) weight flattened and transposed."""
    if isinstance(layer, torch.Tensor):
        return layer.reshape(layer.shape[0], -1).T
    layer = unwrapped(layer)
    return layer.weight if isinstance(layer, nn.Linear) else layer.weight.T


def as_bare_weight(dense: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An (out, in) matrix back in the layout of the bare weight `like` (in, heads, head size)."""
    return dense.T.reshape(like.shape).to(like.dtype)


class WrappedLinear(nn.Module):
    """A backbone linear layer with a PEFT module around it, kept as `base_layer` (HF peft's
    BaseTunerLayer does the same): its parameters keep their place in the state dict, under
    `base_layer.`, and the backbone still sees the layer's weight and bias."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    # Backbones read their projections' weights directly (T5 checks `wo.weight.dtype`).
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias


class Strategy:
    """One PEFT strategy. A block's plan (`BlockPlan`) holds each strategy's size under
    `size_field`; `elastic` strategies get their size from the budget (one unit costs `unit_cost`
    parameters in a block, on top of `fixed_cost`), the others have a fixed size (their
    `fixed_cost`). `site` is a block of the backbone registry (`peft.backbones.BlockSite`)."""

    name: str
    size_field: str  # the BlockPlan field that holds its size in a block
    elastic: bool = True  # the budget sets its size; False: it costs `fixed_cost`, whatever the budget
    learning_rate_scale: float = 1.0  # its parameters train at the trial's base rate x this
    # Lower first, within a block: BitFit (0) before any other module exists; DoRA (1) on the bare
    # projection, whose output it rescales; the additive updates (2); (IA)3 (3) last, rescaling a
    # projection's whole output (docs/design.md, "Strategies": mixing in one block).
    injection_order: int = 2

    def fixed_cost(self, site) -> int:
        """Parameters it costs in the block at any size."""
        return 0

    def unit_cost(self, site) -> int:
        """Parameters one more unit of size costs in the block (elastic strategies)."""
        raise NotImplementedError(f"{self.name} has a fixed size")

    def inject(self, site, size: int) -> None:
        """Add its modules of `size` to the block (frozen backbone already), trainable."""
        raise NotImplementedError

    def own_parameters(self, module: nn.Module) -> list[nn.Parameter] | None:
        """The parameters `module` holds for this strategy when it is one of its modules, else None."""
        return None

    def activate(self, model, sites) -> None:
        """Once per model, after injection, when any block uses this strategy (`sites`: every block)."""

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"
