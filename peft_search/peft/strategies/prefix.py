"""Prefix tuning (docs/design.md, "Modules"): `length` learned key and value vectors per key/value head,
prepended to every attention of the block inside one attention implementation, `peft_search_sdpa`,
registered with transformers' `AttentionInterface` around its own SDPA attention. Backbones that
dispatch through `ALL_ATTENTION_FUNCTIONS` (bert, roberta, t5, bart, llama, qwen2, qwen3, mistral,
gpt2 in transformers 5) need nothing else; a model with a prefix is switched to it. Attentions that
compute their own scores (xlnet, deberta-v2) get a prefixed version of that computation instead
(prefix_relative.py), named by the backbone registry (`AttentionSite.prefix_entry`)."""

from __future__ import annotations

from types import MethodType

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from peft_search.peft.strategies.base import Strategy

PREFIX_INIT_STD = 0.02
PREFIX_ATTENTION = "peft_search_sdpa"


class Prefix(nn.Module):
    """`length` learned key and value vectors per head, prepended to one attention's keys and values.

    `prefix_sdpa_attention` finds it as `module.peft_prefix` and also extends the attention mask
    (prefix positions are always visible) and any position bias.
    """

    def __init__(self, num_heads: int, head_dim: int, length: int, device=None, dtype=None):
        super().__init__()
        if length < 1:
            raise ValueError(f"a prefix needs at least one position, got length {length}")
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


def prefix_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    prefix = getattr(module, "peft_prefix", None)
    if prefix is not None:
        is_causal = kwargs.get("is_causal")
        if is_causal is None:
            is_causal = getattr(module, "is_causal", False)
        key, value, attention_mask, kwargs = prefix.extend(query, key, value, attention_mask, kwargs, is_causal)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(PREFIX_ATTENTION, prefix_sdpa_attention)
# Masks are built exactly as for SDPA; the prefix columns are added per attention.
AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)


class PrefixStrategy(Strategy):
    name = "prefix"
    size_field = "prefix_length"
    learning_rate_scale = 6.0  # docs/design.md, "Learning rates"

    def unit_cost(self, site) -> int:
        return sum(Prefix.param_count(a.key_dim, 1) for a in site.attentions)

    def inject(self, site, size: int) -> None:
        weight = site.ffn_output_layer().weight
        for attention in site.attentions:
            attention.module.peft_prefix = Prefix(
                attention.num_heads, attention.key_dim // attention.num_heads, size, device=weight.device, dtype=weight.dtype
            )
            if attention.prefix_entry is not None:
                method, with_prefix = attention.prefix_entry
                setattr(attention.module, method, MethodType(with_prefix, attention.module))

    def own_parameters(self, module):
        return list(module.parameters()) if isinstance(module, Prefix) else None

    def activate(self, model, sites) -> None:
        if any(a.prefix_entry is None and hasattr(a.module, "peft_prefix") for site in sites for a in site.attentions):
            model.set_attn_implementation(PREFIX_ATTENTION)


PREFIX = PrefixStrategy()
