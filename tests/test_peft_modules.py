"""The PEFT modules on real backbones: identity at init, frozen backbone, prefix locality and
padding, BitFit on bias-free T5, HF peft as an oracle for LoRA, save/load."""

import copy

import pytest
import torch

from conftest import DECODER_ONLY, TINY_BUILDERS, batch, build, needs_minilm, one_row
from peft_search.peft import backbone_blocks, inject, load_peft, plan_budget, profile_backbone, save_peft
from peft_search.peft.strategies import linear_features
from peft_search.space import Design

ARCHS = sorted(TINY_BUILDERS)
ALL_GROUPS = (1, 2, 3, 4)


def everywhere(*strategies):
    return Design("uniform", "uniform", ALL_GROUPS, (tuple(strategies),) * 4)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def one_training_step(model, inputs, lr=1e-2):
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    labels = torch.zeros(inputs["input_ids"].shape[0], dtype=torch.long)
    model(**inputs, labels=labels).loss.backward()
    optimizer.step()
    model.eval()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategies", [("adapter",), ("lora",), ("bitfit",), ("adapter", "bitfit", "lora")])
def test_every_strategy_but_prefix_starts_as_the_identity_and_leaves_the_backbone_frozen(arch, strategies):
    bare = build(arch)
    model = copy.deepcopy(bare)
    inputs = batch(arch, pad_last=3)
    inject(model, everywhere(*strategies), 0.02)
    assert (logits(model, inputs) - logits(bare, inputs)).abs().max() <= 1e-6

    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    one_training_step(model, inputs)
    for name, parameter in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(parameter, frozen_before[name]), f"{name} moved"
    # LoRA's B, the adapter's up and the biases start at their identity values; one step moves them.
    moved = [n for n, p in model.named_parameters() if n in trained_before and not torch.equal(p, trained_before[n])]
    assert any("lora_B" in n or "adapter.up" in n or (n.endswith("bias") and n.startswith(model.base_model_prefix))
               for n in moved), moved


@needs_minilm
def test_minilm_mixed_adapter_lora_design_is_the_identity(minilm_pristine, minilm):
    inputs = {"input_ids": torch.randint(1000, 20000, (4, 24)), "attention_mask": torch.ones(4, 24, dtype=torch.long)}
    design = Design("spindle", "increasing", (1, 2, 4), (("adapter",), ("lora",), (), ("adapter", "lora")))
    inject(minilm, design, 0.005)
    assert (logits(minilm, inputs) - logits(minilm_pristine, inputs)).abs().max() <= 1e-6


def lora_only_budget(profile, rank):
    # The fraction at which every block's share buys exactly `rank`.
    total = rank * sum(block.unit("lora") for block in profile.blocks)
    return (total + 0.25) / profile.backbone_params


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_matches_hf_peft_count_and_outputs(arch):
    """Our LoRA and HF peft's on the same projections (query and value; gpt2's fused c_attn, which
    HF peft adapts with fan_in_fan_out), rank for rank (t5 and bart decoder blocks hold two
    attentions, so their ranks differ from the encoder's: HF peft's rank_pattern), alpha = 2r, the
    same A, B (random, so the update is live) and head: the same trainable count and logits. On
    xlnet, whose q and v are bare weights HF peft cannot adapt, the oracle is the same update merged
    into the weights (hf_reference.merged_lora_reference)."""
    pytest.importorskip("peft")
    from hf_reference import copy_into_twin, hf_lora_twin, merged_lora_reference, our_lora_ranks

    bare = build(arch)
    ours = copy.deepcopy(bare)
    report = inject(ours, everywhere("lora"), lora_only_budget(profile_backbone(bare), 4))
    torch.manual_seed(1)
    for module in ours.modules():
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B.weight, std=0.1)
    if arch == "xlnet":
        theirs = merged_lora_reference(copy.deepcopy(bare), ours)
        their_lora = 4 * sum(sum(linear_features(a.projection(p))) for site in backbone_blocks(bare)
                             for a in site.attentions for p in a.lora_projections)
    else:
        theirs = hf_lora_twin(copy.deepcopy(bare), ranks=our_lora_ranks(ours), fan_in_fan_out=arch == "gpt2")
        copy_into_twin(ours, theirs, head=False)  # both heads come from `bare`
        their_lora = sum(p.numel() for n, p in theirs.named_parameters() if p.requires_grad and "lora_" in n)
    assert report.realised_params == their_lora
    inputs = batch(arch, pad_last=2)
    if arch in ("t5", "bart"):
        inputs["use_cache"] = False
    assert (logits(ours, inputs) - logits(bare, inputs)).abs().max() > 1e-4  # the update is live
    assert (logits(ours, inputs) - logits(theirs, inputs)).abs().max() <= 1e-5


