"""The four PEFT modules. Adapter and LoRA start as the identity, so an injected model's outputs equal
the backbone's before training; prefix cannot (its keys take attention mass), BitFit trivially does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# LoRA's update is scaled by alpha / rank with alpha = 2 * rank: the budget gives each block its own
# rank, and a rank-independent scale keeps one learning rate right for all of them.
LORA_SCALING = 2.0
PREFIX_INIT_STD = 0.02


def linear_features(layer: nn.Module) -> tuple[int, int]:
    """(in, out) of a projection: an `nn.Linear`, or transformers' `Conv1D` (gpt2), which computes
    x @ W + b with W stored as (in, out), the transpose of a Linear's (HF peft's `fan_in_fan_out`)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    from transformers.pytorch_utils import Conv1D

    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    raise TypeError(f"not a projection: {type(layer).__name__}")


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


class WrappedLinear(nn.Module):
    """A backbone linear layer with a PEFT module around it, kept as `base_layer` (HF peft's
    BaseTunerLayer does the same): its parameters keep their place in the state dict, under
    `base_layer.`, and the backbone still sees the layer's weight and bias."""

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer

    # Backbones read their projections' weights directly (T5 checks `wo.weight.dtype`).
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias


class AdaptedLinear(WrappedLinear):
    """A block's feed-forward output projection followed by its adapter."""

    def __init__(self, base_layer: nn.Linear, bottleneck: int):
        super().__init__(base_layer)
        weight = base_layer.weight
        self.adapter = Adapter(linear_features(base_layer)[1], bottleneck, device=weight.device, dtype=weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base_layer(x))


class LoraLinear(WrappedLinear):
    """W x + scaling * B A x, with A Kaiming-uniform and B zero (starts as identity), as in HF peft."""

    def __init__(self, base_layer: nn.Linear, rank: int):
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


class Prefix(nn.Module):
    """`length` learned key and value vectors per head, prepended to one attention's keys and values.

    The attention function in `peft_search.peft.attention` finds it as `module.peft_prefix` and also
    extends the attention mask (prefix positions are always visible) and any position bias.
    """

    def __init__(self, num_heads: int, head_dim: int, length: int, device=None, dtype=None):
        super().__init__()
        shape = (num_heads, length, head_dim)
        self.key = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.value = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        if self.key.device.type != "meta":
            nn.init.normal_(self.key, std=PREFIX_INIT_STD)
            nn.init.normal_(self.value, std=PREFIX_INIT_STD)

    @property
    def length(self) -> int:
        return self.key.shape[1]

    @staticmethod
    def param_count(kv_dim: int, length: int) -> int:
        return 2 * kv_dim * length

    def extend(self, query, key, value, attention_mask, kwargs: dict, is_causal: bool):
        """Keys, values, mask and keyword arguments with the prefix in front of the real positions."""
        batch = key.shape[0]
        key = torch.cat([self.key.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([self.value.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1), value], dim=2)
        length = self.length
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                visible = attention_mask.new_ones((*attention_mask.shape[:-1], length))
            else:
                visible = attention_mask.new_zeros((*attention_mask.shape[:-1], length))
            attention_mask = torch.cat([visible, attention_mask], dim=-1)
        elif is_causal and query.shape[2] > 1:
            # The attention would have relied on SDPA's is_causal, which cannot know about the prefix:
            # spell the causal mask out, with every prefix position visible.
            q_len, kv_len = query.shape[2], key.shape[2] - length
            causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
            prefix = torch.ones(q_len, length, dtype=torch.bool, device=query.device)
            attention_mask = torch.cat([prefix, causal], dim=-1)[None, None]
        position_bias = kwargs.get("position_bias")
        if position_bias is not None:
            pad = position_bias.new_zeros((*position_bias.shape[:-1], length))
            kwargs = {**kwargs, "position_bias": torch.cat([pad, position_bias], dim=-1)}
        return key, value, attention_mask, kwargs


def add_missing_biases(block: nn.Module) -> None:
    """Give every bias-free linear layer of a block a zero bias (BitFit on T5-like backbones)."""
    for module in list(block.modules()):
        if isinstance(module, nn.Linear) and module.bias is None:
            weight = module.weight
            module.bias = nn.Parameter(torch.zeros(module.out_features, device=weight.device, dtype=weight.dtype))


def bitfit_param_count(block: nn.Module) -> int:
    """Every bias in the block, plus the ones BitFit adds to its bias-free linear layers."""
    existing = sum(p.numel() for name, p in block.named_parameters() if name.split(".")[-1] == "bias")
    added = sum(m.out_features for m in block.modules() if isinstance(m, nn.Linear) and m.bias is None)
    return existing + added
