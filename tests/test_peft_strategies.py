"""The strategy registry (docs/design.md, "Strategies"): each strategy built from the registry alone
owns a cost model that matches, parameter for parameter, what it injects into every block of every
family; its own parameters are exactly the ones it added (BitFit: the block's biases); and an
injected model runs. Tiny random-init models: seconds."""

import pytest
import torch

from conftest import TINY_BUILDERS, batch, build
from peft_search.peft import backbone_blocks
from peft_search.peft.strategies import (
    BITFIT,
    HEAD,
    STRATEGY_REGISTRY,
    Prefix,
    injection_order,
    learning_rate_scale,
    trainable_parameters_by_strategy,
)
from peft_search.space import STRATEGIES

SIZE = 3  # units of an elastic strategy (bottleneck dimension, prefix positions, LoRA rank)


def frozen(model_type: str):
    model = build(model_type)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def test_the_registry_is_the_spaces_vocabulary():
    assert tuple(STRATEGY_REGISTRY) == STRATEGIES
    for name, strategy in STRATEGY_REGISTRY.items():
        assert strategy.name == name and strategy.size_field and strategy.learning_rate_scale > 0
    assert learning_rate_scale(HEAD) == 1.0
    assert injection_order(["lora", "bitfit", "adapter"])[0] is BITFIT  # BitFit before any module exists


@pytest.mark.parametrize("model_type", sorted(TINY_BUILDERS))
@pytest.mark.parametrize("name", STRATEGIES)
def test_each_strategy_injects_exactly_what_its_cost_model_says(model_type, name):
    strategy = STRATEGY_REGISTRY[name]
    model = frozen(model_type)
    sites = backbone_blocks(model)
    expected = []
    for site in sites:
        size = SIZE if strategy.elastic else strategy.fixed_cost(site)
        cost = strategy.fixed_cost(site) + (SIZE * strategy.unit_cost(site) if strategy.elastic else 0)
        strategy.inject(site, size)
        expected.append(cost)
    strategy.activate(model, sites)
    realised = [sum(p.numel() for p in site.module.parameters() if p.requires_grad) for site in backbone_blocks(model)]
    assert realised == expected
    assert all(cost > 0 for cost in expected)

    # The optimiser's grouping finds every one of them under this strategy's name, nothing else there.
    groups = trainable_parameters_by_strategy(model)
    assert sum(p.numel() for p in groups[name]) == sum(expected)
    assert all(not groups[other] for other in STRATEGY_REGISTRY if other != name)
    assert sum(p.numel() for p in groups[HEAD]) == 0  # the test froze the head

    with torch.no_grad():
        logits = model(**batch(model_type)).logits
    assert torch.isfinite(logits).all()


def test_a_prefix_of_no_positions_is_refused():
    with pytest.raises(ValueError, match="at least one position"):
        Prefix(num_heads=2, head_dim=4, length=0)
