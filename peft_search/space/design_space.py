"""`DesignSpace`: which components are fixed and which are free, and sampling designs from it.

The unconstrained space S0 has every component free. A refinement stage clamps one component to
each of its candidate choices in turn (`clamp`) and samples designs from each clamped space, either
independently (`sample`) or in paired blocks that share every other free draw (`sample_blocks`,
common random numbers, docs/design.md, "Decisions: paired designs, racing, a selection procedure").
Pure Python: no torch, no ray. Sampling is deterministic in its arguments.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from math import comb
from typing import Callable, Sequence

from peft_search.errors import InputError
from peft_search.space.components import (
    ALLOCATION,
    ALLOCATION_PATTERNS,
    DEFAULT_NUM_GROUPS,
    GROUPING,
    GROUPING_PATTERNS,
    PAPER_STRATEGIES,
    STRATEGY_PREFIX,
    TUNABLE_GROUPS,
    check_group_count,
    component_names,
    format_group_set,
    format_strategy_set,
    nonempty_subsets,
    parse_group_set,
    parse_strategy_set,
    strategy_component,
    strategy_group,
)
from peft_search.space.design import Design

# A sampler gives up on a space whose designs are almost all infeasible rather than loop forever.
MAX_REDRAWS_PER_DESIGN = 200


@dataclass(frozen=True)
class SampleResult:
    designs: tuple[Design, ...]
    redraws: int  # infeasible designs drawn and thrown away


@dataclass(frozen=True)
class BlockSampleResult:
    """Paired designs: `blocks[k][j]` is block k's design for the j-th choice passed to `sample_blocks`."""

    blocks: tuple[tuple[Design, ...], ...]
    redraws: int  # whole blocks drawn and thrown away because some choice's design was infeasible


@dataclass(frozen=True)
class _BlockLatent:
    """One block's shared draw of the free components other than the one under study.

    A field is None where the component is fixed in the space or is the one under study; a
    strategy entry is None for a group whose strategies are fixed or studied.
    """

    grouping: tuple[int, ...] | None
    tunable_groups: tuple[int, ...] | None
    strategies: tuple[tuple[str, ...] | None, ...]
    block_draws: tuple[float, ...] | None  # one Exp(1) per backbone block, for a free allocation


