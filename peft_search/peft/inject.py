"""Injection: freeze the backbone and add each tuned block's PEFT modules, sized by its budget plan.

The realised trainable-parameter count is measured on the model after injection, and must equal
the plan's count exactly: a mismatch means the plan's cost model and the modules disagree (a bug).
"""

from __future__ import annotations

from dataclasses import dataclass

from peft_search.peft.attention import use_prefix_attention
from peft_search.peft.backbones import backbone_blocks
from peft_search.peft.budget import BudgetPlan, plan_budget, profile_backbone
from peft_search.peft.modules import AdaptedLinear, LoraLinear, Prefix, add_missing_biases
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
    base_model = model.base_model
    backbone_params = sum(p.numel() for p in base_model.parameters())
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    # Everything outside the backbone is the task head, trained as in any fine-tuning.
    backbone_ids = {id(p) for p in base_model.parameters()}
    for parameter in model.parameters():
        if id(parameter) not in backbone_ids:
            parameter.requires_grad_(True)

    sites = backbone_blocks(model)
    uses_prefix = False
    for block_plan in plan.blocks:
        site = sites[block_plan.block]
        weight = site.ffn_output_layer().weight
        if "bitfit" in block_plan.strategies:
            add_missing_biases(site.module)
            for name, parameter in site.module.named_parameters():
                if name.split(".")[-1] == "bias":
                    parameter.requires_grad_(True)
        if block_plan.adapter_size:
            output_layer = getattr(site.ffn_parent, site.ffn_output)
            setattr(site.ffn_parent, site.ffn_output, AdaptedLinear(output_layer, block_plan.adapter_size))
        for attention in site.attentions:
            if block_plan.lora_rank:
                for projection in attention.lora_projections:
                    setattr(attention.module, projection, LoraLinear(attention.projection(projection), block_plan.lora_rank))
            if block_plan.prefix_length:
                attention.module.peft_prefix = Prefix(
                    attention.num_heads,
                    attention.key_dim // attention.num_heads,
                    block_plan.prefix_length,
                    device=weight.device,
                    dtype=weight.dtype,
                )
                uses_prefix = True
    if uses_prefix:
        use_prefix_attention(model)

    realised = sum(p.numel() for p in base_model.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.parameters() if p.requires_grad) - realised
    if realised != plan.planned_params:
        raise RuntimeError(
            f"injected {realised} trainable parameters but planned {plan.planned_params}: "
            "the budget's cost model and the PEFT modules disagree"
        )
    return InjectionReport(plan=plan, backbone_params=backbone_params, realised_params=realised, head_params=head)


def trainable_parameters_by_strategy(model) -> dict[str, list]:
    """The trainable parameters of an injected model, by what they belong to: `adapter`, `prefix`,
    `lora` (found by module type), `bitfit` (the other trainable backbone tensors: biases) and
    `head` (everything outside the backbone). The trainer uses it to give each its learning rate."""
    groups: dict[str, list] = {"adapter": [], "prefix": [], "lora": [], "bitfit": [], "head": []}
    claimed: set[int] = set()
    for module in model.modules():
        if isinstance(module, AdaptedLinear):
            strategy, parameters = "adapter", module.adapter.parameters()
        elif isinstance(module, LoraLinear):
            strategy, parameters = "lora", [module.lora_A.weight, module.lora_B.weight]
        elif isinstance(module, Prefix):
            strategy, parameters = "prefix", module.parameters()
        else:
            continue
        for parameter in parameters:
            if parameter.requires_grad and id(parameter) not in claimed:
                groups[strategy].append(parameter)
                claimed.add(id(parameter))
    backbone = {id(p) for p in model.base_model.parameters()}
    for parameter in model.parameters():
        if parameter.requires_grad and id(parameter) not in claimed:
            groups["bitfit" if id(parameter) in backbone else "head"].append(parameter)
            claimed.add(id(parameter))
    return groups
