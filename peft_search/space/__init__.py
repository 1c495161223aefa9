"""The PEFT design space: components, `Design`, `DesignSpace`, sampling. Pure Python (no torch, no ray)."""

from peft_search.space.components import (
    ALLOCATION,
    ALLOCATION_PATTERNS,
    GROUPING,
    GROUPING_PATTERNS,
    PAPER_STRATEGIES,
    STRATEGIES,
    TUNABLE_GROUPS,
    component_names,
    strategy_component,
)
from peft_search.space.design import Design
from peft_search.space.design_space import BlockSampleResult, DesignSpace, SampleResult

__all__ = [
    "ALLOCATION",
    "ALLOCATION_PATTERNS",
    "GROUPING",
    "GROUPING_PATTERNS",
    "PAPER_STRATEGIES",
    "STRATEGIES",
    "TUNABLE_GROUPS",
    "BlockSampleResult",
    "Design",
    "DesignSpace",
    "SampleResult",
    "component_names",
    "strategy_component",
]
