"""Compute estimates of a search without sampling anything: trials and optimiser steps per stage and
for the final evaluation (the dry run's table), and one trial's steps (`config_steps`: the length
the dispatch orders rows by and the cluster simulator models). Pure: imports the spec and the task
registry only."""

from __future__ import annotations

import math
from dataclasses import dataclass

from peft_search.search.spec import Fidelity, SearchSpec
from peft_search.search.stage.racing import round_end
from peft_search.train.tasks import get_task


def optimiser_steps(max_steps: int | None, epochs: float, train_size: int | None, global_batch: int) -> int | None:
    """As the trial layer trains: exactly `max_steps` when given, else `epochs` passes over
    `train_size` examples at `global_batch` examples per optimiser step (the batch over every worker,
    times gradient accumulation); None when the size is unknown."""
    if max_steps is not None:
        return max_steps
    if train_size is None:
        return None
    return math.ceil(epochs * math.ceil(train_size / global_batch))


def trial_steps(fidelity: Fidelity, spec: SearchSpec, train_size: int | None = None) -> int | None:
    """Optimiser steps of one trial of `spec` at `fidelity`; None when it depends on a dataset size
    nobody gave (`max_train_examples` caps `train_size`)."""
    sizes = [n for n in (fidelity.max_train_examples, train_size) if n is not None]
    hyper = spec.hyperparameters
    return optimiser_steps(fidelity.max_steps, fidelity.epochs, min(sizes) if sizes else None,
                           hyper.batch_size * hyper.gradient_accumulation_steps)


def known_train_size(task: str, data_source: str, max_train_examples: int | None = None) -> int | None:
    """Training examples of `task` as known before reading it: `max_train_examples` when it caps them,
    else the Hub train split's published size for Hub data; None for local or file data."""
    hub = get_task(task).hub_train_examples if data_source == "hub" else None
    sizes = [n for n in (max_train_examples, hub) if n is not None]
    return min(sizes) if sizes else None


def default_train_sizes(spec: SearchSpec) -> dict[str, int]:
    """task -> training examples, for the tasks whose size is known before reading them (Hub GLUE)."""
    sizes = {task: known_train_size(task, spec.data.source) for task in spec.final_tasks}
    return {task: n for task, n in sizes.items() if n is not None}


def config_steps(config) -> int | None:
    """Optimiser steps of the trial a `TrialConfig` trains (a held-back tuning slice is ignored); None
    when they depend on a dataset size not known before reading it."""
    size = known_train_size(config.task, "hub" if config.data_dir is None else "local", config.max_train_examples)
    return optimiser_steps(config.max_steps, config.epochs, size, config.batch_size * config.gradient_accumulation_steps)


@dataclass(frozen=True)
class StageEstimate:
    stage: int
    component: str
    choices: int
    trials: int  # an upper bound: duplicate designs and skipped stages plan fewer
    steps: int | None  # optimiser steps over all trials; None when a task's size is unknown
    fewest_trials: int | None = None  # racing: the trials of its first round (min_blocks); None: fixed N

    @property
    def trials_text(self) -> str:
        return f"{self.trials:,}" if self.fewest_trials is None else f"{self.fewest_trials:,} to {self.trials:,}"


