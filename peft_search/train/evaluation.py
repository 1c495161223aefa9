"""Evaluation: a model's predictions and metrics on a split, after every epoch of a trial
(`evaluate_model`) and later, for weights a trial saved (`evaluate_saved`).

Both go through the same loader (batching.py), Accelerator (device.py) and metrics, so a saved
trial re-evaluates to exactly the score it reported. Code outside train calls these two functions
and never builds loaders or Accelerators itself. Never imports search or report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from peft_search.train.metrics import compute_metrics, constant_prediction_metrics, is_collapsed


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a model on a split (every worker's examples, gathered)."""

    metrics: dict  # eval_loss and the task's metrics
    predictions: np.ndarray  # class ids, values for a regression, or answers (text-to-text)
    main_metric: str
    # The main metric of a constant prediction on the same examples (metrics.py); None where no
    # constant answer means anything (an open-ended target, ReCoRD's own options).
    baseline_score: float | None

    @property
    def score(self) -> float:
        return self.metrics[self.main_metric]

    @property
    def collapsed(self) -> bool:
        """The same answer for every example, or the constant prediction's score (docs/design.md,
        "Collapsed trials")."""
        if self.baseline_score is None:
            return is_collapsed(self.score, math.nan, self.predictions)
        return is_collapsed(self.score, self.baseline_score, self.predictions)


@torch.no_grad()
def evaluate_model(model, loader, accelerator, task) -> Evaluation:
    """Evaluate `model` (prepared by `accelerator`) on `loader` (batching.evaluation_loader)."""
    model.eval()
    outputs, targets = [], []
    for batch in loader:
        logits = model(**batch).logits.float()
        logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
        outputs.append(logits.cpu())
        targets.append(labels.cpu())
    logits = torch.cat(outputs)
    labels = torch.cat(targets)
    if task.regression:
        predictions = logits.squeeze(-1)
        eval_loss = torch.nn.functional.mse_loss(predictions, labels.float()).item()
        predictions = predictions.numpy()
    else:
        eval_loss = torch.nn.functional.cross_entropy(logits, labels).item()
        predictions = logits.argmax(-1).numpy()
    num_classes = 1 if task.regression else task.num_labels
    metrics = compute_metrics(task.metrics, predictions, labels.numpy(), num_classes)
    baseline = constant_prediction_metrics((task.main_metric,), labels.numpy(), num_classes)[task.main_metric]
    return Evaluation({"eval_loss": eval_loss, **metrics}, predictions, task.main_metric, baseline)


def evaluate_saved(config, saved_dir: str | Path) -> dict:
    """Re-evaluate what `run_trial(config, save_dir=saved_dir)` saved: the PEFT state (`save_peft`),
    or for `full` the whole model (`save_pretrained`), loaded onto a fresh backbone and evaluated on
    the trial's validation examples in the trial's batches. Returns eval_loss, the task's metrics and
    `score` (its main metric): the trial's final figures, exactly on the same hardware."""
    from peft_search.peft import load_peft
    from peft_search.train.batching import evaluation_loader
    from peft_search.train.device import make_accelerator
    from peft_search.train.objectives import get_objective
    from peft_search.train.prepare import keep_trainable_in_float32, load_data, load_model, load_tokenizer
    from peft_search.train.presets import FULL

    objective = get_objective(config.objective)
    tokenizer = load_tokenizer(config.model)
    data = load_data(config, tokenizer)
    source = str(saved_dir) if config.preset == FULL else config.model
    model = load_model(source, data.task, tokenizer=tokenizer, dtype=config.backbone_dtype, objective=config.objective)
    if config.preset != FULL:
        load_peft(model, saved_dir)
        keep_trainable_in_float32(model)
    collate = objective.collate(tokenizer, data.task, model.config.model_type, evaluation=True)
    loader = evaluation_loader(data.validation, tokenizer, data.task, config.batch_size, collate=collate)
    accelerator = make_accelerator(precision=config.precision)
    model, loader = accelerator.prepare(model, loader)
    evaluation = objective.evaluate(model, loader, accelerator, data.task, data.validation, tokenizer)
    return {**evaluation.metrics, "score": evaluation.score}
