"""Prefix tuning through transformers' attention interface.

We register one attention implementation, `peft_search_sdpa`: it prepends the attention module's
`peft_prefix` (if any) to keys and values, extends the mask, then runs transformers' own SDPA
attention. Backbones that dispatch through `ALL_ATTENTION_FUNCTIONS` (bert, roberta, t5, bart, llama,
qwen2, qwen3, mistral, gpt2 in transformers 5) need nothing else; an injected model with a prefix is switched to it.
"""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PREFIX_ATTENTION = "peft_search_sdpa"


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


def use_prefix_attention(model) -> None:
    model.set_attn_implementation(PREFIX_ATTENTION)
