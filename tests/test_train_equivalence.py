"""Our training loop, step for step, against a reference: HF peft's LoRA (or the bare transformers
model) trained by a plain torch loop (tests/hf_reference.py).

Same backbone weights, our LoRA's A and B and our head copied into the reference, the same batches
in the same order, the same optimiser settings and schedule, the same global RNG state before the
first step (so dropout draws the same masks): every step's loss and the dev predictions after
training agree to fp32 tolerance, on a regression task (STS-B's kind) and on a classification. The
real path is exercised: `prepare` (tokenise, subsample, seeded head, injection) and `train_worker`
(Accelerate, optimiser groups, schedule, clipping, evaluation after every epoch).
A tiny random-init BERT with MiniLM's tokenizer, data the test writes: seconds.
"""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch

from conftest import needs_minilm
from hf_reference import (HF_PARAMETER_MARKS, LossRecorder, hf_learning_rate_scale, hf_lora_twin, hf_twin, our_lora_ranks, predict,
                          train_reference, warmup_steps_for)
from peft_search.train.batching import evaluation_loader, training_loader
from peft_search.train.loop import train_worker
from peft_search.train.metrics import compute_metrics
from peft_search.train.prepare import load_model, prepare
from peft_search.train.trial import TrialConfig

pytestmark = needs_minilm

STEPS = 50  # 96 training examples at batch 8: 12 steps an epoch, so 5 epochs with 4 evaluations between
TOLERANCE = 1e-5
WORDS = ("good", "bad", "film", "plot", "cast", "long", "short", "funny", "dull", "great", "story", "music")
REGRESSION = "file:text=sentence,pair=other,label=score,regression"
CLASSIFICATION = "file:text=sentence,label=label"


