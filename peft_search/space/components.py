"""The four components of a PEFT design space and their choices (docs/design.md, "The method" and "Designs").

Pure Python: this module must not import torch, transformers or ray.
"""

from __future__ import annotations

from itertools import combinations

from peft_search.errors import InputError

# Every strategy a design may name, in canonical order (a design's JSON lists a group's strategies in
# this order: new names are appended, so existing designs keep their ids). The paper's four come first
# and are what a search draws from unless the job names others (`strategies` in the job spec).
STRATEGIES: tuple[str, ...] = ("adapter", "prefix", "bitfit", "lora", "dora", "ia3", "vera", "loha", "rslora")
PAPER_STRATEGIES: tuple[str, ...] = STRATEGIES[:4]
GROUPING_PATTERNS: tuple[str, ...] = ("increasing", "uniform", "decreasing", "spindle", "bottleneck")
ALLOCATION_PATTERNS: tuple[str, ...] = ("increasing", "uniform", "decreasing")
DEFAULT_NUM_GROUPS = 4

# Component names, in the order the paper refines them; strategy assignment is one component per group.
GROUPING = "grouping"
ALLOCATION = "allocation"
TUNABLE_GROUPS = "tunable_groups"
STRATEGY_PREFIX = "strategy.G"


def strategy_component(group: int) -> str:
    """Name of the strategy-assignment component of a 1-based group: `strategy.G2`."""
    return f"{STRATEGY_PREFIX}{group}"


def component_names(num_groups: int) -> tuple[str, ...]:
    return (GROUPING, ALLOCATION, TUNABLE_GROUPS) + tuple(
        strategy_component(g) for g in range(1, num_groups + 1)
    )


def strategy_group(component: str, num_groups: int) -> int:
    """The 1-based group of a `strategy.G<i>` component; an error naming the allowed ones otherwise."""
    if component.startswith(STRATEGY_PREFIX) and component[len(STRATEGY_PREFIX) :].isdigit():
        group = int(component[len(STRATEGY_PREFIX) :])
        if 1 <= group <= num_groups:
            return group
    raise InputError("component", f"unknown component {component!r}; allowed: {', '.join(component_names(num_groups))}")


def grouping_weights(pattern: str, num_groups: int) -> tuple[int, ...]:
    """Weight vector of a named grouping pattern; for G=4 exactly docs/design.md's (1,2,3,4), (2,1,1,2), ..."""
    if pattern == "increasing":
        return tuple(range(1, num_groups + 1))
    if pattern == "uniform":
        return (1,) * num_groups
    if pattern == "decreasing":
        return tuple(range(num_groups, 0, -1))
    if pattern in ("spindle", "bottleneck"):
        # Spindle: the end groups are half the size of the middle ones; bottleneck: the reverse.
        ends, middle = (1, 2) if pattern == "spindle" else (2, 1)
        if num_groups <= 2:
            return (ends,) * num_groups
        return (ends,) + (middle,) * (num_groups - 2) + (ends,)
    raise InputError("grouping", f"unknown pattern {pattern!r}; allowed: {', '.join(GROUPING_PATTERNS)}")


def group_sizes_from_pattern(pattern: str, num_blocks: int, num_groups: int) -> tuple[int, ...]:
    """Scale a pattern's weights to `num_blocks` by largest remainder, every group at least one block.

    L=12 spindle gives (2, 4, 4, 2); L=24 gives (4, 8, 8, 4).
    """
    check_group_count(num_blocks, num_groups)
    weights = grouping_weights(pattern, num_groups)
    total = sum(weights)
    quotas = [num_blocks * w / total for w in weights]
    sizes = [int(q) for q in quotas]
    # Largest remainder first; ties go to the earlier group so the result is deterministic.
    by_remainder = sorted(range(num_groups), key=lambda i: (-(quotas[i] - sizes[i]), i))
    for i in by_remainder[: num_blocks - sum(sizes)]:
        sizes[i] += 1
    # A group rounded down to zero takes a block from the largest group.
    for i in range(num_groups):
        while sizes[i] == 0:
            largest = max(range(num_groups), key=lambda j: (sizes[j], -j))
            sizes[largest] -= 1
            sizes[i] += 1
    return tuple(sizes)


def check_group_count(num_blocks: int, num_groups: int) -> None:
    if num_groups < 1:
        raise InputError("num_groups", f"must be at least 1, got {num_groups}")
    if num_groups > num_blocks:
        raise InputError(
            "num_groups", f"{num_groups} groups cannot split a backbone of {num_blocks} blocks; use at most {num_blocks}"
        )


def allocation_weight(pattern: str, position: int, num_blocks: int) -> float:
    """Weight of the block at 1-based `position` among all `num_blocks` blocks."""
    if pattern == "increasing":
        return float(position)
    if pattern == "uniform":
        return 1.0
    if pattern == "decreasing":
        return float(num_blocks + 1 - position)
    raise InputError("allocation", f"unknown pattern {pattern!r}; allowed: {', '.join(ALLOCATION_PATTERNS)}")


def nonempty_subsets(items: tuple) -> list[tuple]:
    """Every non-empty subset, smallest first, each in the items' own order."""
    return [subset for size in range(1, len(items) + 1) for subset in combinations(items, size)]


def parse_strategy_set(value, field: str) -> tuple[str, ...]:
    """A non-empty set of strategies from a list or an `adapter+lora` string, in canonical order."""
    names = value.split("+") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise InputError(field, f"give a non-empty list of strategies from {', '.join(STRATEGIES)}")
    for name in names:
        if name not in STRATEGIES:
            raise InputError(field, f"unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    if len(set(names)) != len(names):
        raise InputError(field, f"strategy listed twice in {list(names)}")
    return tuple(s for s in STRATEGIES if s in names)


def parse_group_set(value, num_groups: int, field: str) -> tuple[int, ...]:
    """A non-empty set of 1-based groups from a list of ints or a `G1+G3` string, sorted."""
    if isinstance(value, str):
        try:
            groups = [int(part.strip().removeprefix("G").removeprefix("g")) for part in value.split("+")]
        except ValueError:
            raise InputError(field, f"cannot read {value!r}; write groups as G1+G3") from None
    else:
        groups = value
    if not isinstance(groups, (list, tuple)) or not groups:
        raise InputError(field, f"give a non-empty list of groups from 1 to {num_groups}")
    for group in groups:
        if not isinstance(group, int) or isinstance(group, bool) or not 1 <= group <= num_groups:
            raise InputError(field, f"group {group!r} is not one of 1..{num_groups}")
    if len(set(groups)) != len(groups):
        raise InputError(field, f"group listed twice in {list(groups)}")
    return tuple(sorted(groups))


def format_group_set(groups: tuple[int, ...]) -> str:
    return "+".join(f"G{g}" for g in groups)


def format_strategy_set(strategies: tuple[str, ...]) -> str:
    return "+".join(strategies) if strategies else "-"
