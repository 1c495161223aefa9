"""Budget realisation: from a design and a budget fraction to integer module sizes per block.

docs/design.md, "Budget". B = budget_fraction x backbone parameters (task head excluded). Each tuned block
gets b_l = B w_l / sum(w). BitFit has a fixed cost; the rest of b_l is split equally among the block's
other strategies and turned into integer sizes by each module's exact per-unit cost. A block that
cannot absorb its share hands the excess to the other tuned blocks in proportion to their weights;
rounding is repaired globally. A plan that still misses B by more than 2% is infeasible.

The counts here are the plan; `inject` measures the model and checks it realised exactly this.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from peft_search.errors import InputError
from peft_search.peft.backbones import backbone_blocks
from peft_search.peft.model_parts import backbone_parameters, output_layer_ids
from peft_search.peft.strategies import STRATEGY_REGISTRY
from peft_search.space import Design

FEASIBLE_RELATIVE_ERROR = 0.02


@dataclass(frozen=True)
class BlockProfile:
    """What each strategy costs in one block of one backbone (`Strategy.fixed_cost` / `unit_cost`):
    `fixed_costs` at any size (BitFit: all of it; an adapter: its up-projection's bias), and
    `unit_costs` per unit of size for the strategies the budget sizes (adapter bottleneck dimension,
    prefix position over all the block's attentions, LoRA rank over all its projections)."""

    name: str
    fixed_costs: dict[str, int]
    unit_costs: dict[str, int]

    def fixed(self, strategy: str) -> int:
        return self.fixed_costs[strategy]

    def unit(self, strategy: str) -> int:
        return self.unit_costs[strategy]


@dataclass(frozen=True)
class BackboneProfile:
    model_type: str
    backbone_params: int
    head_params: int
    blocks: tuple[BlockProfile, ...]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def smallest_design_params(self) -> int:
        """The fewest trainable parameters a design can plan: one unit of the cheapest strategy in the
        cheapest block (a budget below it makes every design infeasible)."""
        costs = [
            block.fixed(name) + (block.unit(name) if strategy.elastic else 0)
            for block in self.blocks
            for name, strategy in STRATEGY_REGISTRY.items()
        ]
        return min(cost for cost in costs if cost > 0)


def profile_backbone(model) -> BackboneProfile:
    """Per-block unit costs measured off the (un-injected) model; works on a meta-device model."""
    blocks = []
    for site in backbone_blocks(model):
        blocks.append(
            BlockProfile(
                name=site.name,
                fixed_costs={name: s.fixed_cost(site) for name, s in STRATEGY_REGISTRY.items()},
                unit_costs={name: s.unit_cost(site) for name, s in STRATEGY_REGISTRY.items() if s.elastic},
            )
        )
    backbone_params = sum(p.numel() for p in backbone_parameters(model))
    output_layer = output_layer_ids(model)  # a language model's own head: frozen, neither backbone nor task head
    head_params = sum(p.numel() for p in model.parameters() if id(p) not in output_layer) - backbone_params
    return BackboneProfile(
        model_type=model.config.model_type,
        backbone_params=backbone_params,
        head_params=head_params,
        blocks=tuple(blocks),
    )


@dataclass(frozen=True)
class BlockPlan:
    """One tuned block's plan: its strategies and each one's size (`Strategy.size_field`; 0 when the
    block does not use it). These fields are stored in every saved design.json: keep their names."""

    block: int  # 0-based position among all blocks
    name: str
    group: int  # 1-based
    strategies: tuple[str, ...]
    adapter_size: int = 0
    prefix_length: int = 0
    lora_rank: int = 0
    bitfit_params: int = 0
    dora_rank: int = 0
    ia3_params: int = 0
    vera_params: int = 0
    loha_rank: int = 0
    rslora_rank: int = 0
    params: int = 0  # planned trainable parameters of this block


@dataclass(frozen=True)
class BudgetPlan:
    design: Design
    budget_fraction: float
    target_params: int
    planned_params: int
    blocks: tuple[BlockPlan, ...]  # tuned blocks only

    @property
    def relative_error(self) -> float:
        if self.target_params <= 0:  # a budget too small to buy one parameter: nothing lands within 2% of it
            return 0.0 if self.planned_params == 0 else math.inf
        return (self.planned_params - self.target_params) / self.target_params

    @property
    def feasible(self) -> bool:
        return abs(self.relative_error) <= FEASIBLE_RELATIVE_ERROR

    def to_dict(self) -> dict:
        return {
            "design": self.design.to_dict(),
            "budget_fraction": self.budget_fraction,
            "target_params": self.target_params,
            "planned_params": self.planned_params,
            "blocks": [{**asdict(b), "strategies": list(b.strategies)} for b in self.blocks],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "BudgetPlan":
        return cls(
            design=Design.from_dict(data["design"]),
            budget_fraction=data["budget_fraction"],
            target_params=data["target_params"],
            planned_params=data["planned_params"],
            blocks=tuple(BlockPlan(**{**b, "strategies": tuple(b["strategies"])}) for b in data["blocks"]),
        )


def check_budget_fraction(budget_fraction: float) -> None:
    if not isinstance(budget_fraction, (int, float)) or not 0 < budget_fraction < 1:
        raise InputError("budget", f"must be a fraction strictly between 0 and 1 (e.g. 0.005), got {budget_fraction!r}")


def plan_budget(profile: BackboneProfile, design: Design, budget_fraction: float) -> BudgetPlan:
    check_budget_fraction(budget_fraction)
    num_blocks = profile.num_blocks
    groups = design.block_groups(num_blocks)
    weights = design.block_weights(num_blocks)
    target = round(budget_fraction * profile.backbone_params)
    tuned = [i for i in range(num_blocks) if weights[i] > 0]
    total_weight = sum(weights[i] for i in tuned)

    def strategies_of(i: int) -> tuple[str, ...]:
        return design.strategies[groups[i] - 1]

    def fixed_cost(i: int) -> int:
        return sum(profile.blocks[i].fixed(s) for s in strategies_of(i))

    elastic = {i: [s for s in strategies_of(i) if STRATEGY_REGISTRY[s].elastic] for i in tuned}
    active = [i for i in tuned if elastic[i]]
    share = {i: target * weights[i] / total_weight for i in tuned}

    # Continuous budget per active block: its own share less its fixed cost, plus, by weight, what the
    # BitFit-only blocks could not use (negative when BitFit alone costs more than their share).
    elastic_budget: dict[int, float] = {}
    if active:
        active_weight = sum(weights[i] for i in active)
        excess = sum(share[i] - fixed_cost(i) for i in tuned if not elastic[i])
        elastic_budget = {i: share[i] - fixed_cost(i) + excess * weights[i] / active_weight for i in active}
        # A block that cannot buy one unit of each of its strategies gets exactly that; the
        # shortfall is taken from the others by weight, until every block can pay its minimum.
        clamped: set[int] = set()
        while True:
            minimum = {i: sum(profile.blocks[i].unit(s) for s in elastic[i]) for i in active}
            short = [i for i in active if i not in clamped and elastic_budget[i] < minimum[i]]
            if not short:
                break
            deficit = sum(minimum[i] - elastic_budget[i] for i in short)
            for i in short:
                elastic_budget[i] = minimum[i]
                clamped.add(i)
            free = [i for i in active if i not in clamped]
            if not free:
                break
            free_weight = sum(weights[i] for i in free)
            for i in free:
                elastic_budget[i] -= deficit * weights[i] / free_weight

    sizes = {
        (i, s): max(1, round(elastic_budget[i] / len(elastic[i]) / profile.blocks[i].unit(s)))
        for i in active
        for s in elastic[i]
    }
    sizes = _repair_rounding(sizes, profile, target - sum(fixed_cost(i) for i in tuned))

    blocks = []
    for i in tuned:
        chosen = strategies_of(i)
        block = profile.blocks[i]
        # An elastic strategy's size is its units; a fixed one's is its parameter count (BitFit's).
        size_fields = {
            STRATEGY_REGISTRY[s].size_field: sizes[(i, s)] if STRATEGY_REGISTRY[s].elastic else block.fixed(s) for s in chosen
        }
        params = fixed_cost(i) + sum(sizes[(i, s)] * block.unit(s) for s in elastic[i])
        blocks.append(BlockPlan(block=i, name=block.name, group=groups[i], strategies=chosen, params=params, **size_fields))
    return BudgetPlan(
        design=design,
        budget_fraction=budget_fraction,
        target_params=target,
        planned_params=sum(b.params for b in blocks),
        blocks=tuple(blocks),
    )


def strategy_params(profile: BackboneProfile, plan: BudgetPlan) -> dict[str, int]:
    """Each strategy's planned trainable parameters over the plan's blocks, in canonical order."""
    totals: dict[str, int] = {}
    for block in plan.blocks:
        costs = profile.blocks[block.block]
        for name in block.strategies:
            strategy = STRATEGY_REGISTRY[name]
            elastic = getattr(block, strategy.size_field) * costs.unit(name) if strategy.elastic else 0
            totals[name] = totals.get(name, 0) + costs.fixed(name) + elastic
    return {name: totals[name] for name in STRATEGY_REGISTRY if name in totals}


def describe_shares(params: dict[str, int]) -> str:
    """`lora 61%, ia3 39%`: each strategy's share of the trainable parameters."""
    total = sum(params.values())
    return ", ".join(f"{name} {count / total:.0%}" for name, count in params.items()) if total else "none"


def _repair_rounding(sizes: dict, profile: BackboneProfile, elastic_target: int) -> dict:
    """Nudge sizes one unit at a time, always taking the step that best closes the gap to the target,
    until no single step brings the total closer."""
    sizes = dict(sizes)
    units = {key: profile.blocks[key[0]].unit(key[1]) for key in sizes}
    gap = elastic_target - sum(sizes[key] * units[key] for key in sizes)
    while sizes:
        best_key, best_step, best_gap = None, 0, abs(gap)
        for key, unit in units.items():
            for step in (1, -1):
                if sizes[key] + step < 1:
                    continue
                new_gap = abs(gap - step * unit)
                if new_gap < best_gap:
                    best_key, best_step, best_gap = key, step, new_gap
        if best_key is None:
            break
        sizes[best_key] += best_step
        gap -= best_step * units[best_key]
    return sizes
