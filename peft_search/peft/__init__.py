"""PEFT modules, backbone registry, budget realisation, injection, save/load.

Imports space, torch and transformers; never train, search or ray.
"""

from peft_search.peft.backbones import BACKBONES, backbone_blocks, load_backbone, resolve_model
from peft_search.peft.budget import BackboneProfile, BudgetPlan, describe_shares, plan_budget, profile_backbone, strategy_params
from peft_search.peft.inject import InjectionReport, apply_plan, inject
from peft_search.peft.storage import load_peft, save_peft

__all__ = [
    "BACKBONES",
    "BackboneProfile",
    "BudgetPlan",
    "InjectionReport",
    "apply_plan",
    "backbone_blocks",
    "describe_shares",
    "inject",
    "load_backbone",
    "load_peft",
    "plan_budget",
    "profile_backbone",
    "resolve_model",
    "save_peft",
    "strategy_params",
]
