"""Staged search: job spec, trial planning, decision statistics (and, on top, the controller).

`spec`, `plan` and `decide` are pure and fast: they import space, pydantic, pyarrow and numpy, never
ray (the budget planner, and so torch, only when a stage is actually planned).
"""

from peft_search.search.decide import ChoiceStats, Decision, TrialScore, decide, decide_trials
from peft_search.search.plan import PlanRow, StagePlan, estimate_search, plan_path, plan_stage, read_plan, write_plan
from peft_search.search.spec import SearchSpec, SpecError, load_spec, spec_diff, spec_schema

__all__ = [
    "ChoiceStats",
    "Decision",
    "PlanRow",
    "SearchSpec",
    "SpecError",
    "StagePlan",
    "TrialScore",
    "decide",
    "decide_trials",
    "estimate_search",
    "load_spec",
    "plan_path",
    "plan_stage",
    "read_plan",
    "spec_diff",
    "spec_schema",
    "write_plan",
]
