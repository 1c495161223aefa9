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
def test_every_group_gets_at_least_one_block_from_4_to_96_blocks(pattern):
    # 96: a 48 + 48 encoder-decoder (T5-11B) or a deep decoder, counted as one sequence of blocks.
    for num_blocks in range(4, 97):
        sizes = group_sizes_from_pattern(pattern, num_blocks, 4)
        assert sum(sizes) == num_blocks and min(sizes) >= 1, (num_blocks, sizes)


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
        ({"strategies": [["adapter", "oft"], [], [], []]}, r"strategies\[0\]"),
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
    assert "strategy_names" not in space.to_dict()  # the paper's four: a space reads as it did before issue 39


def test_a_space_of_the_jobs_strategies_draws_only_from_them_and_keeps_them_when_clamped():
    space = DesignSpace(strategy_names=("ia3", "lora", "dora"))  # kept in canonical order
    assert space.strategy_names == ("lora", "dora", "ia3")
    assert len(space.candidates("strategy.G1")) == 7 and space.size() == 5 * 3 * (8**4 - 1)
    clamped = space.clamp("grouping", "spindle").clamp("strategy.G1", "vera")  # a candidate may name any strategy
    assert clamped.strategy_names == space.strategy_names
    assert DesignSpace.from_dict(clamped.to_dict()) == clamped
    drawn = {s for design in space.sample(50, 0, 12).designs for group in design.strategies for s in group}
    assert drawn == {"lora", "dora", "ia3"}
    blocks = space.sample_blocks("strategy.G2", [("vera",), ("loha",)], 20, 0, 12).blocks
    assert {s for block in blocks for design in block for group in design.strategies[:1] + design.strategies[2:]
            for s in group} <= {"lora", "dora", "ia3"}
    with pytest.raises(InputError, match="strategies: unknown strategy 'oft'"):
        DesignSpace(strategy_names=("lora", "oft"))


# ---- paired blocks (common random numbers) ---------------------------------------------------------

PAIRED_COMPONENTS = ["grouping", "allocation", "tunable_groups", "strategy.G2"]


def _choice_of(design: Design, component: str):
    """The value a design has for one component, in `parse_choice`'s form."""
    if component == "grouping":
        return design.grouping
    if component == "allocation":
        return design.allocation
    if component == "tunable_groups":
        return design.tunable_groups
    return design.strategies[int(component.removeprefix("strategy.G")) - 1]


def _shared_part(design: Design, component: str):
    """What must be equal across a block's designs: everything but the component under study (and
    for grouping and tunable groups, the allocation weights, which follow the tuned blocks)."""
    if component == "grouping":
        return design.tunable_groups, design.strategies
    if component == "allocation":
        return design.grouping, design.tunable_groups, design.strategies
    if component == "tunable_groups":
        return design.grouping
    return design.grouping, design.allocation, design.tunable_groups, design.strategies[:1] + design.strategies[2:]


def _assert_paired(component, choices, blocks):
    for block in blocks:
        assert len(block) == len(choices)
        for choice, design in zip(choices, block):
            assert _choice_of(design, component) == choice
        assert len({_shared_part(design, component) for design in block}) == 1
        if component == "tunable_groups":
            for a in block:
                for b in block:
                    for group in set(a.tunable_groups) & set(b.tunable_groups):
                        assert a.strategies[group - 1] == b.strategies[group - 1]
        if component == "strategy.G2":
            assert all(2 in design.tunable_groups for design in block)  # a studied group is always tuned
        # The block's designs really differ in the component (no choice silently dropped).
        assert len({_choice_of(design, component) for design in block}) == len(choices)


@pytest.mark.parametrize("num_blocks", [6, 12])
@pytest.mark.parametrize("component", PAIRED_COMPONENTS)
def test_blocks_share_everything_but_the_component(component, num_blocks):
    space = DesignSpace()
    choices = space.candidates(component)
    result = space.sample_blocks(component, choices, n_blocks=8, seed=3, num_blocks=num_blocks)
    assert len(result.blocks) == 8 and result.redraws == 0
    _assert_paired(component, choices, result.blocks)
    # Blocks are independent draws, not one draw repeated.
    assert len({_shared_part(block[0], component) for block in result.blocks}) > 1


