"""A prefix in the attentions that do not go through transformers' attention interface: xlnet's
relative attention and deberta-v2's disentangled attention (docs/design.md, "Backbones").

Each function below is the backbone's own attention computation, as transformers 5 writes it, with
the block's `Prefix` (`module.peft_prefix`) in front of the keys and values. The backbone registry
binds it to the attention module in place of the method it replaces (`AttentionSite.prefix_entry`).

A prefix position has content and nothing else: its score is the query's dot product with its
key (xlnet: plus the content bias, as its memory positions get), with no relative-position or
segment term, as T5's position bias is padded with zeros for it (prefix.py). Every query sees it.
"""

from __future__ import annotations

import torch
from torch import nn


def xlnet_attention_core_with_prefix(self, q_head, k_head_h, v_head_h, k_head_r, seg_mat=None, attn_mask=None,
                                     output_attentions=False):
    """`XLNetRelativeAttention.rel_attn_core` with a prefix. Layouts as xlnet's: queries, keys and
    values (length, batch, heads, head size); scores (batch, heads, query, key)."""
    prefix = self.peft_prefix
    batch = k_head_h.shape[1]
    # (heads, length, head size) -> (length, batch, heads, head size)
    prefix_key = prefix.key.to(k_head_h.dtype).permute(1, 0, 2).unsqueeze(1).expand(-1, batch, -1, -1)
    prefix_value = prefix.value.to(v_head_h.dtype).permute(1, 0, 2).unsqueeze(1).expand(-1, batch, -1, -1)

    content_query = q_head + self.r_w_bias
    ac = torch.einsum("ibnd,jbnd->bnij", content_query, k_head_h)
    bd = torch.einsum("ibnd,jbnd->bnij", q_head + self.r_r_bias, k_head_r)
    bd = self.rel_shift_bnij(bd, klen=ac.shape[3])
    if seg_mat is None:
        ef = 0
    else:
        ef = torch.einsum("ibnd,snd->ibns", q_head + self.r_s_bias, self.seg_embed)
        ef = torch.einsum("ijbs,ibns->bnij", seg_mat, ef)
    attn_score = (ac + bd + ef) * self.scale
    if attn_mask is not None:
        big = 65500 if attn_mask.dtype == torch.float16 else 1e30
        attn_score = attn_score - big * torch.einsum("ijbn->bnij", attn_mask)
    prefix_score = torch.einsum("ibnd,jbnd->bnij", content_query, prefix_key) * self.scale
    attn_score = torch.cat([prefix_score.to(attn_score.dtype), attn_score], dim=3)

    attn_prob = self.dropout(nn.functional.softmax(attn_score, dim=3))
    attn_vec = torch.einsum("bnij,jbnd->ibnd", attn_prob, torch.cat([prefix_value, v_head_h], dim=0))
    if output_attentions:
        return attn_vec, torch.einsum("bnij->ijbn", attn_prob)
    return attn_vec


def deberta_v2_attention_with_prefix(self, hidden_states, attention_mask, output_attentions=False, query_states=None,
                                     relative_pos=None, rel_embeddings=None):
    """`DisentangledSelfAttention.forward` with a prefix. Layouts as deberta-v2's: queries, keys and
    values (batch x heads, length, head size); the mask (batch, 1, query, key), True where visible."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import scaled_size_sqrt

    if query_states is None:
        query_states = hidden_states
    heads = self.num_attention_heads
    query_layer = self.transpose_for_scores(self.query_proj(query_states), heads)
    key_layer = self.transpose_for_scores(self.key_proj(hidden_states), heads)
    value_layer = self.transpose_for_scores(self.value_proj(hidden_states), heads)

    scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
    scale = scaled_size_sqrt(query_layer, scale_factor)
    attention_scores = torch.bmm(query_layer, key_layer.transpose(-1, -2) / scale.to(dtype=query_layer.dtype))
    if self.relative_attention:
        rel_embeddings = self.pos_dropout(rel_embeddings)
        attention_scores = attention_scores + self.disentangled_attention_bias(
            query_layer, key_layer, relative_pos, rel_embeddings, scale_factor
        )

    prefix = self.peft_prefix
    batch = query_layer.shape[0] // heads
    # (heads, length, head size) -> (batch x heads, length, head size)
    prefix_key = prefix.key.to(key_layer.dtype).unsqueeze(0).expand(batch, -1, -1, -1).reshape(-1, prefix.length, key_layer.shape[-1])
    prefix_value = prefix.value.to(value_layer.dtype).unsqueeze(0).expand(batch, -1, -1, -1).reshape(-1, prefix.length, value_layer.shape[-1])
    prefix_scores = torch.bmm(query_layer, prefix_key.transpose(-1, -2) / scale.to(dtype=query_layer.dtype))
    attention_scores = torch.cat([prefix_scores, attention_scores], dim=-1)
    attention_scores = attention_scores.view(-1, heads, attention_scores.size(-2), attention_scores.size(-1))

    attention_mask = attention_mask.bool()
    visible = attention_mask.new_ones((*attention_mask.shape[:-1], prefix.length))
    attention_mask = torch.cat([visible, attention_mask], dim=-1)
    attention_scores = attention_scores.masked_fill(~attention_mask, torch.finfo(query_layer.dtype).min)
    attention_probs = self.dropout(nn.functional.softmax(attention_scores, dim=-1))
    context_layer = torch.bmm(
        attention_probs.view(-1, attention_probs.size(-2), attention_probs.size(-1)), torch.cat([prefix_value, value_layer], dim=1)
    )
    context_layer = context_layer.view(-1, heads, context_layer.size(-2), context_layer.size(-1)).permute(0, 2, 1, 3).contiguous()
    context_layer = context_layer.view(context_layer.size()[:-2] + (-1,))
    return (context_layer, attention_probs if output_attentions else None)
