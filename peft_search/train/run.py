"""Run a trial: `run_trial` trains a `TrialConfig` on one worker (in this process) or, with
`workers > 1`, on a Ray Train `TorchTrainer`, and returns a `TrialResult`. Bad input raises
`InputError`; a failure while training (divergence, out of memory, anything else) is returned as a
status, never raised, so that a search survives its trials."""

from __future__ import annotations

import time
from typing import Callable

from peft_search.train.tasks import get_task
from peft_search.train.trial import TrialConfig, TrialResult


def run_trial(
    config: TrialConfig,
    on_epoch: Callable[[dict], None] | None = None,
    save_dir: str | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> TrialResult:
    """Train and evaluate one plan row.

    on_epoch: called in the calling thread after each evaluation (every epoch, and at the end of a
        run that stops mid-epoch) with a flat dict: epoch, step, train_loss, eval_loss, the task's
        metrics, score, elapsed_s, evaluation_s. With workers > 1 it is still called live, in this thread. Inside
        a Ray Tune trial with workers > 1 and no on_epoch, the epochs reach Tune through Ray's
        TuneReportCallback instead; give on_epoch=ray.tune.report or the like, not both.
    save_dir: where to save the trained PEFT state (`save_peft`; full fine-tuning: `save_pretrained`)
        when the trial finishes.
    log: progress lines (loading, steps, evaluations); None is silent.
    """
    from peft_search.train.loop import run_local

    started = time.perf_counter()
    if config.workers > 1:
        from peft_search.train.distributed import run_on_ray

        outcome = run_on_ray(config, on_epoch=on_epoch, save_dir=save_dir, log=log)
    else:
        outcome = run_local(config, on_epoch=on_epoch, save_dir=save_dir, log=log)
    task = get_task(config.task)
    status = outcome["status"]
    metrics = outcome.get("metrics") or {}
    score = metrics.get(task.main_metric) if status == "finished" else None
    return TrialResult(
        status=status,
        score=score,
        metrics=metrics,
        epochs=outcome.get("epochs") or [],
        realised_params=outcome.get("realised_params"),
        target_params=outcome.get("target_params"),
        head_params=outcome.get("head_params"),
        head=outcome.get("head"),
        checkpoint_head_labels=outcome.get("checkpoint_head_labels"),
        wall_time_s=round(time.perf_counter() - started, 3),
        train_samples_per_s=outcome.get("train_samples_per_s"),
        peak_memory_mb=outcome.get("peak_memory_mb"),
        error=outcome.get("error"),
        task=config.task,
        design_id=config.design_id,
        baseline_score=outcome.get("baseline_score"),
        collapsed=status == "finished" and bool(outcome.get("collapsed")),
        learning_rates=outcome.get("learning_rates"),
    )
