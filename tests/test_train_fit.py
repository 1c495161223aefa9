"""The fit rule (train/fit.py): the one answer to "can this preset or design be trained on this
backbone at this budget, and with what plan", on a tiny real BERT (4 blocks, 210,496 parameters)."""

import pytest
from conftest import build

from peft_search.errors import InputError
from peft_search.peft import profile_backbone
from peft_search.space import Design
from peft_search.train import FIXED_SIZE_PRESETS, plan_fit, preset_design


@pytest.fixture(scope="module")
def profile():
    return profile_backbone(build("bert"))


def test_full_fine_tuning_has_no_plan_and_no_budget(profile):
    fit = plan_fit(profile, "full", 0.005)
    assert fit.plan is None
    assert fit.realised_params == fit.target_params == profile.backbone_params == 210_496
    assert fit.head_params == profile.head_params == 130


def test_a_design_within_two_percent_fits_with_its_plan_counts(profile):
    for design in ("lora", preset_design("s4-t5")):
        fit = plan_fit(profile, design, 0.05)
        assert fit.plan is not None and abs(fit.plan.relative_error) <= 0.02
        assert fit.counts() == {"realised_params": fit.plan.planned_params, "target_params": 10_525, "head_params": 130}


def test_only_the_fixed_size_presets_may_miss_the_budget(profile):
    from peft_search.peft.strategies import STRATEGY_REGISTRY

    assert FIXED_SIZE_PRESETS == tuple(name for name, strategy in STRATEGY_REGISTRY.items() if not strategy.elastic)
    fit = plan_fit(profile, "ia3", 0.01)  # keys, values and the feed-forward input of 4 blocks, whatever the budget
    assert fit.realised_params == 4 * (64 + 64 + 128) and not fit.plan.feasible  # hidden 64, feed-forward 128
    fit = plan_fit(profile, "bitfit", 0.01)  # every bias of the 4 blocks: 2,304, whatever the budget
    assert (fit.realised_params, fit.target_params) == (2_304, 2_105) and not fit.plan.feasible
    # the same design given as a design is held to the budget like any other
    with pytest.raises(InputError, match=r"design: realises 2,304 trainable parameters for a budget of 2,105 \(\+9.5%\) "
                                         r"on my-bert; a design must land within 2%"):
        plan_fit(profile, preset_design("bitfit"), 0.01, backbone="my-bert")
    with pytest.raises(InputError, match=r"design: realises 1,024 .* on bert;"):  # the model type by default
        plan_fit(profile, "lora", 0.005)


def test_a_design_that_does_not_fit_the_backbone_names_its_field(profile):
    twelve = Design(grouping=(3, 3, 3, 3), allocation="uniform", tunable_groups=(1, 2, 3, 4), strategies=(("lora",),) * 4)
    with pytest.raises(InputError, match="design.grouping: .*add up to 12, but the backbone has 4 blocks"):
        plan_fit(profile, twelve, 0.05)
    with pytest.raises(InputError, match="preset: unknown preset 'loraa'"):
        plan_fit(profile, "loraa", 0.05)
