"""Trials: tasks and metrics, data loading with a tokenisation cache, the fit rule, the Accelerate
training loop, evaluation, multi-worker trials on Ray Train, and the presets.

Where things are: tasks.py (the task registry), sources.py (finding and reading a task's data with
datasets), data.py (labels, subsample, tokens and their cache), presets.py (named baselines and
learning rates), fit.py (whether a design fits a backbone at a budget), prepare.py (tokenizer, data
and the injected model of a trial), batching.py, device.py, loop.py (the training loop),
evaluation.py (`evaluate_model`, `evaluate_saved`), metrics.py, distributed.py (Ray Train),
trial.py (`TrialConfig`, `TrialResult`: the interface the search calls), run.py (`run_trial`:
one worker here or several on Ray Train).

Imports peft, space, datasets, accelerate, torch and transformers; ray only lazily, inside
`distributed.py`. Never imports search or report. Importing this package loads none of the heavy
ones: what it exports below imports them when called.
"""

from peft_search.train.fit import FIXED_SIZE_PRESETS, Fit, plan_fit
from peft_search.train.presets import PRESETS, default_learning_rate, preset_design
from peft_search.train.tasks import TASKS, Task, get_task
from peft_search.train.run import run_trial
from peft_search.train.trial import TrialConfig, TrialResult


_LAZY = {"evaluate_saved": "peft_search.train.evaluation"}  # imports torch: loaded on first use


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FIXED_SIZE_PRESETS",
    "PRESETS",
    "TASKS",
    "Fit",
    "Task",
    "TrialConfig",
    "TrialResult",
    "default_learning_rate",
    "evaluate_saved",
    "get_task",
    "plan_fit",
    "preset_design",
    "run_trial",
]
