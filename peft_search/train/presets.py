"""Named baselines at the same parameter budget, and the default learning rate of every trial.

- `full`: full fine-tuning (every backbone parameter trainable; no budget).
- `adapter`, `prefix`, `bitfit`, `lora`, and the newer `dora`, `ia3`, `vera`, `loha`, `rslora`: that one
  strategy on every block, uniform grouping, uniform allocation, all groups tunable. BitFit, (IA)3 and
  VeRA have a fixed size (the blocks' biases; the rescaling vectors; VeRA's vectors at rank 256) and so
  realise what they cost, not the budget: the presets allowed to miss it (`fit.FIXED_SIZE_PRESETS`).
- `s4-t5`: the paper's S4 design found for T5 (docs/design.md, "The method"): spindle grouping, uniform
  allocation, all groups, G1 {adapter, lora}, G2 {adapter, prefix}, G3 {adapter, prefix, bitfit},
  G4 {prefix, bitfit, lora}.

Learning rates: PEFT modules train well only far above full fine-tuning's rates (measured here: LoRA at
5e-4 stays at chance on SST-2 in one short epoch, 5e-3 reaches 0.80), and not all at the same rate:
on MiniLM + SST-2 (2,000 examples, one epoch, seed 0; docs/benchmarks.md) prefix tuning wanted 3e-2
(dev accuracy 0.53 / 0.64 / 0.73 at 5e-3 / 1e-2 / 3e-2) and BitFit about 1e-2, LoRA and adapters
5e-3. So a trial's learning rate is a base rate (5e-3 for every design and PEFT preset; 5e-5 for
full fine-tuning) and each strategy's parameters train at base x its `learning_rate_scale` (its
module in `peft_search.peft.strategies`; the head at the base rate): one learning rate per job, and
a mixed design's prefix and BitFit parts are not starved by it (docs/design.md, "Learning rates").
`--lr` sets the base rate.
"""

from __future__ import annotations

from peft_search.errors import InputError
from peft_search.space import STRATEGIES, Design

FULL = "full"
ALL_GROUPS = (1, 2, 3, 4)


def _single(strategy: str) -> Design:
    return Design(grouping="uniform", allocation="uniform", tunable_groups=ALL_GROUPS, strategies=((strategy,),) * 4)


PRESET_DESIGNS: dict[str, Design | None] = {
    FULL: None,
    **{strategy: _single(strategy) for strategy in STRATEGIES},  # each strategy alone
    "s4-t5": Design(
        grouping="spindle",
        allocation="uniform",
        tunable_groups=ALL_GROUPS,
        strategies=(("adapter", "lora"), ("adapter", "prefix"), ("adapter", "prefix", "bitfit"), ("prefix", "bitfit", "lora")),
    ),
}

DESIGN_LEARNING_RATE = 5e-3
FULL_LEARNING_RATE = 5e-5
MAX_LEARNING_RATE = 1.0  # every learning rate, given or tuned, lies in (0, MAX_LEARNING_RATE]
PRESETS = tuple(PRESET_DESIGNS)


def preset_design(name: str) -> Design | None:
    """The design of a preset (None for `full`); InputError for an unknown name."""
    if name not in PRESET_DESIGNS:
        raise InputError("preset", f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESET_DESIGNS[name]


def check_learning_rate(value, field: str = "learning_rate") -> None:
    """The one bounds check of a learning rate: a number in (0, MAX_LEARNING_RATE]."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= MAX_LEARNING_RATE:
        raise InputError(field, f"must be a number in (0, {MAX_LEARNING_RATE:g}], got {value!r}")


def default_learning_rate(preset: str | None) -> float:
    """The base rate: full fine-tuning's for `full`, else the one every design starts from."""
    return FULL_LEARNING_RATE if preset == FULL else DESIGN_LEARNING_RATE
