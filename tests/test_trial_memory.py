"""The memory estimate of a trial (train/memory.py) against what autograd really keeps: the bytes of
every tensor saved for the backward pass of one training forward, counted through
`torch.autograd.graph.saved_tensors_hooks`, on MiniLM and a tiny model of every family. Exact parts
(weights, optimiser state) against the model's own tensors."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import TINY_BUILDERS, batch, build, needs_minilm
from peft_search.peft import backbone_blocks, inject
from peft_search.space import Design
from peft_search.train.memory import estimate_trial_memory
from peft_search.train.prepare import keep_trainable_in_float32

DESIGN = Design("uniform", "uniform", (1, 2, 3, 4), (("adapter", "lora"),) * 4)


def saved_activation_bytes(model, inputs, autocast: bool = False) -> int:
    """Bytes autograd keeps for the backward pass of one training forward (each storage once)."""
    seen, total = set(), 0

    def pack(tensor):
        nonlocal total
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.numel(), tensor.dtype)
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(**inputs)
    return total


def estimate_for(model, batch_size, length, **options):
    report = inject(model, DESIGN, 0.01)
    trainable = report.realised_params + report.head_params
    return report, estimate_trial_memory(model.config, backbone_params=report.backbone_params, trainable_params=trainable,
                                         num_blocks=len(backbone_blocks(model)), batch_size=batch_size, max_length=length,
                                         **options)


@pytest.mark.parametrize("arch", sorted(TINY_BUILDERS))
def test_activations_are_estimated_within_a_factor_of_two_on_every_family(arch):
    model = build(arch)
    _, estimate = estimate_for(model, 8, 64)
    inputs = batch(arch, batch_size=8, length=64)
    if arch in ("t5", "bart"):
        inputs["use_cache"] = False
    measured = saved_activation_bytes(model, inputs)
    assert 0.5 <= measured / estimate.activation_bytes <= 2.0, measured / estimate.activation_bytes


@needs_minilm
def test_minilm_activations_weights_and_state_match_what_a_trial_holds(minilm_pristine):
    model = copy.deepcopy(minilm_pristine)
    report, estimate = estimate_for(model, 16, 128)
    inputs = {"input_ids": torch.randint(1000, 20000, (16, 128)), "attention_mask": torch.ones(16, 128, dtype=torch.long)}
    measured = saved_activation_bytes(model, inputs)
    assert abs(measured / estimate.activation_bytes - 1) <= 0.1, measured / estimate.activation_bytes
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert estimate.weights_bytes == weights
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimate.training_state_bytes == 12 * trainable

    # Under bf16 autocast with a bfloat16 backbone: half the frozen weights' bytes, and 0.85x the
    # activations (autocast keeps norms and softmax in float32), both as measured.
    half = copy.deepcopy(model).to(torch.bfloat16)
    keep_trainable_in_float32(half)  # as a trial with `backbone_dtype: bfloat16` does
    _, in_bf16 = estimate_for(copy.deepcopy(minilm_pristine), 16, 128, backbone_dtype="bfloat16", precision="bf16")
    # The estimate leaves the norms in bfloat16 (a few thousand parameters); the trial keeps them float32.
    assert in_bf16.weights_bytes == pytest.approx(sum(p.numel() * p.element_size() for p in half.parameters()), rel=0.001)
    measured_bf16 = saved_activation_bytes(half, inputs, autocast=True)
    assert abs(measured_bf16 / in_bf16.activation_bytes - 1) <= 0.15, measured_bf16 / in_bf16.activation_bytes


QWEN2_5_0_5B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True)


def test_the_dry_runs_estimate_follows_dtype_precision_and_checkpointing(tmp_path):
    """`run --dry-run`'s estimate for Qwen2.5-0.5B's shape (its config alone: nothing is downloaded or
    allocated): a bfloat16 backbone halves the weights, bf16 autocast keeps 0.85x the activations,
    gradient checkpointing keeps each block's input only."""
    from transformers import Qwen2Config

    from drivers import write_job
    from peft_search.search.preflight import preflight

    Qwen2Config(**QWEN2_5_0_5B).save_pretrained(tmp_path / "qwen")
    hyper = {"batch_size": 32, "max_length": 128}
    estimates = {}
    for name, changes in (("fp32", {}), ("bf16", {"precision": "bf16", "backbone_dtype": "bfloat16"}),
                          ("checkpointed", {"gradient_checkpointing": True})):
        job = write_job(tmp_path, f"{name}.yaml", backbone=str(tmp_path / "qwen"), hyperparameters={**hyper, **changes},
                        fidelity={"max_steps": 3, "max_train_examples": 64, "max_eval_examples": 32})
        estimates[name] = preflight(job, storage=str(tmp_path / "runs"), offline=True).memory
    fp32, bf16, checkpointed = estimates["fp32"], estimates["bf16"], estimates["checkpointed"]
    assert 1.8 < fp32.weights_bytes / 2**30 < 1.9  # 494M parameters x 4 bytes
    assert bf16.weights_bytes / fp32.weights_bytes == pytest.approx(0.5, abs=0.01)
    assert bf16.activation_bytes / fp32.activation_bytes == pytest.approx(0.85)
    assert checkpointed.activation_bytes < fp32.activation_bytes / 10
    assert fp32.training_state_bytes == bf16.training_state_bytes > 0


def test_a_final_evaluation_with_full_fine_tuning_gets_its_own_estimate(tmp_path):
    """Full fine-tuning trains every parameter in float32 with its gradient and AdamW state: 16 bytes a
    parameter where a search trial's frozen backbone costs 4 (2 in bfloat16)."""
    from transformers import Qwen2Config

    from drivers import write_job
    from peft_search.search.preflight import preflight

    Qwen2Config(**QWEN2_5_0_5B).save_pretrained(tmp_path / "qwen")
    final = {"contenders": ["discovered", "full", "lora"], "seeds": [0]}
    job = write_job(tmp_path, backbone=str(tmp_path / "qwen"), final=final,
                    hyperparameters={"batch_size": 8, "max_length": 64, "precision": "bf16", "backbone_dtype": "bfloat16"})
    checked = preflight(job, storage=str(tmp_path / "runs"), offline=True)
    search, full = checked.memory, checked.full_memory
    assert full.training_state_bytes == 3 * full.weights_bytes  # 12 bytes of state per 4-byte weight
    assert full.weights_bytes / search.weights_bytes == pytest.approx(2, rel=0.02)  # float32, not bfloat16
    assert full.activation_bytes == search.activation_bytes
    without = preflight(write_job(tmp_path, "plain.yaml", backbone=str(tmp_path / "qwen")), storage=str(tmp_path / "runs"),
                        offline=True)
    assert without.full_memory is None


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_a_language_models_logits_are_estimated_within_a_factor_of_two(arch):
    """The text-to-text objective trains through the LM head: the log-softmax of its scores over the
    vocabulary at every target position dominates a small model's activations (measured: 1.05x the
    estimate on both; without that term the estimate is 4-7 times too low)."""
    from peft_search.stand_ins import build_language_model

    torch.manual_seed(0)
    model = build_language_model(arch, vocab_size=30522, pad=0, eos=102, bos=101)
    _, estimate = estimate_for(model, 8, 64, vocabulary_logits=True)
    ids = torch.randint(1000, 30000, (8, 64))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    if arch == "t5":
        inputs["use_cache"] = False
    measured = saved_activation_bytes(model, inputs)
    assert 0.5 <= measured / estimate.activation_bytes <= 2.0, measured / estimate.activation_bytes
