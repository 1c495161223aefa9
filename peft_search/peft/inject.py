"""Injection: freeze the backbone and add each tuned block's PEFT modules, sized by its budget plan.

The realised trainable-parameter count is measured on the model after injection, and must equal
the plan's count exactly: a mismatch means the plan's cost model and the modules disagree (a bug).
"""

from __future__ import annotations

from dataclasses import dataclass

from peft_search.peft.backbones import backbone_blocks
from peft_search.peft.budget import BudgetPlan, plan_budget, profile_backbone
from peft_search.peft.model_parts import backbone_parameters, output_layer_ids
from peft_search.peft.strategies import injection_order
from peft_search.space import Design


@dataclass(frozen=True)
class InjectionReport:
    plan: BudgetPlan
    backbone_params: int
    realised_params: int  # trainable parameters in the backbone after injection, counted on the model
    head_params: int  # the task head, always trained, reported separately

    @property
    def design(self) -> Design:
        return self.plan.design

    @property
    def target_params(self) -> int:
        return self.plan.target_params

    @property
    def relative_error(self) -> float:
        return (self.realised_params - self.target_params) / self.target_params

    def to_dict(self) -> dict:
        return {
            "design_id": self.design.design_id,
            "design": self.design.to_dict(),
            "budget_fraction": self.plan.budget_fraction,
            "backbone_params": self.backbone_params,
            "target_params": self.target_params,
            "realised_params": self.realised_params,
            "relative_error": round(self.relative_error, 6),
            "head_params": self.head_params,
            "plan": self.plan.to_dict()["blocks"],
        }


def inject(model, design: Design, budget_fraction: float = 0.005) -> InjectionReport:
    """Freeze `model`'s backbone and add `design`'s modules at `budget_fraction` of its parameters."""
    plan = plan_budget(profile_backbone(model), design, budget_fraction)
    return apply_plan(model, plan)


def apply_plan(model, plan: BudgetPlan) -> InjectionReport:
    """Inject exactly the sizes of `plan` (used by `inject`, and by `load_peft` to rebuild a model)."""
    backbone = backbone_parameters(model)
    backbone_params = sum(p.numel() for p in backbone)
    # Everything outside the backbone is the task head, trained as in any fine-tuning; a language
    # model's own output layer stays frozen (model_parts.py).
    frozen = {id(p) for p in backbone} | output_layer_ids(model)
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) not in frozen)

    sites = backbone_blocks(model)
    used = {}
    for block_plan in plan.blocks:
        for strategy in injection_order(block_plan.strategies):
            strategy.inject(sites[block_plan.block], getattr(block_plan, strategy.size_field))
            used[strategy.name] = strategy
    for strategy in used.values():
        strategy.activate(model, sites)

    realised = sum(p.numel() for p in backbone_parameters(model) if p.requires_grad)  # the modules added too
    head = sum(p.numel() for p in model.parameters() if p.requires_grad) - realised
    if realised != plan.planned_params:
        raise RuntimeError(
            f"injected {realised} trainable parameters but planned {plan.planned_params}: "
            "the budget's cost model and the PEFT modules disagree"
        )
    return InjectionReport(plan=plan, backbone_params=backbone_params, realised_params=realised, head_params=head)