@dataclass(frozen=True)
class SearchEstimate:
    stages: tuple[StageEstimate, ...]
    final_trials: int  # tuning plus training runs of the final evaluation
    final_steps: int | None

    @property
    def trials(self) -> int:
        return sum(s.trials for s in self.stages) + self.final_trials

    @property
    def fewest_trials(self) -> int:
        """With racing, the trials if every race stopped after its first round."""
        return sum(s.trials if s.fewest_trials is None else s.fewest_trials for s in self.stages) + self.final_trials

    @property
    def steps(self) -> int | None:
        parts = [s.steps for s in self.stages] + ([self.final_steps] if self.final_trials else [])
        return None if any(p is None for p in parts) else sum(parts)

    def describe(self, seconds_per_step: float | None = None) -> str:
        """The dry run's table: stages, trials, steps (and hours, given a measured seconds per step)."""

        def steps_text(steps: int | None) -> str:
            if steps is None:
                return "unknown"
            text = f"{steps:,}"
            if seconds_per_step:
                seconds = steps * seconds_per_step
                text += f" (~{seconds / 3600:,.1f} h)" if seconds >= 3600 else f" (~{seconds / 60:.0f} min)"
            return text

        lines = [f"{'stage':<6} {'component':<16} {'choices':>7} {'trials':>12}  steps (at most)"]
        for s in self.stages:
            lines.append(f"{s.stage:<6} {s.component:<16} {s.choices:>7} {s.trials_text:>12}  {steps_text(s.steps)}")
        if self.final_trials:
            lines.append(f"{'final':<6} {'evaluation':<16} {'':>7} {self.final_trials:>12,}  {steps_text(self.final_steps)}")
        total = f"{self.trials:,}" if self.fewest_trials == self.trials else f"{self.fewest_trials:,} to {self.trials:,}"
        lines.append(f"{'total':<6} {'':<16} {'':>7} {total:>12}  {steps_text(self.steps)}")
        if self.fewest_trials != self.trials:
            lines.append("racing: the fewest trials if every race stops after its first round (min_blocks blocks, or 3 "
                         "for a tie when no more are planned), the most if every race runs all designs_per_choice blocks")
        lines.append("trials are upper bounds: duplicate designs and stages of untuned groups plan fewer")
        return "\n".join(lines)


def estimate_search(spec: SearchSpec, train_sizes: dict[str, int] | None = None) -> SearchEstimate:
    """Trials and optimiser steps of the whole search, without sampling anything.

    `train_sizes` (task -> training examples) makes epoch-based fidelities countable; by default the
    Hub's published sizes of its GLUE tasks when the data comes from the Hub.
    """
    train_sizes = default_train_sizes(spec) if train_sizes is None else train_sizes

    def steps_per_design(fidelity: Fidelity) -> int | None:
        per_task = [trial_steps(fidelity, spec, train_sizes.get(task)) for task in spec.tasks]
        return None if any(s is None for s in per_task) else sum(per_task) * len(spec.seeds)

    stages = []
    per_design = steps_per_design(spec.fidelity)
    if spec.joint is not None:  # one stage over every component: `trials` designs, each on every task and seed
        designs = spec.joint.trials
        stages.append(StageEstimate(stage=0, component="joint", choices=sum(len(s.candidates) for s in spec.stages),
                                    trials=designs * len(spec.tasks) * len(spec.seeds),
                                    steps=None if per_design is None else designs * per_design))
    for i, stage in enumerate(spec.stages if spec.joint is None else ()):
        designs = len(stage.candidates) * spec.designs_per_choice
        trials_per_design = len(spec.tasks) * len(spec.seeds)
        first = None if spec.racing is None else round_end(1, spec.racing, spec.designs_per_choice)
        first_round = (None if first is None or first >= spec.designs_per_choice
                       else len(stage.candidates) * first * trials_per_design)
        stages.append(
            StageEstimate(
                stage=i,
                component=stage.component,
                choices=len(stage.candidates),
                trials=designs * trials_per_design,
                steps=None if per_design is None else designs * per_design,
                fewest_trials=first_round,
            )
        )
    final_trials, final_steps = 0, 0
    if spec.final is not None:
        final = spec.final
        contenders = len(final.contenders)
        tuned_on = [final.tuning.task] if final.tuning.task is not None else spec.final_tasks
        final_trials = contenders * (final.tuning.trials * len(tuned_on) + len(final.seeds) * len(spec.final_tasks))
        # Tuning trials train on the training data less the held-back part; close enough to count alike.
        steps = {task: trial_steps(final.fidelity, spec, train_sizes.get(task)) for task in spec.final_tasks}
        final_steps = None if any(s is None for s in steps.values()) else contenders * (
            final.tuning.trials * sum(steps[t] for t in tuned_on) + len(final.seeds) * sum(steps.values()))
    return SearchEstimate(stages=tuple(stages), final_trials=final_trials, final_steps=final_steps)


__all__ = ["SearchEstimate", "StageEstimate", "config_steps", "default_train_sizes", "estimate_search", "known_train_size",
           "optimiser_steps", "trial_steps"]
