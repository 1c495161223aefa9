"""The design space: patterns, canonical designs, strict parsing, deterministic sampling."""

from collections import Counter

import pytest

from peft_search.errors import InputError
from peft_search.space import GROUPING_PATTERNS, Design, DesignSpace
from peft_search.space.components import group_sizes_from_pattern


def test_grouping_patterns_scale_by_largest_remainder():
    assert group_sizes_from_pattern("spindle", 12, 4) == (2, 4, 4, 2)
    assert group_sizes_from_pattern("spindle", 24, 4) == (4, 8, 8, 4)
    assert group_sizes_from_pattern("increasing", 10, 4) == (1, 2, 3, 4)
    assert group_sizes_from_pattern("bottleneck", 6, 4) == (2, 1, 1, 2)


@pytest.mark.parametrize("pattern", GROUPING_PATTERNS)
@pytest.mark.parametrize("num_blocks", range(4, 31))
def test_every_group_gets_at_least_one_block(pattern, num_blocks):
    sizes = group_sizes_from_pattern(pattern, num_blocks, 4)
    assert sum(sizes) == num_blocks and min(sizes) >= 1


def test_more_groups_than_blocks_is_refused():
    design = Design("uniform", "uniform", (1, 2, 3, 4), (("lora",),) * 4)
    with pytest.raises(InputError, match="num_groups.*3 blocks"):
        design.group_sizes(3)
    with pytest.raises(InputError, match="num_groups"):
        DesignSpace().sample(1, 0, num_blocks=3)


def test_design_json_round_trip_is_canonical():
    design = Design("spindle", "uniform", [4, 1, 2], (("lora", "adapter"), ("prefix",), (), ("bitfit", "lora")))
    assert design.tunable_groups == (1, 2, 4)
    assert design.strategies[0] == ("adapter", "lora")  # canonical strategy order
    again = Design.from_json(design.to_json())
    assert again == design and again.design_id == design.design_id
    assert len(design.design_id) == 12
    shuffled = Design("spindle", "uniform", (1, 2, 4), (("adapter", "lora"), ("prefix",), (), ("lora", "bitfit")))
    assert shuffled.to_json() == design.to_json()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"extra": 1}, "design"),
        ({"grouping": "zigzag"}, "grouping"),
        ({"allocation": "spindle"}, "allocation"),
        ({"strategies": [["adapter", "dora"], [], [], []]}, r"strategies\[0\]"),
        ({"strategies": [[], [], [], []]}, r"strategies\[0\]"),
        ({"tunable_groups": [5]}, "tunable_groups"),
        ({"tunable_groups": []}, "tunable_groups"),
    ],
)
def test_bad_design_json_names_the_field(change, field):
    data = {"grouping": "uniform", "allocation": "uniform", "tunable_groups": [1], "strategies": [["lora"], [], [], []]}
    data.update(change)
    with pytest.raises(InputError, match=field):
        Design.from_dict(data)


def test_free_grouping_that_does_not_fit_the_backbone():
    design = Design((1, 2, 2, 1), "uniform", (1,), (("lora",), (), (), ()))
    assert design.group_sizes(6) == (1, 2, 2, 1)
    with pytest.raises(InputError, match="grouping.*12 blocks"):
        design.group_sizes(12)


def test_block_weights_follow_the_allocation_and_skip_untuned_groups():
    design = Design("uniform", "increasing", (2, 4), ((), ("lora",), (), ("bitfit",)))
    assert design.block_groups(8) == (1, 1, 2, 2, 3, 3, 4, 4)
    assert design.block_weights(8) == (0, 0, 3, 4, 0, 0, 7, 8)
    decreasing = Design("uniform", "decreasing", (1,), (("lora",), (), (), ()))
    assert decreasing.block_weights(8)[:2] == (8, 7)


def test_sampling_is_deterministic_and_honours_clamps():
    space = DesignSpace().clamp("grouping", "spindle").clamp("strategy.G3", "lora+adapter")
    first = space.sample(50, seed=7, num_blocks=12).designs
    assert first == space.sample(50, seed=7, num_blocks=12).designs
    assert first != space.sample(50, seed=8, num_blocks=12).designs
    for design in first:
        assert design.grouping == "spindle"
        assert 3 in design.tunable_groups  # a group whose strategies are fixed is always tuned
        assert design.strategies[2] == ("adapter", "lora")
        weights = design.block_weights(12)
        assert all((w > 0) == (g in design.tunable_groups) for w, g in zip(weights, design.block_groups(12)))


def test_free_grouping_is_uniform_over_compositions():
    designs = DesignSpace().sample(2000, seed=0, num_blocks=5).designs
    counts = Counter(d.grouping for d in designs)
    assert set(counts) == {(2, 1, 1, 1), (1, 2, 1, 1), (1, 1, 2, 1), (1, 1, 1, 2)}
    assert all(400 < n < 600 for n in counts.values())


def test_sampler_redraws_infeasible_designs_and_counts_them():
    result = DesignSpace().sample(20, seed=0, num_blocks=6, is_feasible=lambda d: "bitfit" not in d.strategies[0])
    assert all("bitfit" not in d.strategies[0] for d in result.designs)
    assert result.redraws > 0


def test_candidates_and_size():
    space = DesignSpace()
    assert [len(space.candidates(c)) for c in space.components()] == [5, 3, 15, 15, 15, 15, 15]
    assert space.size() == 5 * 3 * (16**4 - 1)
    fixed = space.clamp("grouping", "spindle").clamp("allocation", "uniform").clamp("tunable_groups", "G1+G2+G3+G4")
    assert fixed.size() == 15**4
    assert fixed.clamp("strategy.G1", "adapter").size() == 15**3


def test_clamp_rejects_bad_choices_with_the_field():
    space = DesignSpace()
    with pytest.raises(InputError, match="grouping.*allowed: increasing"):
        space.clamp("grouping", "zigzag")
    with pytest.raises(InputError, match="component"):
        space.clamp("strategy.G9", "lora")
    with pytest.raises(InputError, match="tunable_groups.*leaves out G1"):
        space.clamp("strategy.G1", "lora").clamp("tunable_groups", "G2")


def test_space_round_trips_through_dict():
    space = DesignSpace().clamp("allocation", "uniform").clamp("strategy.G2", "prefix+bitfit")
    assert DesignSpace.from_dict(space.to_dict()) == space