@dataclass(frozen=True)
class DesignSpace:
    """Each component either fixed to one choice or free (None).

    Free grouping: a uniformly random composition of the blocks into `num_groups` parts.
    Free allocation: Dirichlet(1) weights over the tuned blocks.
    Free tunable groups: a uniformly random non-empty subset of the groups, always containing the
    groups whose strategies are fixed (fixing a group's strategies presumes the group is tuned).
    Free strategies of a group: a uniformly random non-empty subset of `strategy_names` (the paper's
    four unless the job names others), which are also a strategy stage's candidates.
    """

    num_groups: int = DEFAULT_NUM_GROUPS
    grouping: str | None = None
    allocation: str | None = None
    tunable_groups: tuple[int, ...] | None = None
    strategies: tuple[tuple[str, ...] | None, ...] = field(default=())
    strategy_names: tuple[str, ...] = PAPER_STRATEGIES

    def __post_init__(self):
        if not isinstance(self.num_groups, int) or self.num_groups < 1:
            raise InputError("num_groups", f"must be a positive integer, got {self.num_groups!r}")
        object.__setattr__(self, "strategy_names", parse_strategy_set(self.strategy_names, "strategies"))
        if not self.strategies:
            object.__setattr__(self, "strategies", (None,) * self.num_groups)
        if len(self.strategies) != self.num_groups:
            raise InputError("strategies", f"give one entry per group ({self.num_groups}), got {len(self.strategies)}")
        for component in self.fixed_components():
            self._check_choice(component, self.choice(component))

    # ---- components ------------------------------------------------------------------------------

    def components(self) -> tuple[str, ...]:
        return component_names(self.num_groups)

    def choice(self, component: str):
        """The fixed choice of a component, or None when it is free."""
        if component == GROUPING:
            return self.grouping
        if component == ALLOCATION:
            return self.allocation
        if component == TUNABLE_GROUPS:
            return self.tunable_groups
        return self.strategies[strategy_group(component, self.num_groups) - 1]

    def fixed_components(self) -> tuple[str, ...]:
        return tuple(c for c in self.components() if self.choice(c) is not None)

    def free_components(self) -> tuple[str, ...]:
        return tuple(c for c in self.components() if self.choice(c) is None)

    def candidates(self, component: str) -> list:
        """The candidate choices a refinement stage of this component compares (docs/design.md, "The method")."""
        if component == GROUPING:
            return list(GROUPING_PATTERNS)
        if component == ALLOCATION:
            return list(ALLOCATION_PATTERNS)
        if component == TUNABLE_GROUPS:
            return nonempty_subsets(tuple(range(1, self.num_groups + 1)))
        strategy_group(component, self.num_groups)
        return nonempty_subsets(self.strategy_names)

    def parse_choice(self, component: str, text: str):
        """A choice from its command-line form: `spindle`, `G1+G3`, `adapter+lora`."""
        if component in (GROUPING, ALLOCATION):
            return text
        if component == TUNABLE_GROUPS:
            return parse_group_set(text, self.num_groups, TUNABLE_GROUPS)
        strategy_group(component, self.num_groups)
        return parse_strategy_set(text, component)

    def clamp(self, component: str, choice) -> "DesignSpace":
        """This space with `component` fixed to `choice`."""
        self._check_choice(component, choice)
        if component == GROUPING:
            return replace(self, grouping=choice)
        if component == ALLOCATION:
            return replace(self, allocation=choice)
        if component == TUNABLE_GROUPS:
            return replace(self, tunable_groups=parse_group_set(choice, self.num_groups, TUNABLE_GROUPS))
        group = strategy_group(component, self.num_groups)
        strategies = list(self.strategies)
        strategies[group - 1] = parse_strategy_set(choice, component)
        return replace(self, strategies=tuple(strategies))

    def _check_choice(self, component: str, choice) -> None:
        if component == GROUPING and choice not in GROUPING_PATTERNS:
            raise InputError(GROUPING, f"unknown pattern {choice!r}; allowed: {', '.join(GROUPING_PATTERNS)}")
        if component == ALLOCATION and choice not in ALLOCATION_PATTERNS:
            raise InputError(ALLOCATION, f"unknown pattern {choice!r}; allowed: {', '.join(ALLOCATION_PATTERNS)}")
        if component == TUNABLE_GROUPS:
            groups = parse_group_set(choice, self.num_groups, TUNABLE_GROUPS)
            untuned_fixed = [
                g for g, s in enumerate(self.strategies, start=1) if s is not None and g not in groups
            ]
            if untuned_fixed:
                raise InputError(
                    TUNABLE_GROUPS,
                    f"{format_group_set(groups)} leaves out {format_group_set(tuple(untuned_fixed))}, whose strategies are fixed",
                )
        if component.startswith("strategy."):
            parse_strategy_set(choice, component)
            group = strategy_group(component, self.num_groups)
            if self.tunable_groups is not None and group not in self.tunable_groups:
                raise InputError(component, f"G{group} is not among the fixed tunable groups {format_group_set(self.tunable_groups)}")

    def format_choice(self, component: str, choice) -> str:
        if choice is None:
            return "free"
        if component == TUNABLE_GROUPS:
            return format_group_set(tuple(choice))
        if component.startswith("strategy."):
            return format_strategy_set(tuple(choice))
        return str(choice)

    # ---- size ------------------------------------------------------------------------------------

    def size(self) -> int:
        """Number of distinct designs made of the stages' candidate choices.

        Free components count their candidate lists (5 groupings, 3 allocations, ...); the sampler
        draws free grouping and allocation more broadly (any composition, continuous weights), see
        `sampled_grouping_count`.
        """
        groupings = 1 if self.grouping is not None else len(GROUPING_PATTERNS)
        allocations = 1 if self.allocation is not None else len(ALLOCATION_PATTERNS)
        strategy_choices = [1 if s is not None else 2 ** len(self.strategy_names) - 1 for s in self.strategies]
        if self.tunable_groups is not None:
            tunable_sets = [self.tunable_groups]
        else:
            required = {g for g, s in enumerate(self.strategies, start=1) if s is not None}
            tunable_sets = [
                subset
                for subset in nonempty_subsets(tuple(range(1, self.num_groups + 1)))
                if required <= set(subset)
            ]
        assignments = 0
        for subset in tunable_sets:
            product = 1
            for group in subset:
                product *= strategy_choices[group - 1]
            assignments += product
        return groupings * allocations * assignments

    def sampled_grouping_count(self, num_blocks: int) -> int:
        """Distinct groupings the sampler can draw for a backbone of `num_blocks` blocks."""
        if self.grouping is not None:
            return 1
        return comb(num_blocks - 1, self.num_groups - 1)

    # ---- sampling --------------------------------------------------------------------------------

    def sample(
        self,
        n: int,
        seed: int,
        num_blocks: int,
        is_feasible: Callable[[Design], bool] | None = None,
    ) -> SampleResult:
        """`n` designs drawn independently; infeasible ones are redrawn and counted."""
        if n < 1:
            raise InputError("samples", f"must be at least 1, got {n}")
        check_group_count(num_blocks, self.num_groups)
        rng = random.Random(seed)
        designs: list[Design] = []
        redraws = 0
        while len(designs) < n:
            design = self._draw(rng, num_blocks)
            if is_feasible is None or is_feasible(design):
                designs.append(design)
                continue
            redraws += 1
            if redraws > MAX_REDRAWS_PER_DESIGN * n:
                raise InputError(
                    "space",
                    f"{redraws} infeasible designs drawn for {len(designs)} feasible ones; "
                    "the budget is too small or too large for this space on this backbone",
                )
        return SampleResult(designs=tuple(designs), redraws=redraws)

    def sample_blocks(
        self,
        component: str,
        choices: Sequence,
        n_blocks: int,
        seed: int,
        num_blocks: int,
        is_feasible: Callable[[Design], bool] | None = None,
    ) -> BlockSampleResult:
        """`n_blocks` blocks of paired designs, one per choice of `component` (common random numbers).

        `choices` are parsed choice values (as `parse_choice` returns them). Block k draws every
        free component other than `component` once (a latent: a grouping composition, a tunable
        group subset, a strategy subset for every group, one Exp(1) per backbone block) and realises
        it on the space clamped to each choice, so the designs of a block differ only in the
        component under study, as far as the choice leaves the rest meaningful: strategies apply
        to the design's own tuned groups and the allocation weights are the draws of its own tuned
        blocks, normalised (Dirichlet(1) over them, as `sample` draws). A free tunable-group subset
        always contains every group whose strategies are fixed in the clamped spaces (for a
        `strategy.G2` stage, G2).

        If any choice's design of a block is infeasible the whole block is redrawn, each redraw
        counted once. Block k uses its own random stream (the k-th seed drawn from
        `random.Random(seed)`), so it depends neither on `n_blocks` (the first blocks of a longer
        run are the shorter run's) nor, until it is redrawn, on the other choices listed; only the
        redraw decisions depend on the choices, so a redrawn block can differ between two stages
        that list different candidates.
        """
        if not isinstance(n_blocks, int) or n_blocks < 1:
            raise InputError("blocks", f"must be at least 1, got {n_blocks!r}")
        check_group_count(num_blocks, self.num_groups)
        if component not in self.components():
            raise InputError("component", f"unknown component {component!r}; allowed: {', '.join(self.components())}")
        if not choices:
            raise InputError(component, "give at least one choice to compare")
        spaces = [self.clamp(component, choice) for choice in choices]
        clamped_choices = [space.choice(component) for space in spaces]
        if len(set(clamped_choices)) != len(clamped_choices):
            listed = ", ".join(self.format_choice(component, c) for c in clamped_choices)
            raise InputError(component, f"a choice is listed twice in {listed}")

        master = random.Random(seed)
        blocks: list[tuple[Design, ...]] = []
        redraws = 0
        for _ in range(n_blocks):
            rng = random.Random(master.getrandbits(64))
            while True:
                latent = self._draw_latent(rng, num_blocks, component)
                designs = tuple(space._realise(latent, num_blocks) for space in spaces)
                if is_feasible is None or all(is_feasible(design) for design in designs):
                    break
                redraws += 1
                if redraws > MAX_REDRAWS_PER_DESIGN * n_blocks:
                    raise InputError(
                        "space",
                        f"{redraws} blocks with an infeasible design drawn for {len(blocks)} feasible ones; "
                        "the budget is too small or too large for some choice of "
                        f"{component} in this space on this backbone",
                    )
            blocks.append(designs)
        return BlockSampleResult(blocks=tuple(blocks), redraws=redraws)

    def _draw(self, rng: random.Random, num_blocks: int) -> Design:
        # `sample`'s random stream: plans already made depend on the order and number of draws here.
        grouping = self.grouping if self.grouping is not None else _draw_composition(rng, num_blocks, self.num_groups)
        tunable = self.tunable_groups if self.tunable_groups is not None else rng.choice(self._tunable_options())

        strategy_options = nonempty_subsets(self.strategy_names)
        strategies = tuple(
            (fixed if fixed is not None else rng.choice(strategy_options)) if g in tunable else ()
            for g, fixed in enumerate(self.strategies, start=1)
        )

        if self.allocation is not None:
            allocation: str | tuple[float, ...] = self.allocation
        else:
            tuned = _tuned_blocks(grouping, tunable, strategies, num_blocks)
            draws = [rng.expovariate(1.0) if is_tuned else 0.0 for is_tuned in tuned]
            allocation = _dirichlet_weights(draws)
        return Design(grouping=grouping, allocation=allocation, tunable_groups=tunable, strategies=strategies)

    def _tunable_options(self, extra_required: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
        """Non-empty group subsets containing every group whose strategies are fixed (and `extra_required`)."""
        required = {g for g, s in enumerate(self.strategies, start=1) if s is not None} | set(extra_required)
        return [s for s in nonempty_subsets(tuple(range(1, self.num_groups + 1))) if required <= set(s)]

    def _draw_latent(self, rng: random.Random, num_blocks: int, component: str) -> _BlockLatent:
        """Draw every component free in this space except `component`; see `sample_blocks`."""
        studied_group = strategy_group(component, self.num_groups) if component.startswith(STRATEGY_PREFIX) else None
        grouping = None
        if self.grouping is None and component != GROUPING:
            grouping = _draw_composition(rng, num_blocks, self.num_groups)
        tunable = None
        if self.tunable_groups is None and component != TUNABLE_GROUPS:
            # A strategy stage fixes its group's strategies in every clamped space, so the group is tuned.
            tunable = rng.choice(self._tunable_options((studied_group,) if studied_group else ()))
        # Every group gets strategies, tuned or not, so that choices tuning different groups agree on the shared ones.
        strategy_options = nonempty_subsets(self.strategy_names)
        strategies = tuple(
            None if fixed is not None or g == studied_group else rng.choice(strategy_options)
            for g, fixed in enumerate(self.strategies, start=1)
        )
        block_draws = None
        if self.allocation is None and component != ALLOCATION:
            block_draws = tuple(rng.expovariate(1.0) for _ in range(num_blocks))
        return _BlockLatent(grouping=grouping, tunable_groups=tunable, strategies=strategies, block_draws=block_draws)

    def _realise(self, latent: _BlockLatent, num_blocks: int) -> Design:
        """The design this (clamped) space makes of a block's latent: fixed choices first, the latent for the rest."""
        grouping = self.grouping if self.grouping is not None else latent.grouping
        tunable = self.tunable_groups if self.tunable_groups is not None else latent.tunable_groups
        strategies = tuple(
            (fixed if fixed is not None else latent.strategies[g - 1]) if g in tunable else ()
            for g, fixed in enumerate(self.strategies, start=1)
        )
        if self.allocation is not None:
            allocation: str | tuple[float, ...] = self.allocation
        else:
            tuned = _tuned_blocks(grouping, tunable, strategies, num_blocks)
            allocation = _dirichlet_weights([d if is_tuned else 0.0 for d, is_tuned in zip(latent.block_draws, tuned)])
        return Design(grouping=grouping, allocation=allocation, tunable_groups=tunable, strategies=strategies)

    # ---- serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        data = {
            "num_groups": self.num_groups,
            GROUPING: self.grouping,
            ALLOCATION: self.allocation,
            TUNABLE_GROUPS: list(self.tunable_groups) if self.tunable_groups is not None else None,
            "strategies": [list(s) if s is not None else None for s in self.strategies],
        }
        if self.strategy_names != PAPER_STRATEGIES:  # a space of the paper's four reads as before
            data["strategy_names"] = list(self.strategy_names)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "DesignSpace":
        allowed = {"num_groups", GROUPING, ALLOCATION, TUNABLE_GROUPS, "strategies", "strategy_names"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InputError("space", f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        num_groups = data.get("num_groups", DEFAULT_NUM_GROUPS)
        space = cls(num_groups=num_groups, strategy_names=tuple(data.get("strategy_names") or PAPER_STRATEGIES))
        for component, value in (
            (GROUPING, data.get(GROUPING)),
            (ALLOCATION, data.get(ALLOCATION)),
            (TUNABLE_GROUPS, data.get(TUNABLE_GROUPS)),
        ):
            if value is not None:
                space = space.clamp(component, value)
        for group, value in enumerate(data.get("strategies") or (), start=1):
            if value is not None:
                space = space.clamp(strategy_component(group), value)
        return space

    def describe(self) -> str:
        """Readable multi-line description: each component, fixed or free, and the space's size."""
        lines = [f"design space with {self.num_groups} groups, strategies from {', '.join(self.strategy_names)}"]
        for component in self.components():
            choice = self.choice(component)
            state = self.format_choice(component, choice) if choice is not None else f"free ({len(self.candidates(component))} candidates)"
            lines.append(f"  {component:<16} {state}")
        lines.append(f"  size: {self.size():,} designs from the candidate choices")
        return "\n".join(lines)


def _draw_composition(rng: random.Random, num_blocks: int, num_groups: int) -> tuple[int, ...]:
    """A uniformly random composition of the blocks: G-1 distinct cut points among the L-1 gaps between blocks."""
    cuts = sorted(rng.sample(range(1, num_blocks), num_groups - 1))
    bounds = [0, *cuts, num_blocks]
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


def _tuned_blocks(grouping, tunable: tuple[int, ...], strategies, num_blocks: int) -> list[bool]:
    draft = Design(grouping=grouping, allocation="uniform", tunable_groups=tunable, strategies=strategies)
    return [g in tunable for g in draft.block_groups(num_blocks)]


def _dirichlet_weights(draws: list[float]) -> tuple[float, ...]:
    """Unit exponentials of the tuned blocks (zero elsewhere), normalised: Dirichlet(1) over the tuned blocks.

    The floor keeps a tuned block's weight positive after the design's 6-decimal rounding.
    """
    total = sum(draws)
    return tuple(max(d / total, 10.0 ** -6) if d > 0 else 0.0 for d in draws)