def prefix_on_block(num_blocks, block):
    """A design whose only tuned block is `block` (2 <= block <= L-2), with a prefix: G3 = {block}."""
    design = Design((block - 1, 1, 1, num_blocks - block - 1), "uniform", (3,), ((), (), ("prefix",), ()))
    assert design.block_groups(num_blocks).index(3) == block
    return design


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_on_one_block_changes_only_that_blocks_attention(arch):
    bare = build(arch)
    model = copy.deepcopy(bare)
    num_blocks = len(backbone_blocks(bare))
    block = num_blocks - 2  # on t5 and bart a decoder block: self- and cross-attention
    report = inject(model, prefix_on_block(num_blocks, block), 0.02)
    assert [b.block for b in report.plan.blocks] == [block]

    # Every attention of the injected model is checked against its bare twin on the same inputs.
    differences = {}
    twins = [(site.name, a.module, b.module) for site, bare_site in zip(backbone_blocks(model), backbone_blocks(bare))
             for a, b in zip(site.attentions, bare_site.attentions)]
    handles = []
    for name, injected_attention, bare_attention in twins:
        def compare(module, args, kwargs, output, name=name, twin=bare_attention):
            with torch.no_grad():
                expected = twin(*args, **kwargs)
            differences.setdefault(name, []).append((output[0] - expected[0]).abs().max().item())
        handles.append(injected_attention.register_forward_hook(compare, with_kwargs=True))
    inputs = batch(arch, pad_last=3)
    if arch in ("t5", "bart", *DECODER_ONLY):
        inputs["use_cache"] = False  # the twin must not see keys the injected attention cached
    logits(model, inputs)
    for handle in handles:
        handle.remove()
    block_name = backbone_blocks(model)[block].name
    expected_attentions = 2 if block_name.startswith("decoder") and arch not in DECODER_ONLY else 1
    assert len(differences[block_name]) == expected_attentions
    for name, diffs in differences.items():
        if name == block_name:
            assert min(diffs) > 1e-4, f"the prefix on {name} changed nothing"
        else:
            assert max(diffs) <= 1e-6, f"{name} changed although its prefix is elsewhere"


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_padded_batch_equals_examples_one_by_one(arch):
    model = build(arch)
    inject(model, everywhere("prefix", "lora"), 0.02)
    inputs = batch(arch, batch_size=3, length=12, pad_last=5)
    padded = logits(model, inputs)
    for row in range(3):
        alone = logits(model, one_row(inputs, row))
        assert (padded[row] - alone[0]).abs().max() <= 1e-5


def test_bitfit_on_t5_adds_zero_biases_and_trains_only_those():
    bare = build("t5")
    model = copy.deepcopy(bare)
    assert not any(n.endswith("bias") for n, _ in bare.base_model.named_parameters() if "relative_attention" not in n)
    report = inject(model, everywhere("bitfit"), 0.05)
    tuned = {b.block for b in report.plan.blocks}
    sites = backbone_blocks(model)
    for index in tuned:
        for module in sites[index].module.modules():
            if isinstance(module, torch.nn.Linear):
                assert module.bias is not None and module.bias.requires_grad
                assert torch.equal(module.bias, torch.zeros_like(module.bias))
    trainable = [n for n, p in model.base_model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("bias") for n in trainable)
    inputs = batch("t5")
    assert torch.equal(logits(model, inputs), logits(bare, inputs))
    one_training_step(model, inputs)
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in model.base_model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_then_load_onto_a_fresh_backbone_reproduces_outputs(arch, tmp_path):
    design = Design("spindle", "increasing", ALL_GROUPS, (("adapter", "lora"), ("prefix",), ("adapter", "prefix", "bitfit"), ("prefix", "bitfit", "lora")))
    model = build(arch)
    report = inject(model, design, 0.02)
    inputs = batch(arch, pad_last=2)
    one_training_step(model, inputs)
    save_peft(model, report, tmp_path / "saved")
    saved_names = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(str(tmp_path / "saved" / "peft.safetensors")))
    assert saved_names == {n for n, p in model.named_parameters() if p.requires_grad}

    fresh = build(arch)  # same seed: the same frozen backbone weights
    loaded = load_peft(fresh, tmp_path / "saved")
    assert loaded.realised_params == report.realised_params
    assert torch.equal(logits(fresh, inputs), logits(model, inputs))


def test_profile_matches_plan_units_on_every_arch():
    for arch in ARCHS:
        profile = profile_backbone(build(arch))
        design = everywhere("adapter", "prefix", "bitfit", "lora")
        plan = plan_budget(profile, design, 0.05)
        assert plan.feasible, arch
