"""The one door to Ray and Ray Tune (docs/design.md, "How a trial flows"). `start_ray` starts or
joins Ray (the dashboard line, Tune's own output quieted); `run_experiment` runs trials as one Tune
experiment with the spec's resources, concurrency and retries, actors reused, the interrupt stopper
(docs/design.md, "Interrupted runs") and our progress line. A stage, the joint search, the fidelity
pilot and the final evaluation all go through it, with the one trainable (`trials.trial_trainable`):
either a list of rows (a grid: every row once) or a `Searcher` that hands out rows or rates.
"""

from __future__ import annotations

import time
from typing import Callable

from peft_search.search.interrupt import tune_stopper
from peft_search.search.progress import RecordProgress, quiet_tune_output
from peft_search.search.storage.paths import StoragePath
from peft_search.search.trials import TrialRow, trial_rows, trial_trainable


def start_ray(address: str | None, say: Callable[[str], None] = print) -> None:
    """Join the cluster at `address`, or start Ray here with its dashboard on 127.0.0.1 only (and say
    where); Tune's tables and info logs give way to our progress lines."""
    from peft_search.ray_session import init_ray

    dashboard = init_ray(address)
    if dashboard:
        say(f"Ray dashboard: {dashboard} (local only, 127.0.0.1)")
    quiet_tune_output()


def cluster_slots(resources, max_concurrent: int | None) -> int:
    """Trials the cluster can run at once now (a stage's look-ahead is sized by it): its GPUs over what
    one trial's workers reserve, or its CPUs for a CPU-only trial, at most `max_concurrent`."""
    import ray

    have = ray.cluster_resources()
    if resources.gpus > 0:
        slots = have.get("GPU", 0) / (resources.gpus * resources.workers)
    else:
        slots = have.get("CPU", 0) / (resources.cpus * resources.workers)
    slots = max(1, int(slots + 1e-9))
    return min(slots, max_concurrent) if max_concurrent is not None else slots


def experiment_name(directory: StoragePath, base: str) -> str:
    """`base`, or `base-<time>` when an experiment of that name exists (a resumed stage: Tune's files
    of the interrupted one stay as they were)."""
    return base if not (directory / base).exists() else f"{base}-{int(time.time())}"


def run_experiment(
    directory: StoragePath,
    name: str,
    *,
    resources: dict,
    max_concurrent: int | None,
    retries: int,
    progress: RecordProgress | None = None,
    run_dir: StoragePath | None = None,
    rows: list[TrialRow] | None = None,
    searcher=None,
    num_samples: int | None = None,
    param_space: dict | None = None,
    template: TrialRow | None = None,
    done: Callable[[], bool] | None = None,
    callbacks: list | None = None,
) -> None:
    """One Tune experiment under `directory / name`, every trial one `trial_trainable` on `resources`.

    What it trains: `rows` of `run_dir` (each once, as a grid), or whatever `searcher` suggests, at
    most `num_samples` trials: TrialRows (`{"run_dir", "rows"}`: one, or several trained back to
    back; Ray pickles them, no JSON) or, with
    `template`, a learning rate in `param_space` applied to that one row. `retries`: Tune restarts a trial that raised this many
    times. `done()` true ends the experiment early, stopping what still runs (a decided race).
    `callbacks`: Tune callbacks on the driver besides Tune's own loggers (experiment tracking).
    Returns when every trial ended, `done()` held or a signal stopped the experiment (the caller then
    meets `interrupt.check()`); `progress`, our progress line, runs meanwhile."""
    from ray import tune

    trainable = trial_trainable
    if template is not None:
        trainable = tune.with_parameters(trial_trainable, run_dir=str(run_dir), row=template)
    if rows is not None:
        param_space = {"run_dir": str(run_dir), "row": tune.grid_search(list(rows))}
        num_samples = 1  # a grid runs each of its rows once
    quiet_tune_output()
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=num_samples or 1,
            max_concurrent_trials=max_concurrent,
            # One actor runs trial after trial: torch and transformers are imported once, not per trial.
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(directory),
            failure_config=tune.FailureConfig(max_failures=retries),
            stop=tune_stopper(done),  # SIGINT / SIGTERM end the experiment; nothing is decided from it
            callbacks=callbacks,
            verbose=0,
        ),
    )
    if progress is not None:
        progress.start()
    try:
        tuner.fit()
    finally:
        if progress is not None:
            progress.stop()


def _trial_name(trial) -> str:
    """The row's trial id where the trial has one row (the dashboard and Tune's files name it so); a
    packed trial's first row and how many follow it, with Tune's own id (a row can go out again)."""
    rows = trial_rows(trial.config)
    if not rows or not all(isinstance(row, TrialRow) for row in rows):  # e.g. a grid's row not resolved yet
        return f"{trial.trainable_name}_{trial.trial_id}"
    return rows[0].trial_id if len(rows) == 1 else f"{rows[0].trial_id}+{len(rows) - 1}_{trial.trial_id}"


__all__ = ["cluster_slots", "experiment_name", "run_experiment", "start_ray"]
