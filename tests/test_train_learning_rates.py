"""One base learning rate per trial; each strategy's parameters train at their own multiple of it."""

import pytest

from conftest import build
from peft_search.peft import inject
from peft_search.space import Design
from peft_search.train.loop import parameter_groups
from peft_search.peft.strategies import learning_rate_scale
from peft_search.train.presets import default_learning_rate

MIXED = Design(
    "spindle", "uniform", (1, 2, 3, 4),
    (("adapter", "lora"), ("adapter", "prefix"), ("adapter", "prefix", "bitfit"), ("prefix", "bitfit", "lora")),
)  # fmt: skip


def rates_by_parameter(groups):
    return {id(p): group["lr"] for group in groups for p in group["params"]}


def test_each_strategy_trains_at_its_scaled_rate_and_nothing_is_left_out():
    model = build("bert")
    inject(model, MIXED, 0.05)
    groups = parameter_groups(model, weight_decay=0.01, base_learning_rate=5e-3, injected=True)
    rates = rates_by_parameter(groups)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(rates) == {id(p) for p in trainable.values()}  # every trainable tensor, exactly once
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    for name, parameter in trainable.items():
        if "peft_prefix" in name:
            expected = learning_rate_scale("prefix")
        elif "lora_" in name:
            expected = learning_rate_scale("lora")
        elif ".adapter." in name:
            expected = learning_rate_scale("adapter")
        elif name.startswith("bert."):
            expected = learning_rate_scale("bitfit")
        else:
            expected = learning_rate_scale("head")
        assert rates[id(parameter)] == pytest.approx(5e-3 * expected), name
    # The prefix part of a mixed design is not starved: it trains 6x faster than its LoRA part.
    assert learning_rate_scale("prefix") > learning_rate_scale("lora")


def test_full_fine_tuning_uses_one_rate():
    model = build("bert")
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    groups = parameter_groups(model, weight_decay=0.0, base_learning_rate=default_learning_rate("full"), injected=False)
    assert {g["lr"] for g in groups} == {5e-5}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
