"""`Design`: one fully concrete point of a PEFT design space, with a canonical JSON form.

A design is portable across backbones when its grouping and allocation are named patterns; a
design sampled from a free component carries explicit numbers (group sizes, block weights) and then
fits only backbones with that many blocks. Pure Python: no torch, no ray.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from peft_search.errors import InputError
from peft_search.space.components import (
    ALLOCATION_PATTERNS,
    GROUPING_PATTERNS,
    allocation_weight,
    check_group_count,
    format_group_set,
    format_strategy_set,
    group_sizes_from_pattern,
    parse_group_set,
    parse_strategy_set,
)

DESIGN_KEYS = ("grouping", "allocation", "tunable_groups", "strategies")
# Free allocation weights are stored rounded so that the canonical JSON (and the id) is stable.
WEIGHT_DECIMALS = 6


@dataclass(frozen=True)
class Design:
    """How to fine-tune a backbone: grouping, allocation, tunable groups, strategies per group.

    grouping:       a pattern name, or explicit block counts per group (a free grouping).
    allocation:     a pattern name, or one weight per block (a free allocation; zero on untuned blocks).
    tunable_groups: 1-based groups that get trainable parameters.
    strategies:     per group, the strategies it uses; empty exactly for the untuned groups.
    """

    grouping: str | tuple[int, ...]
    allocation: str | tuple[float, ...]
    tunable_groups: tuple[int, ...]
    strategies: tuple[tuple[str, ...], ...]

    def __post_init__(self):
        num_groups = len(self.strategies)
        if num_groups < 1:
            raise InputError("strategies", "give one entry per group (at least one group)")
        if isinstance(self.grouping, str):
            if self.grouping not in GROUPING_PATTERNS:
                raise InputError(
                    "grouping", f"unknown pattern {self.grouping!r}; allowed: {', '.join(GROUPING_PATTERNS)} or a list of group sizes"
                )
        elif len(self.grouping) != num_groups or any(not isinstance(n, int) or n < 1 for n in self.grouping):
            raise InputError("grouping", f"give {num_groups} positive block counts, got {list(self.grouping)}")
        if isinstance(self.allocation, str):
            if self.allocation not in ALLOCATION_PATTERNS:
                raise InputError(
                    "allocation", f"unknown pattern {self.allocation!r}; allowed: {', '.join(ALLOCATION_PATTERNS)} or a list of block weights"
                )
        elif any(not isinstance(w, (int, float)) or w < 0 for w in self.allocation):
            raise InputError("allocation", "block weights must be non-negative numbers")
        # Canonical forms, so that equal designs have equal JSON and ids.
        tunable = parse_group_set(self.tunable_groups, num_groups, "tunable_groups")
        strategies = []
        for group, chosen in enumerate(self.strategies, start=1):
            field = f"strategies[{group - 1}]"
            if group in tunable:
                strategies.append(parse_strategy_set(chosen, field))
            elif chosen:
                raise InputError(field, f"group G{group} is not tunable, so its strategy list must be empty")
            else:
                strategies.append(())
        object.__setattr__(self, "tunable_groups", tunable)
        object.__setattr__(self, "strategies", tuple(strategies))
        if not isinstance(self.grouping, str):
            object.__setattr__(self, "grouping", tuple(self.grouping))
        if not isinstance(self.allocation, str):
            object.__setattr__(self, "allocation", tuple(round(float(w), WEIGHT_DECIMALS) for w in self.allocation))

    @property
    def num_groups(self) -> int:
        return len(self.strategies)

    # ---- realisation on a backbone with `num_blocks` blocks -------------------------------------

    def group_sizes(self, num_blocks: int) -> tuple[int, ...]:
        check_group_count(num_blocks, self.num_groups)
        if isinstance(self.grouping, str):
            return group_sizes_from_pattern(self.grouping, num_blocks, self.num_groups)
        if sum(self.grouping) != num_blocks:
            raise InputError(
                "grouping", f"group sizes {list(self.grouping)} add up to {sum(self.grouping)}, but the backbone has {num_blocks} blocks"
            )
        return self.grouping

    def block_groups(self, num_blocks: int) -> tuple[int, ...]:
        """The 1-based group of every block, in block order."""
        return tuple(g for g, size in enumerate(self.group_sizes(num_blocks), start=1) for _ in range(size))

    def block_weights(self, num_blocks: int) -> tuple[float, ...]:
        """Allocation weight of every block; zero for blocks outside the tunable groups."""
        tuned = [g in self.tunable_groups for g in self.block_groups(num_blocks)]
        if isinstance(self.allocation, str):
            return tuple(
                allocation_weight(self.allocation, position, num_blocks) if is_tuned else 0.0
                for position, is_tuned in enumerate(tuned, start=1)
            )
        if len(self.allocation) != num_blocks:
            raise InputError(
                "allocation", f"{len(self.allocation)} block weights given, but the backbone has {num_blocks} blocks"
            )
        weights = tuple(float(w) if is_tuned else 0.0 for w, is_tuned in zip(self.allocation, tuned))
        if sum(weights) <= 0:
            raise InputError("allocation", "the tuned blocks' weights add up to zero")
        return weights

    # ---- serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "grouping": self.grouping if isinstance(self.grouping, str) else list(self.grouping),
            "allocation": self.allocation if isinstance(self.allocation, str) else list(self.allocation),
            "tunable_groups": list(self.tunable_groups),
            "strategies": [list(s) for s in self.strategies],
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces; equal designs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def design_id(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict) -> "Design":
        if not isinstance(data, dict):
            raise InputError("design", "must be a JSON object with keys " + ", ".join(DESIGN_KEYS))
        unknown = sorted(set(data) - set(DESIGN_KEYS))
        if unknown:
            raise InputError("design", f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(DESIGN_KEYS)}")
        missing = [key for key in DESIGN_KEYS if key not in data]
        if missing:
            raise InputError("design", f"missing key(s) {', '.join(missing)}")
        raw_strategies = data["strategies"]
        if not isinstance(raw_strategies, list) or not raw_strategies:
            raise InputError("strategies", "give one list of strategies per group")
        return cls(
            grouping=_read_grouping(data["grouping"]),
            allocation=_read_allocation(data["allocation"]),
            tunable_groups=data["tunable_groups"],
            strategies=tuple(s if isinstance(s, str) else tuple(s or ()) for s in raw_strategies),
        )

    @classmethod
    def from_json(cls, text: str) -> "Design":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError("design", f"not valid JSON ({error})") from None
        return cls.from_dict(data)

    def summary(self) -> str:
        """One readable line: `spindle | uniform | G1+G2+G3+G4 | G1:adapter+lora G2:prefix ...`."""
        grouping = self.grouping if isinstance(self.grouping, str) else "free" + str(tuple(self.grouping))
        allocation = self.allocation if isinstance(self.allocation, str) else "free"
        strategies = " ".join(f"G{g}:{format_strategy_set(s)}" for g, s in enumerate(self.strategies, start=1))
        return f"{grouping} | {allocation} | {format_group_set(self.tunable_groups)} | {strategies}"


def _read_grouping(value) -> str | tuple[int, ...]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in value):
        return tuple(value)
    raise InputError("grouping", f"give a pattern ({', '.join(GROUPING_PATTERNS)}) or a list of group sizes")


def _read_allocation(value) -> str | tuple[float, ...]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in value):
        return tuple(value)
    raise InputError("allocation", f"give a pattern ({', '.join(ALLOCATION_PATTERNS)}) or a list of block weights")
