"""Tiny random-init language models saved as pretrained checkpoints, with MiniLM's tokenizer (its
[SEP] as end-of-sequence, [PAD] as padding): one per family with a language-modelling head (T5 and
BART sequence to sequence; Llama, Qwen2 and GPT-2 causal), for the text-to-text objective's tests.
Output embeddings tied to the input ones, as T5, BART and GPT-2 have them (Llama and Qwen2 let a
checkpoint choose; tied keeps the files small)."""

from __future__ import annotations

from pathlib import Path

import torch

LANGUAGE_MODEL_FAMILIES = ("t5", "bart", "llama", "qwen2", "gpt2")


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from peft_search.peft import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    tokenizer.eos_token = "[SEP]"
    return tokenizer


def build_language_model(model_type: str, vocab_size: int, pad: int, eos: int, bos: int):
    from transformers import (BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, T5Config, T5ForConditionalGeneration)

    decoder = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, pad_token_id=pad, bos_token_id=bos,
                   eos_token_id=eos, tie_word_embeddings=True)
    builders = {
        "t5": lambda: T5ForConditionalGeneration(T5Config(
            vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=4, num_decoder_layers=4, num_heads=4,
            eos_token_id=eos, pad_token_id=pad, decoder_start_token_id=pad, dropout_rate=0.0)),
        "bart": lambda: BartForConditionalGeneration(BartConfig(
            vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
            eos_token_id=eos, pad_token_id=pad, bos_token_id=bos, decoder_start_token_id=eos, forced_eos_token_id=None,
            dropout=0.0)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(**decoder)),
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**decoder)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=4, n_head=4, n_positions=256,
                                                   pad_token_id=pad, bos_token_id=eos, eos_token_id=eos)),
    }
    return builders[model_type]()


def tiny_language_model(directory: Path, model_type: str, seed: int = 0) -> str:
    """A tiny `model_type` language model and MiniLM's tokenizer saved in `directory`; its path."""
    tokenizer = _minilm_tokenizer()
    torch.manual_seed(seed)
    model = build_language_model(model_type, tokenizer.vocab_size, tokenizer.pad_token_id, tokenizer.sep_token_id,
                                 tokenizer.cls_token_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
