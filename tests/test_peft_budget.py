"""Budget realisation on real backbones: 200 random S0 designs each, counted on the model."""

import copy

import pytest
import torch

from conftest import TINY_BUILDERS, build, needs_minilm
from peft_search.errors import InputError
from peft_search.peft import backbone_blocks, inject, load_backbone, plan_budget, profile_backbone
from peft_search.peft.budget import FEASIBLE_RELATIVE_ERROR
from peft_search.space import Design, DesignSpace

PEFT_PARAMETER_NAMES = ("lora_A", "lora_B", "adapter.", "peft_prefix.")


def assert_only_peft_and_head_train(model, report):
    sites = backbone_blocks(model)
    bitfit_biases = {
        id(parameter)
        for block in report.plan.blocks
        if "bitfit" in block.strategies
        for name, parameter in sites[block.block].module.named_parameters()
        if name.endswith("bias")
    }
    backbone = {id(p) for p in model.base_model.parameters()}
    for name, parameter in model.named_parameters():
        if id(parameter) not in backbone:
            assert parameter.requires_grad, f"head parameter {name} is frozen"
            continue
        is_peft = any(part in name for part in PEFT_PARAMETER_NAMES)
        if parameter.requires_grad:
            assert is_peft or id(parameter) in bitfit_biases, f"backbone parameter {name} is trainable"
        else:
            assert not is_peft, f"PEFT parameter {name} is frozen"


def check_random_designs(model, budget_fraction, n=200, seed=0):
    profile = profile_backbone(model)
    result = DesignSpace().sample(
        n, seed, profile.num_blocks, lambda d: plan_budget(profile, d, budget_fraction).feasible
    )
    assert result.redraws <= n // 10, f"{result.redraws} redraws for {n} designs"
    for design in result.designs:
        injected = copy.deepcopy(model)
        report = inject(injected, design, budget_fraction)
        counted = sum(p.numel() for p in injected.base_model.parameters() if p.requires_grad)
        assert report.realised_params == counted
        assert abs(counted - report.target_params) <= FEASIBLE_RELATIVE_ERROR * report.target_params
        assert report.head_params == profile.head_params
        assert_only_peft_and_head_train(injected, report)


@pytest.mark.parametrize("model_type", sorted(TINY_BUILDERS))
def test_200_random_designs_realise_the_budget_on_tiny_backbones(model_type):
    # Tiny backbones are mostly embeddings; at 2% their BitFit cost relative to the budget is close
    # to a real backbone's at 0.5%.
    check_random_designs(build(model_type), budget_fraction=0.02)


@needs_minilm
def test_200_random_designs_realise_the_budget_on_minilm():
    # A weightless copy has MiniLM's exact shapes; injection and counting are the same code.
    check_random_designs(load_backbone("minilm", meta=True), budget_fraction=0.005)


@needs_minilm
def test_minilm_budget_counts_match_the_package():
    profile = profile_backbone(load_backbone("minilm", meta=True))
    assert profile.backbone_params + profile.head_params == 22_713_986
    assert profile.head_params == 770
    assert profile.num_blocks == 6


def test_bitfit_only_block_hands_its_excess_to_the_other_blocks():
    model = build("bert")
    profile = profile_backbone(model)
    design = Design("uniform", "uniform", (1, 2, 3, 4), (("bitfit",), ("lora",), ("lora",), ("lora",)))
    plan = plan_budget(profile, design, 0.02)
    assert plan.feasible
    bitfit_block = plan.blocks[0]
    assert bitfit_block.params == profile.blocks[0].fixed("bitfit")
    # Equal weights, equal units: the three LoRA blocks share the rest equally (up to one rank).
    ranks = [b.lora_rank for b in plan.blocks[1:]]
    assert max(ranks) - min(ranks) <= 1


def test_infeasible_design_is_reported():
    model = build("bert")
    profile = profile_backbone(model)
    only_bitfit = Design("uniform", "uniform", (1,), (("bitfit",), (), (), ()))
    plan = plan_budget(profile, only_bitfit, 0.05)
    assert not plan.feasible and plan.planned_params == profile.blocks[0].fixed("bitfit")


def test_a_budget_below_one_parameter_is_infeasible_and_below_the_smallest_design():
    profile = profile_backbone(build("bert"))
    design = Design("uniform", "uniform", (1,), (("lora",), (), (), ()))
    plan = plan_budget(profile, design, 1e-300)  # rounds to a target of 0 parameters
    assert plan.target_params == 0 and not plan.feasible
    assert 0 < profile.smallest_design_params <= min(b.unit("lora") for b in profile.blocks)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_budget_outside_the_unit_interval_is_refused(fraction):
    model = build("bert")
    design = Design("uniform", "uniform", (1,), (("lora",), (), (), ()))
    with pytest.raises(InputError, match="budget"):
        inject(model, design, fraction)


def test_unsupported_model_type_lists_the_supported_ones():
    from transformers import OPTConfig, OPTForSequenceClassification

    model = OPTForSequenceClassification(OPTConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2, ffn_dim=64,
                                                   word_embed_proj_dim=32, vocab_size=100))
    design = Design("uniform", "uniform", (1,), (("lora",), (), (), ()))
    with pytest.raises(InputError, match="'opt'.*supported: bart, bert, deberta-v2, gpt2, llama, mistral, qwen2, qwen3, roberta, t5, xlnet"):
        inject(model, design, 0.01)
    assert not any(torch.isnan(p).any() for p in model.parameters())
