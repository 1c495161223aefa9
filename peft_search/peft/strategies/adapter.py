"""Adapter: a sequential bottleneck after the block's feed-forward output projection (docs/design.md,
"Modules"): h + up(ReLU(down(h))), up zero-initialised, so the injected model starts as the backbone."""

from __future__ import annotations

import torch
from torch import nn

from peft_search.peft.strategies.base import Strategy, WrappedLinear, linear_features


class Adapter(nn.Module):
    """Sequential bottleneck adapter: h + up(relu(down(h))); up is zero-initialised (starts as identity)."""

    def __init__(self, hidden_size: int, bottleneck: int, device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck, device=device, dtype=dtype)
        self.activation = nn.ReLU()
        self.up = nn.Linear(bottleneck, hidden_size, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.up(self.activation(self.down(hidden_states)))

    @staticmethod
    def param_count(hidden_size: int, bottleneck: int) -> int:
        return bottleneck * (2 * hidden_size + 1) + hidden_size


class AdaptedLinear(WrappedLinear):
    """A block's feed-forward output projection followed by its adapter."""

    def __init__(self, base_layer: nn.Module, bottleneck: int):
        super().__init__(base_layer)
        weight = base_layer.weight
        self.adapter = Adapter(linear_features(base_layer)[1], bottleneck, device=weight.device, dtype=weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base_layer(x))


class AdapterStrategy(Strategy):
    name = "adapter"
    size_field = "adapter_size"  # the bottleneck dimension
    learning_rate_scale = 1.0

    def fixed_cost(self, site) -> int:
        return Adapter.param_count(self._hidden(site), 0)  # the up-projection's bias

    def unit_cost(self, site) -> int:
        hidden = self._hidden(site)
        return Adapter.param_count(hidden, 1) - Adapter.param_count(hidden, 0)

    def inject(self, site, size: int) -> None:
        output_layer = getattr(site.ffn_parent, site.ffn_output)
        setattr(site.ffn_parent, site.ffn_output, AdaptedLinear(output_layer, size))

    def own_parameters(self, module):
        return list(module.adapter.parameters()) if isinstance(module, AdaptedLinear) else None

    @staticmethod
    def _hidden(site) -> int:
        return linear_features(site.ffn_output_layer())[1]


ADAPTER = AdapterStrategy()
