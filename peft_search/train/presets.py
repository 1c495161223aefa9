"""Named baselines at the same parameter budget, and the default learning rate of every trial.

- `full`: full fine-tuning (every backbone parameter trainable; no budget).
- `adapter`, `prefix`, `bitfit`, `lora`: that one strategy on every block, uniform grouping,
  uniform allocation, all groups tunable. BitFit has a fixed size (the blocks' biases) and so
  realises less than the budget; it is the one design allowed to miss the budget.
- `s4-t5`: the paper's S4 design found for T5 (DESIGN.md section 1): spindle grouping, uniform
  allocation, all groups, G1 {adapter, lora}, G2 {adapter, prefix}, G3 {adapter, prefix, bitfit},
  G4 {prefix, bitfit, lora}.

Learning rates: PEFT modules train well only far above full fine-tuning's rates (FACTS.md: LoRA at
5e-4 stays at chance on SST-2 in one short epoch, 5e-3 reaches 0.80). Each preset has its own
default, chosen on MiniLM + SST-2 (2,000 examples, one epoch, seed 0; docs/benchmarks.md): prefix
tuning wants the highest (dev accuracy 0.53 / 0.64 / 0.73 at 5e-3 / 1e-2 / 3e-2), BitFit is flat
between 5e-3 and 1e-2 (0.743 / 0.745). Any other design gets DESIGN_LEARNING_RATE (LoRA's and the
adapter's rate; a mixed design's prefix part then learns more slowly than it could). `--lr`
overrides all of them.
"""

from __future__ import annotations

from peft_search.errors import InputError
from peft_search.space import Design

FULL = "full"
ALL_GROUPS = (1, 2, 3, 4)


def _single(strategy: str) -> Design:
    return Design(grouping="uniform", allocation="uniform", tunable_groups=ALL_GROUPS, strategies=((strategy,),) * 4)


PRESET_DESIGNS: dict[str, Design | None] = {
    FULL: None,
    "adapter": _single("adapter"),
    "prefix": _single("prefix"),
    "bitfit": _single("bitfit"),
    "lora": _single("lora"),
    "s4-t5": Design(
        grouping="spindle",
        allocation="uniform",
        tunable_groups=ALL_GROUPS,
        strategies=(("adapter", "lora"), ("adapter", "prefix"), ("adapter", "prefix", "bitfit"), ("prefix", "bitfit", "lora")),
    ),
}

PRESET_LEARNING_RATES = {
    FULL: 5e-5,
    "adapter": 5e-3,
    "prefix": 3e-2,
    "bitfit": 1e-2,
    "lora": 5e-3,
    "s4-t5": 5e-3,
}
DESIGN_LEARNING_RATE = 5e-3
PRESETS = tuple(PRESET_DESIGNS)


def preset_design(name: str) -> Design | None:
    """The design of a preset (None for `full`); InputError for an unknown name."""
    if name not in PRESET_DESIGNS:
        raise InputError("preset", f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESET_DESIGNS[name]


def default_learning_rate(preset: str | None) -> float:
    return PRESET_LEARNING_RATES[preset] if preset is not None else DESIGN_LEARNING_RATE