def tiny_bert_dir(directory, **config_overrides) -> str:
    """A tiny random-init BERT (4 blocks, dropout on unless overridden) saved as a pretrained backbone
    with MiniLM's tokenizer: its task head is new at load time, as with a real checkpoint."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, **config_overrides)
    BertModel(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(_minilm_path()).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def backbone_dir_without_dropout(tmp_path_factory):
    """The same BERT without dropout: for references that draw random numbers ours does not (HF peft's
    LoHa draws torch.rand(1) per layer and forward for its module dropout, even at 0), which would shift
    every later dropout mask."""
    return tiny_bert_dir(tmp_path_factory.mktemp("tiny-bert-no-dropout"), hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)


def _minilm_path() -> str:
    from peft_search.peft import resolve_model

    return resolve_model("minilm")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """train.csv (96 rows) and validation.csv (40): a sentence pair, a score in [0, 5] (how many
    words the pair shares) and a class (whether the sentence says `good`)."""
    directory = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for split, rows in (("train", 96), ("validation", 40)):
        with open(directory / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence", "other", "score", "label"])
            for _ in range(rows):
                first = rng.choice(WORDS, size=rng.integers(3, 9))
                second = rng.choice(WORDS, size=rng.integers(3, 9))
                shared = len(set(first) & set(second)) / len(set(first) | set(second))
                writer.writerow([" ".join(first), " ".join(second), f"{5 * shared:.2f}", int("good" in first)])
    return str(directory)


def config_for(backbone_dir, data_dir, tmp_path, task, preset, **overrides):
    values = dict(model=backbone_dir, task=task, data_dir=data_dir, preset=preset, max_steps=STEPS, batch_size=8,
                  max_length=32, seed=3, learning_rate=3e-3, budget_fraction=0.01, cache_dir=str(tmp_path / "cache"))
    return TrialConfig(**{**values, **overrides})


def train_both(config, prepared, reference):
    """Our loop on `prepared`, the reference loop on `reference`, from the same RNG state; returns
    (our outcome, our step losses, the reference's step losses)."""
    recorder = LossRecorder(prepared.model)
    torch.manual_seed(1234)
    outcome = train_worker(config, prepared)
    recorder.remove()
    assert outcome["status"] == "finished", outcome.get("error")
    loader = training_loader(prepared.data.train, prepared.tokenizer, prepared.data.task, config.batch_size, config.seed)
    torch.manual_seed(1234)
    # A strategy whose rate is a multiple of the base ((IA)3's, VeRA's): the reference's tensors train at it too.
    lr_scale = hf_learning_rate_scale(config.preset) if config.preset in HF_PARAMETER_MARKS else None
    reference_losses = train_reference(reference, loader, lr=config.base_learning_rate, total_steps=config.max_steps,
                                       warmup_steps=warmup_steps_for(config.max_steps, config.warmup_ratio),
                                       weight_decay=config.weight_decay, lr_scale=lr_scale)
    return outcome, recorder.losses, reference_losses


def assert_same_training(config, prepared, reference):
    outcome, ours, theirs = train_both(config, prepared, reference)
    assert len(ours) == len(theirs) == config.max_steps
    np.testing.assert_allclose(ours, theirs, rtol=TOLERANCE, atol=TOLERANCE)
    assert ours[-1] != ours[0]  # it trained

    task = prepared.data.task
    loader = evaluation_loader(prepared.data.validation, prepared.tokenizer, task, config.batch_size)
    our_predictions, labels = predict(prepared.model, loader, task.regression)
    their_predictions, _ = predict(reference, loader, task.regression)
    np.testing.assert_allclose(our_predictions, their_predictions, rtol=TOLERANCE, atol=TOLERANCE)
    # What our loop reported is what the reference's predictions score.
    expected = compute_metrics(task.metrics, their_predictions, labels, 1 if task.regression else task.num_labels)
    for name, value in expected.items():
        assert outcome["metrics"][name] == pytest.approx(value, abs=1e-4), name
    return outcome


@pytest.mark.parametrize("task", [REGRESSION, CLASSIFICATION], ids=["regression", "classification"])
def test_our_lora_trains_as_hf_peft_lora_step_for_step(backbone_dir, data_dir, tmp_path, task):
    config = config_for(backbone_dir, data_dir, tmp_path, task, "lora")
    prepared = prepare(config)
    ranks = our_lora_ranks(prepared.model)
    assert len(ranks) == 8 and len(set(ranks.values())) > 1  # q and v of 4 blocks, uneven ranks: rank_pattern used
    reference = hf_lora_twin(load_model(config.model, prepared.data.task), ours=prepared.model)
    trainable = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    assert trainable == prepared.counts["realised_params"] + prepared.counts["head_params"]
    assert_same_training(config, prepared, reference)


@pytest.mark.parametrize("strategy", ["dora", "rslora", "loha", "vera", "ia3"])
def test_each_newer_strategy_trains_as_hf_peft_step_for_step(backbone_dir, backbone_dir_without_dropout, data_dir,
                                                             tmp_path, strategy):
    """Issue 39: DoRA, rsLoRA, LoHa, VeRA and (IA)3 alone (the preset: every block, uniform), against HF
    peft's own implementation of each (tests/hf_reference.py, `hf_twin`) on the same modules and sizes,
    our tensors copied in: every step's loss and the predictions after training agree to 1e-5."""
    backbone = backbone_dir_without_dropout if strategy == "loha" else backbone_dir
    config = config_for(backbone, data_dir, tmp_path, CLASSIFICATION, strategy)
    prepared = prepare(config)
    reference = hf_twin(strategy, load_model(config.model, prepared.data.task), prepared.model)
    trainable = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    assert trainable == prepared.counts["realised_params"] + prepared.counts["head_params"]
    assert_same_training(config, prepared, reference)


@pytest.mark.parametrize("task", [REGRESSION, CLASSIFICATION], ids=["regression", "classification"])
def test_full_fine_tuning_trains_as_a_plain_torch_loop(backbone_dir, data_dir, tmp_path, task):
    # Weight decay on: our groups must exempt exactly what transformers' Trainer exempts (biases, LayerNorm).
    config = config_for(backbone_dir, data_dir, tmp_path, task, "full", learning_rate=1e-3, weight_decay=0.01)
    prepared = prepare(config)
    assert_same_training(config, prepared, copy.deepcopy(prepared.model))


def test_head_only_trains_as_a_plain_torch_loop(backbone_dir, data_dir, tmp_path):
    config = config_for(backbone_dir, data_dir, tmp_path, REGRESSION, "full")
    prepared = prepare(config)
    for parameter in prepared.model.base_model.parameters():
        parameter.requires_grad_(False)
    reference = copy.deepcopy(prepared.model)
    assert_same_training(config, prepared, reference)
    backbone = prepared.model.base_model.state_dict()
    assert all(torch.equal(backbone[name], value) for name, value in reference.base_model.state_dict().items())
