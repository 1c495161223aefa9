"""Trials: tasks and metrics, data loading with a tokenisation cache, the Accelerate training loop,
multi-worker trials on Ray Train, and the presets.

Imports peft, space, datasets, accelerate, torch and transformers; ray only lazily, inside
`distributed.py`. Never imports search or report.
"""

from peft_search.train.presets import PRESETS, default_learning_rate, preset_design
from peft_search.train.tasks import TASKS, Task, get_task
from peft_search.train.trial import TrialConfig, TrialResult, run_trial

__all__ = [
    "PRESETS",
    "TASKS",
    "Task",
    "TrialConfig",
    "TrialResult",
    "default_learning_rate",
    "get_task",
    "preset_design",
    "run_trial",
]
