"""The fit rule: whether a preset or a design can be trained on a backbone at a budget, and with what.

One home for it, used by every trial (`prepare`) and by whatever chooses what to train (the final
evaluation's contenders), so that a design is never accepted in one place and refused in another.
It lives in train, not in peft, because the exceptions are presets, a train concept: `full` has no
budget and BitFit's size is fixed by the backbone's biases (presets.py); peft only plans budgets
and must not import train. peft is imported lazily, so `import peft_search.train` stays free of
torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peft_search.errors import InputError
from peft_search.space import Design
from peft_search.train.presets import preset_design

if TYPE_CHECKING:
    from peft_search.peft import BackboneProfile, BudgetPlan

# Presets allowed to miss the budget: a fixed-size strategy alone (its `elastic` is False) costs what it
# costs whatever the budget: BitFit the blocks' biases, (IA)3 its rescaling vectors, VeRA its vectors at
# rank 256 (docs/design.md, "Strategies"; tests/test_train_fit.py holds this list to the registry).
FIXED_SIZE_PRESETS = ("bitfit", "ia3", "vera")


@dataclass(frozen=True)
class Fit:
    """What a preset or design trains on a backbone: its plan (None for full fine-tuning, which
    trains every backbone parameter) and the counts a trial reports."""

    plan: "BudgetPlan | None"
    realised_params: int  # trainable backbone parameters as planned (all of them for full)
    target_params: int  # the budget (the backbone's size for full)
    head_params: int  # the task head's, always trained and counted apart

    def counts(self) -> dict[str, int]:
        return {"realised_params": self.realised_params, "target_params": self.target_params, "head_params": self.head_params}


def plan_fit(profile: "BackboneProfile", design: str | Design, budget_fraction: float, *,
             backbone: str | None = None) -> Fit:
    """Plan `design` (a preset name or a Design) on the backbone `profile` describes
    (`peft_search.peft.profile_backbone`, a meta-device model will do) at `budget_fraction`.

    Raises InputError (field `design...`) when the design does not fit the backbone (e.g. more groups
    than blocks) or its plan lands more than 2% from the budget; only FIXED_SIZE_PRESETS may miss it
    and `full` has none. `backbone` names the model in messages (default: its model type)."""
    from peft_search.peft import plan_budget
    from peft_search.peft.budget import FEASIBLE_RELATIVE_ERROR

    preset = design if isinstance(design, str) else None
    chosen = preset_design(preset) if preset is not None else design
    if chosen is None:  # full fine-tuning
        return Fit(None, profile.backbone_params, profile.backbone_params, profile.head_params)
    try:
        plan = plan_budget(profile, chosen, budget_fraction)
    except InputError as error:
        raise error.under("design") from None
    if not plan.feasible and preset not in FIXED_SIZE_PRESETS:
        raise InputError(
            "design",
            f"realises {plan.planned_params:,} trainable parameters for a budget of {plan.target_params:,} "
            f"({plan.relative_error:+.1%}) on {backbone or profile.model_type}; a design must land within "
            f"{FEASIBLE_RELATIVE_ERROR:.0%}",
        )
    return Fit(plan, plan.planned_params, plan.target_params, profile.head_params)


__all__ = ["FIXED_SIZE_PRESETS", "Fit", "plan_fit"]
