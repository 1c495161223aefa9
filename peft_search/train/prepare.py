"""What a trial needs before its first step: tokenizer, tokenised data, the backbone with its task
head, the design checked against the budget (fit.py) and injected.

`check_inputs` is the same without weights: every input check a trial makes, cheap enough to run on
the driver before workers start. Raises InputError for bad input; never imports ray, search or report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from peft_search.errors import InputError
from peft_search.peft import apply_plan, load_backbone, profile_backbone, resolve_model
from peft_search.peft.backbones import LM_HEAD, PADS_LEFT, CheckpointHead, load_config
from peft_search.train.data import TaskData, load_task_data
from peft_search.train.fit import Fit, plan_fit
from peft_search.train.objectives import get_objective
from peft_search.train.tasks import CLASSIFICATION, Task, get_task


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    source = resolve_model(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise InputError("model", f"cannot load a tokenizer from {model!r}: {str(error).splitlines()[0][:200]}") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Decoder-only tokenizers (gpt2, llama) have no padding token: pad with end-of-sequence, as
        # transformers' own examples do; the model is told the same id (load_model).
        tokenizer.pad_token = tokenizer.eos_token
    if load_config(model).model_type in PADS_LEFT:
        tokenizer.padding_side = "left"  # as xlnet's own tokenizer does, whichever tokenizer came with it
    return tokenizer


def load_data(config, tokenizer) -> TaskData:
    """The trial's tokenised splits (from the cache when it has them), encoded as its objective does."""
    return load_task_data(
        get_task(config.task),
        tokenizer,
        data_dir=config.data_dir,
        max_length=config.max_length,
        max_train_examples=config.max_train_examples,
        max_eval_examples=config.max_eval_examples,
        seed=config.seed,
        cache_dir=config.cache_dir,
        holdout_fraction=config.holdout_fraction,
        encoding=get_objective(config.objective).encoding(load_config(config.model).model_type),
    )


def problem_type(task: Task) -> str:
    return "regression" if task.regression else "single_label_classification"


def load_model(model: str, task: Task, meta: bool = False, tokenizer=None, dtype: str = "float32",
               objective: str = CLASSIFICATION):
    """The backbone as `objective` trains it (a head for `task`, or its own language-modelling head),
    its weights in `dtype`; a decoder without a padding token is given `tokenizer`'s."""
    return get_objective(objective).load_model(model, task, meta=meta, tokenizer=tokenizer, dtype=dtype)


def load_classifier(model: str, task: Task, meta: bool = False, tokenizer=None, dtype: str = "float32"):
    """The backbone with a head for `task`, its weights in `dtype`, without transformers' per-trial
    progress bar; a decoder without a padding token is given `tokenizer`'s (the id the batches are
    padded with)."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return load_backbone(model, num_labels=task.num_labels, problem_type=problem_type(task), meta=meta,
                             pad_token_id=getattr(tokenizer, "pad_token_id", None), dtype=dtype)
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def check_fit(config, model) -> Fit:
    """The trial's design (or preset) planned on `model`; InputError when it does not fit (fit.py)."""
    return plan_fit(profile_backbone(model), config.preset or config.design_obj, config.budget_fraction,
                    backbone=config.model)


def check_inputs(config) -> TaskData:
    """Every input check of a trial without loading weights: tokenizer, data (tokenised into the
    cache on the way) and the design's fit on a weightless model. Raises InputError."""
    get_objective(config.objective).check(get_task(config.task), load_config(config.model).model_type)
    data = load_data(config, load_tokenizer(config.model))
    check_fit(config, load_model(config.model, data.task, meta=True, objective=config.objective))
    return data


@dataclass
class Prepared:
    tokenizer: object
    data: TaskData
    model: torch.nn.Module
    report: object  # InjectionReport, None for full fine-tuning
    counts: dict


def keep_trainable_in_float32(model) -> None:
    """With a half-precision backbone: every trainable tensor (PEFT modules, BitFit's biases, the head)
    and every normalisation layer in float32, the usual recipe (optimiser state and updates in full
    precision; LayerNorm's weight and bias of one dtype). Autocast runs the rest in half precision."""
    for module in model.modules():
        if type(module).__name__.endswith(("LayerNorm", "RMSNorm")):
            module.float()
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def enable_gradient_checkpointing(model) -> None:
    """Recompute each block's activations in the backward pass, through the backbone's own support.
    Non-reentrant checkpointing: gradients reach the PEFT modules inside a frozen backbone (the
    reentrant kind needs an input that requires grad), and dropout replays the same masks, so the
    losses equal those without it."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise InputError("gradient_checkpointing", f"{model.config.model_type} backbones do not support it in transformers")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})  # transformers 5's name


def prepare(config, log=None) -> Prepared:
    """Tokenizer, data, seeded backbone with its design injected. Raises InputError for bad input."""
    from accelerate.utils import set_seed

    say = log or (lambda line: None)
    get_objective(config.objective).check(get_task(config.task), load_config(config.model).model_type)
    tokenizer = load_tokenizer(config.model)
    started = time.perf_counter()
    data = load_data(config, tokenizer)
    source = "cache" if all(data.cache_hits.values()) else "tokenised"
    say(f"data: {config.task}, {len(data.train):,} train / {len(data.validation):,} validation examples "
        f"({source}, {time.perf_counter() - started:.1f}s)")
    # Seed before building the model: the task head and the PEFT modules are initialised at random.
    set_seed(config.seed)
    model = load_model(config.model, data.task, tokenizer=tokenizer, dtype=config.backbone_dtype, objective=config.objective)
    if model.checkpoint_head["head"] in ("kept", "replaced"):  # what became of the checkpoint's own head (backbones.py)
        say(CheckpointHead(model.checkpoint_head["checkpoint_labels"]).message(data.task.num_labels, data.task.name))
    fit = check_fit(config, model)
    # Which head it trains: new, the checkpoint's own (kept), or a new one replacing it (backbones.py).
    counts = {**fit.counts(), "head": model.checkpoint_head["head"], "checkpoint_head_labels": model.checkpoint_head["checkpoint_labels"]}
    report = None
    if fit.plan is None:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    else:
        report = apply_plan(model, fit.plan)
        counts.update(realised_params=report.realised_params, head_params=report.head_params)
    if config.backbone_dtype != "float32":
        keep_trainable_in_float32(model)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    head = (f"{counts['head_params']:,} head" if model.checkpoint_head["head"] != LM_HEAD
            else "its own language-modelling head, frozen")
    say(f"model: {config.model}, {config.preset or config.design_id}: {counts['realised_params']:,} trainable "
        f"backbone parameters (budget {counts['target_params']:,}) + {head}")
    return Prepared(tokenizer, data, model, report, counts)
