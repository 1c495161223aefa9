"""(IA)3: infused adapter by inhibiting and amplifying inner activations (Liu et al., "Few-Shot
Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning", NeurIPS 2022; HF peft's
`IA3Config`), docs/design.md, "Strategies".

Learned vectors, initialised to one (the model starts as the backbone), that rescale the keys and the
values of every attention of the block (the projections' outputs, bias included, as HF peft scales
them) and the input of the feed-forward output projection (the paper's "intermediate activations"; HF
peft's `feedforward_modules`). Where the keys and values come from one fused projection (gpt2's
c_attn) its whole output is rescaled, HF peft's default for gpt2. On BERT-like families HF peft's
default target `output.dense` also matches the attention's output projection; ours follows the paper
(keys, values, feed-forward).

A fixed size, as BitFit: the block's key and value widths plus the feed-forward output projection's
input width. Injected last in a block (order 3): it rescales a projection's whole output, every other
strategy's update included."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from peft_search.peft.strategies.base import Strategy, WrappedLinear, linear_features


def _ones(size: int, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.ones(size, device=like.device, dtype=like.dtype))


class Ia3Output(WrappedLinear):
    """A projection whose output is rescaled: y * l."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.ia3_l = _ones(linear_features(base_layer)[1], base_layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * self.ia3_l


class Ia3Input(WrappedLinear):
    """A projection whose input is rescaled: f(x * l)."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.ia3_l = _ones(linear_features(base_layer)[0], base_layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x * self.ia3_l)


class Ia3Weight(nn.Module):
    """A bare (in, heads, head size) weight whose outputs are rescaled (xlnet's k and v), as a
    parametrization: every output column of W times its l."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.ia3_l = _ones(linear_features(weight)[1], weight)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.ia3_l.reshape(weight.shape[1:]).to(weight.dtype)


def _rescaled_projections(site) -> list[tuple[nn.Module, str]]:
    """(attention module, projection name) of every key and value projection of the block, once each."""
    names = []
    for attention in site.attentions:
        for name in dict.fromkeys((attention.key, attention.value)):  # gpt2: one fused c_attn
            names.append((attention, name))
    return names


class Ia3Strategy(Strategy):
    name = "ia3"
    size_field = "ia3_params"  # a fixed size: its parameter count, as BitFit's
    elastic = False
    learning_rate_scale = 10.0  # its few vectors stay near chance at the base rate (docs/design.md, "Learning rates")
    injection_order = 3

    def fixed_cost(self, site) -> int:
        rescaled = sum(linear_features(attention.projection(name))[1] for attention, name in _rescaled_projections(site))
        return rescaled + linear_features(site.ffn_output_layer())[0]

    def inject(self, site, size: int) -> None:
        for attention, name in _rescaled_projections(site):
            projection = attention.projection(name)
            if isinstance(projection, torch.Tensor):
                parametrize.register_parametrization(attention.module, name, Ia3Weight(projection))
            else:
                setattr(attention.module, name, Ia3Output(projection))
        setattr(site.ffn_parent, site.ffn_output, Ia3Input(getattr(site.ffn_parent, site.ffn_output)))

    def own_parameters(self, module):
        return [module.ia3_l] if isinstance(module, (Ia3Output, Ia3Input, Ia3Weight)) else None


IA3 = Ia3Strategy()
