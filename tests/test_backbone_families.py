"""The decoder-only families (llama, qwen2, qwen3, mistral, gpt2) as a user meets them: a causal
prefix, the last real token scored, and a real short trial from a saved checkpoint whose tokenizer
has no padding token (as gpt2's and llama's do not), saved and re-evaluated to the same score.

The per-module checks (identity at init, budget on 200 random designs, prefix locality and padding,
save/load, HF peft's LoRA as the oracle) run on these families through conftest.TINY_BUILDERS in
test_peft_modules.py and test_peft_budget.py. Tiny random-init models, data the test writes: seconds.
"""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch

from conftest import DECODER_ONLY, batch, build, needs_minilm
from peft_search.peft import backbone_blocks, inject
from peft_search.space import Design

EVERY_STRATEGY = Design("spindle", "uniform", (1, 2, 3, 4),
                        (("adapter", "lora"), ("prefix",), ("adapter", "prefix", "bitfit"), ("prefix", "bitfit", "lora")))
WORDS = ("good", "bad", "film", "plot", "cast", "long", "short", "funny", "dull", "great", "story", "music")


@pytest.mark.parametrize("arch", DECODER_ONLY)
def test_a_prefix_keeps_the_decoder_causal(arch):
    """With a prefix in every block, position t's hidden state does not depend on tokens after t;
    the prefix itself is visible to every position (it changes position 0)."""
    bare = build(arch)
    model = copy.deepcopy(bare)
    inject(model, Design("uniform", "uniform", (1, 2, 3, 4), (("prefix",),) * 4), 0.02)
    inputs = batch(arch, batch_size=2, length=10)
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["input_ids"][:, -1] = (changed["input_ids"][:, -1] + 7) % 997 + 3
    with torch.no_grad():
        before = model.base_model(**inputs, use_cache=False).last_hidden_state
        after = model.base_model(**changed, use_cache=False).last_hidden_state
        plain = bare.base_model(**inputs, use_cache=False).last_hidden_state
    assert (before[:, :-1] - after[:, :-1]).abs().max() <= 1e-6
    assert (before[:, -1] - after[:, -1]).abs().max() > 1e-4
    assert (before[:, 0] - plain[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("arch", DECODER_ONLY)
def test_a_padded_batch_scores_each_rows_last_real_token(arch):
    model = build(arch)
    inputs = batch(arch, batch_size=3, length=12, pad_last=4)
    with torch.no_grad():
        padded = model(**inputs).logits
        alone = model(**{k: v[-1:, :8] for k, v in inputs.items()}).logits
    assert (padded[-1] - alone[0]).abs().max() <= 1e-5


def test_every_decoder_block_is_found_with_its_grouped_query_heads():
    for arch in DECODER_ONLY:
        model = build(arch)
        sites = backbone_blocks(model)
        assert [s.name for s in sites] == [f"decoder.{i}" for i in range(4)]
        (attention,) = sites[0].attentions
        expected_heads = 4 if arch == "gpt2" else 2  # key/value heads: gpt2 has no grouped-query attention
        assert attention.num_heads == expected_heads and attention.key_dim == expected_heads * 16


# ---- a real trial from a saved checkpoint ---------------------------------------------------------------


def tiny_checkpoint(directory, arch: str, with_padding_token: bool):
    """A tiny random-init `arch` saved as a pretrained checkpoint with MiniLM's tokenizer (vocabulary
    30,522). Without a padding token, neither the tokenizer nor the config has one, as with gpt2 and
    llama on the Hub: the tokenizer's end-of-sequence token ([SEP]) is all there is."""
    from transformers import AutoTokenizer

    from peft_search.peft import resolve_model

    torch.manual_seed(0)
    model = build(arch)
    config = copy.deepcopy(model.config)
    config.vocab_size = 30522
    config.pad_token_id = 0 if with_padding_token else None
    config.eos_token_id = 102
    # The bare decoder, as Hub checkpoints come (no classification head: the trial adds its own).
    type(model)(config).base_model.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    if not with_padding_token:
        tokenizer.eos_token = "[SEP]"
        tokenizer.pad_token = None
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """train.csv (96 rows) and validation.csv (40): whether a sentence says `good`."""
    directory = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    for split, rows in (("train", 96), ("validation", 40)):
        with open(directory / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence", "label"])
            for _ in range(rows):
                words = rng.choice(WORDS, size=rng.integers(3, 9))
                writer.writerow([" ".join(words), int("good" in words)])
    return str(directory)


@needs_minilm
@pytest.mark.parametrize("arch", DECODER_ONLY)
def test_a_design_with_every_strategy_trains_saves_and_reloads_on_each_decoder(arch, data_dir, tmp_path):
    from peft_search.train import TrialConfig, evaluate_saved, run_trial

    checkpoint = tiny_checkpoint(tmp_path / arch, arch, with_padding_token=arch not in ("gpt2", "llama"))
    config = TrialConfig(model=checkpoint, task="file:text=sentence,label=label", data_dir=data_dir,
                         design=EVERY_STRATEGY, epochs=4, batch_size=8, max_length=24, seed=1, learning_rate=1e-2,
                         budget_fraction=0.02, cache_dir=str(tmp_path / "cache"))
    result = run_trial(config, save_dir=str(tmp_path / "saved"))
    assert result.status == "finished", result.error
    assert abs(result.realised_params - result.target_params) <= 0.02 * result.target_params
    losses = [epoch["train_loss"] for epoch in result.epochs]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    again = evaluate_saved(config, tmp_path / "saved")
    assert again["score"] == pytest.approx(result.score, abs=1e-6)
    assert again["eval_loss"] == pytest.approx(result.metrics["eval_loss"], abs=1e-5)


@needs_minilm
def test_a_small_search_runs_on_a_tiny_llama_with_every_strategy(tmp_path):
    """`peft-search run` end to end (the local Ray, real trials) on a tiny random-init Llama saved as
    a checkpoint without a padding token: one stage whose two choices between them use all four
    strategies, decided, with every strategy present in its trained designs."""
    import pyarrow.parquet as pq

    from drivers import cli, write_job

    checkpoint = tiny_checkpoint(tmp_path / "tiny-llama", "llama", with_padding_token=False)
    job = write_job(tmp_path, backbone=checkpoint, budget_fraction=0.02, racing=None,
                    stages=[{"component": "strategy.G1", "candidates": ["adapter+prefix", "bitfit+lora"]}],
                    storage=str(tmp_path / "runs"))
    result = cli("run", str(job), timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stage 1/1 (strategy.G1) decided:" in result.stdout
    (run,) = (tmp_path / "runs").iterdir()
    rows = pq.read_table(run / "results.parquet").to_pylist()
    assert rows and all(row["status"] == "finished" for row in rows)
    # Each row's design, e.g. "G1:adapter+prefix G2:- G3:bitfit G4:lora+prefix".
    used = {strategy for row in rows for group in row["strategies"].split()
            for strategy in group.split(":")[1].split("+") if strategy != "-"}
    assert used == {"adapter", "prefix", "bitfit", "lora"}, used