@pytest.mark.parametrize("num_blocks", [6, 12])
@pytest.mark.parametrize("component", PAIRED_COMPONENTS)
def test_blocks_are_deterministic_and_prefix_stable(component, num_blocks):
    space = DesignSpace()
    choices = space.candidates(component)[:3]
    eight = space.sample_blocks(component, choices, 8, seed=5, num_blocks=num_blocks).blocks
    assert eight == space.sample_blocks(component, choices, 8, seed=5, num_blocks=num_blocks).blocks
    assert eight[:4] == space.sample_blocks(component, choices, 4, seed=5, num_blocks=num_blocks).blocks
    assert eight != space.sample_blocks(component, choices, 8, seed=6, num_blocks=num_blocks).blocks
    # A choice's block-k design does not depend on which other candidates are listed (no redraws here).
    fewer = space.sample_blocks(component, [choices[2], choices[0]], 8, seed=5, num_blocks=num_blocks).blocks
    assert [b[0] for b in fewer] == [b[2] for b in eight]
    assert [b[1] for b in fewer] == [b[0] for b in eight]


@pytest.mark.parametrize("num_blocks", [6, 12])
@pytest.mark.parametrize("component", PAIRED_COMPONENTS)
def test_an_infeasible_design_redraws_the_whole_block(component, num_blocks):
    space = DesignSpace()
    choices = space.candidates(component)[:3]
    rejected = choices[1]
    rejections = []

    def is_feasible(design):
        # Only `rejected`'s designs are ever infeasible, and only some of them.
        ok = _choice_of(design, component) != rejected or "bitfit" not in design.strategies[design.tunable_groups[0] - 1]
        if not ok:
            rejections.append(design)
        return ok

    result = space.sample_blocks(component, choices, 12, seed=1, num_blocks=num_blocks, is_feasible=is_feasible)
    assert result.redraws > 0 and result.redraws == len(rejections)
    assert all(is_feasible(design) for block in result.blocks for design in block)
    # Still paired after the redraws: the other choices' designs were redrawn with the rejected one.
    _assert_paired(component, choices, result.blocks)
    # A redraw stays inside its block: every block feasible at the first draw is kept as drawn.
    first_draws = space.sample_blocks(component, choices, 12, seed=1, num_blocks=num_blocks).blocks
    kept = [k for k, block in enumerate(first_draws) if all(is_feasible(design) for design in block)]
    assert 0 < len(kept) < 12
    assert all(result.blocks[k] == first_draws[k] for k in kept)

    with pytest.raises(InputError, match="^space: ") as error:
        space.sample_blocks(component, choices, 3, seed=1, num_blocks=num_blocks,
                            is_feasible=lambda d: _choice_of(d, component) != rejected)
    assert error.value.field == "space"


@pytest.mark.parametrize("num_blocks", [6, 12])
@pytest.mark.parametrize(
    "component, choices",
    [("tunable_groups", [(1, 2), (2, 3), (1, 2, 3, 4)]), ("grouping", list(GROUPING_PATTERNS))],
)
def test_free_allocation_weights_are_proportional_on_blocks_tuned_in_both(component, choices, num_blocks):
    # The shared Exp(1) draws make each design's weights the same draws renormalised over its own tuned blocks.
    result = DesignSpace().sample_blocks(component, choices, 10, seed=2, num_blocks=num_blocks)
    compared = 0
    for block in result.blocks:
        for a in block:
            for b in block:
                pairs = [
                    (wa, wb) for wa, wb in zip(a.block_weights(num_blocks), b.block_weights(num_blocks))
                    if wa >= 1e-2 and wb >= 1e-2  # away from the 6-decimal rounding
                ]
                if len(pairs) >= 2:
                    ratio = pairs[0][0] / pairs[0][1]
                    assert all(wa / wb == pytest.approx(ratio, rel=1e-3) for wa, wb in pairs)
                    compared += 1
    assert compared > len(result.blocks)  # the check above was not vacuous


def test_sample_blocks_honours_fixed_components_and_rejects_bad_arguments():
    space = DesignSpace().clamp("grouping", "spindle").clamp("strategy.G3", "adapter+lora")
    result = space.sample_blocks("strategy.G2", [("lora",), ("prefix", "bitfit")], 4, seed=0, num_blocks=12)
    for block in result.blocks:
        for design in block:
            assert design.grouping == "spindle"
            assert {2, 3} <= set(design.tunable_groups)
            assert design.strategies[2] == ("adapter", "lora")
    with pytest.raises(InputError, match="tunable_groups.*leaves out G3"):
        space.sample_blocks("tunable_groups", [(1, 2, 3), (1, 2)], 2, seed=0, num_blocks=12)
    with pytest.raises(InputError, match="component"):
        space.sample_blocks("strategy.G9", [("lora",)], 2, seed=0, num_blocks=12)
    with pytest.raises(InputError, match="allocation.*listed twice"):
        space.sample_blocks("allocation", ["uniform", "uniform"], 2, seed=0, num_blocks=12)
    with pytest.raises(InputError, match="blocks"):
        space.sample_blocks("allocation", ["uniform"], 0, seed=0, num_blocks=12)
