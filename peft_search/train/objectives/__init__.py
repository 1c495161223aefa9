"""The training objectives (docs/design.md, "Objectives"), one module each, as the strategies are:
what model a trial loads (a task head, or the backbone's own language-modelling head), how its
examples become token ids and batches, and how it is scored. Data, the training loop, evaluation and
export ask the trial's objective; nothing else branches on its name.

- `classification`: a task head on the backbone (classification.py);
- `text_to_text`: source text in, target text out, through the backbone's own LM head (text_to_text.py).
"""

from __future__ import annotations

from peft_search.errors import InputError
from peft_search.train.objectives.classification import CLASSIFICATION_OBJECTIVE
from peft_search.train.objectives.text_to_text import TEXT_TO_TEXT_OBJECTIVE
from peft_search.train.tasks import OBJECTIVE_NAMES

OBJECTIVES = {objective.name: objective for objective in (CLASSIFICATION_OBJECTIVE, TEXT_TO_TEXT_OBJECTIVE)}
if tuple(OBJECTIVES) != OBJECTIVE_NAMES:
    raise ImportError(f"objective registry {tuple(OBJECTIVES)} differs from the tasks' vocabulary")


def get_objective(name: str):
    if name not in OBJECTIVES:
        raise InputError("objective", f"must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


__all__ = ["OBJECTIVES", "get_objective"]
