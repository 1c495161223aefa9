"""The per-worker training loop on Accelerate, and what it needs: tokenizer, data, backbone, injection.

The same `train_worker` runs in this process (one worker) and in every Ray Train worker (several;
Accelerate then picks up Ray's process group and wraps the model in DDP). AdamW, linear warm-up and
decay, gradient clipping at norm 1, gradient accumulation, bf16 autocast on GPU and fp32 on CPU,
dynamic padding, evaluation after every epoch. Batches are split across workers (`split_batches`),
so a step sees the same global batch whatever the number of workers.

Runtime failures end the trial with a status (`diverged` on a non-finite loss, `oom`, `failed`);
only `InputError` (bad input) is raised. Seeding covers the head's and the modules' initialisation,
dropout and the shuffling order: the same row gives the same metrics on the same machine.
"""

from __future__ import annotations

import math
import resource
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from peft_search.errors import InputError
from peft_search.peft import apply_plan, load_backbone, plan_budget, profile_backbone, resolve_model, save_peft
from peft_search.peft.budget import FEASIBLE_RELATIVE_ERROR
from peft_search.peft.inject import trainable_parameters_by_strategy
from peft_search.train.data import TaskData, TokenisedSplit, load_task_data
from peft_search.train.metrics import compute_metrics
from peft_search.train.presets import STRATEGY_LEARNING_RATE_SCALE
from peft_search.train.tasks import get_task

MAX_GRAD_NORM = 1.0
LOG_EVERY_S = 10.0
FIXED_SIZE_PRESETS = ("bitfit",)  # presets allowed to miss the budget (BitFit's size is fixed)


class CallbackError(Exception):
    """An exception raised by the caller's `emit` callback (e.g. Tune stopping the trial): it belongs
    to the caller, so it passes through instead of becoming a `failed` status."""

    def __init__(self, error: BaseException):
        super().__init__(repr(error))
        self.error = error


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    source = resolve_model(model)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise InputError("model", f"cannot load a tokenizer from {model!r}: {str(error).splitlines()[0][:200]}") from None


def load_data(config, tokenizer) -> TaskData:
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
    )


def check_fit(config, model) -> dict:
    """Plan the design on `model` (a meta-device model will do): InputError when it does not fit the
    backbone or misses the budget by more than 2%; returns the plan (None for full) and counts."""
    profile = profile_backbone(model)
    if config.preset == "full":
        return {"plan": None, "realised_params": profile.backbone_params, "target_params": profile.backbone_params,
                "head_params": profile.head_params}
    try:
        plan = plan_budget(profile, config.design_obj, config.budget_fraction)
    except InputError as error:
        raise error.under("design") from None
    if not plan.feasible and config.preset not in FIXED_SIZE_PRESETS:
        raise InputError(
            "design",
            f"realises {plan.planned_params:,} trainable parameters for a budget of {plan.target_params:,} "
            f"({plan.relative_error:+.1%}) on {config.model}; a design must land within {FEASIBLE_RELATIVE_ERROR:.0%}",
        )
    return {"plan": plan, "realised_params": plan.planned_params, "target_params": plan.target_params,
            "head_params": profile.head_params}


def problem_type(task) -> str:
    return "regression" if task.regression else "single_label_classification"


def check_inputs(config) -> TaskData:
    """Every input check of a trial without loading weights: tokenizer, data (tokenised into the
    cache on the way) and the design's fit on a weightless model. Raises InputError."""
    data = load_data(config, load_tokenizer(config.model))
    meta_model = load_backbone(config.model, num_labels=data.task.num_labels, problem_type=problem_type(data.task), meta=True)
    check_fit(config, meta_model)
    return data


def _quiet_load(model: str, task):
    """The backbone with real weights, without transformers' per-trial progress bar."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return load_backbone(model, num_labels=task.num_labels, problem_type=problem_type(task))
    finally:
        if was_enabled:
            logging.enable_progress_bar()


@dataclass
class Prepared:
    tokenizer: object
    data: TaskData
    model: torch.nn.Module
    report: object  # InjectionReport, None for full fine-tuning
    counts: dict


def prepare(config, log=None) -> Prepared:
    """Tokenizer, data, seeded backbone with its design injected. Raises InputError for bad input."""
    from accelerate.utils import set_seed

    say = log or (lambda line: None)
    tokenizer = load_tokenizer(config.model)
    started = time.perf_counter()
    data = load_data(config, tokenizer)
    source = "cache" if all(data.cache_hits.values()) else "tokenised"
    say(f"data: {config.task}, {len(data.train):,} train / {len(data.validation):,} validation examples "
        f"({source}, {time.perf_counter() - started:.1f}s)")
    # Seed before building the model: the task head and the PEFT modules are initialised at random.
    set_seed(config.seed)
    model = _quiet_load(config.model, data.task)
    fit = check_fit(config, model)
    report = None
    if fit["plan"] is None:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    else:
        report = apply_plan(model, fit["plan"])
        fit = {**fit, "realised_params": report.realised_params, "head_params": report.head_params}
    counts = {key: fit[key] for key in ("realised_params", "target_params", "head_params")}
    say(f"model: {config.model}, {config.preset or config.design_id}: {counts['realised_params']:,} trainable "
        f"backbone parameters (budget {counts['target_params']:,}) + {counts['head_params']:,} head")
    return Prepared(tokenizer, data, model, report, counts)


# ---- batching ----------------------------------------------------------------------------------


class SplitDataset(torch.utils.data.Dataset):
    def __init__(self, split: TokenisedSplit):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.split.example(int(i))


class DynamicPadding:
    """Pads a batch to its own longest example (not to max_length)."""

    def __init__(self, pad_id: int, regression: bool):
        self.pad_id = pad_id
        self.regression = regression

    def __call__(self, examples):
        length = max(len(e["input_ids"]) for e in examples)
        n = len(examples)
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        with_types = "token_type_ids" in examples[0]
        token_type_ids = torch.zeros((n, length), dtype=torch.long) if with_types else None
        for i, example in enumerate(examples):
            k = len(example["input_ids"])
            input_ids[i, :k] = torch.from_numpy(example["input_ids"].astype(np.int64))
            attention_mask[i, :k] = 1
            if with_types:
                token_type_ids[i, :k] = torch.from_numpy(example["token_type_ids"].astype(np.int64))
        labels = torch.tensor([e["labels"] for e in examples], dtype=torch.float32 if self.regression else torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if with_types:
            batch["token_type_ids"] = token_type_ids
        return batch


class LengthOrderedSampler(torch.utils.data.Sampler):
    """Evaluation order, longest first: batches of similar length pad little. Order does not change
    the metrics, which are computed over the whole split."""

    def __init__(self, split: TokenisedSplit):
        self.order = np.argsort(-split.lengths(), kind="stable").tolist()

    def __iter__(self):
        return iter(self.order)

    def __len__(self):
        return len(self.order)


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parameter_groups(model, weight_decay: float, base_lr: float, injected: bool):
    """AdamW groups: no decay on biases and normalisation weights (the usual BERT recipe); on an
    injected model each strategy's parameters at base_lr x its STRATEGY_LEARNING_RATE_SCALE."""
    names = {id(p): n for n, p in model.named_parameters()}

    def split(parameters, lr):
        decay = [p for p in parameters if not (p.ndim < 2 or "norm" in names[id(p)].lower())]
        no_decay = [p for p in parameters if p.ndim < 2 or "norm" in names[id(p)].lower()]
        return [
            {"params": group, "weight_decay": wd, "lr": lr}
            for group, wd in ((decay, weight_decay), (no_decay, 0.0))
            if group
        ]

    if not injected:  # full fine-tuning: one rate for everything
        return split([p for p in model.parameters() if p.requires_grad], base_lr)
    groups = []
    for strategy, parameters in trainable_parameters_by_strategy(model).items():
        groups += split(parameters, base_lr * STRATEGY_LEARNING_RATE_SCALE[strategy])
    return groups


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: kilobytes


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


# ---- the loop ----------------------------------------------------------------------------------


def train_worker(config, prepared: Prepared, emit: Callable[[dict], None] | None = None,
                 log: Callable[[str], None] | None = None, save_dir: str | None = None) -> dict:
    """Train `prepared.model` as `config` says; returns an outcome dict (status, metrics, epochs,
    throughput, peak memory, error). Never raises for runtime failures."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    use_gpu = torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision="bf16" if use_gpu else "no",
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        cpu=not use_gpu,
    )
    main = accelerator.is_main_process
    say = (lambda line: log(line)) if (log is not None and main) else (lambda line: None)
    outcome = {"status": "failed", "metrics": {}, "epochs": [], **prepared.counts}
    if use_gpu:
        torch.cuda.reset_peak_memory_stats()
    try:
        outcome.update(_train(config, prepared, accelerator, emit, say, save_dir))
    except InputError:
        raise
    except CallbackError as wrapped:
        raise wrapped.error from None
    except Exception as error:  # noqa: BLE001 - a trial's failure must not take its caller down
        if is_oom(error):
            outcome.update(status="oom", error=f"out of memory: {str(error).splitlines()[0][:300]}")
        else:
            outcome.update(status="failed", error=f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=6)}")
        say(f"trial {outcome['status']}: {outcome['error'].splitlines()[0]}")
    finally:
        outcome["peak_memory_mb"] = peak_memory_mb()
        accelerator.free_memory()
        if use_gpu:
            torch.cuda.empty_cache()
    return outcome


def _train(config, prepared: Prepared, accelerator, emit, say, save_dir) -> dict:
    task = prepared.data.task
    model = prepared.model
    pad_id = prepared.tokenizer.pad_token_id if prepared.tokenizer.pad_token_id is not None else 0
    collate = DynamicPadding(pad_id, task.regression)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = torch.utils.data.DataLoader(
        SplitDataset(prepared.data.train), batch_size=config.batch_size, shuffle=True, generator=generator, collate_fn=collate
    )
    eval_loader = torch.utils.data.DataLoader(
        SplitDataset(prepared.data.validation), batch_size=2 * config.batch_size,
        sampler=LengthOrderedSampler(prepared.data.validation), collate_fn=collate,
    )
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay, config.lr, injected=prepared.report is not None), lr=config.lr
    )
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    trainable = [p for p in model.parameters() if p.requires_grad]

    batches_per_epoch = len(train_loader)  # global batches (split_batches): the same for any worker count
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps if config.max_steps is not None else max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    scheduler = linear_schedule(optimizer, warmup_steps, total_steps)
    say(f"train: {total_steps} steps ({steps_per_epoch}/epoch), batch {config.batch_size} x "
        f"{config.gradient_accumulation_steps} accumulation on {accelerator.num_processes} worker(s) "
        f"({accelerator.device}), lr {config.lr:g}, warm-up {warmup_steps}")

    started = time.perf_counter()
    train_time, samples, step, epoch = 0.0, 0, 0, 0
    epochs: list[dict] = []
    status, error = "finished", None
    last_log = time.perf_counter()
    while step < total_steps and status == "finished":
        model.train()
        losses = []
        epoch_start = time.perf_counter()
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                # Every worker sees the same mean loss, so every worker stops at the same step.
                loss_value = accelerator.gather(loss.detach().float().reshape(1)).mean().item()
                if not math.isfinite(loss_value):
                    status, error = "diverged", f"loss became {loss_value} at step {step + 1}"
                    break
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, MAX_GRAD_NORM)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(loss_value)
            samples += batch["labels"].shape[0] * accelerator.num_processes
            if accelerator.sync_gradients:
                scheduler.step()
                step += 1
                if time.perf_counter() - last_log >= LOG_EVERY_S or step == total_steps:
                    last_log = time.perf_counter()
                    rate = samples / (train_time + last_log - epoch_start)
                    say(f"  step {step}/{total_steps}  loss {np.mean(losses[-20:]):.4f}  "
                        f"lr {scheduler.get_last_lr()[0]:.2e}  {rate:.1f} samples/s")
                if step >= total_steps:
                    break
        train_time += time.perf_counter() - epoch_start
        if status != "finished":
            say(f"trial diverged: {error}")
            break
        epoch += 1
        record = {
            "epoch": round(step / steps_per_epoch, 4),
            "step": step,
            "train_loss": float(np.mean(losses)) if losses else None,
            **evaluate(model, eval_loader, accelerator, task),
        }
        record["score"] = record[task.main_metric]
        record["elapsed_s"] = round(time.perf_counter() - started, 3)
        epochs.append(record)
        say("  eval  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        if emit is not None:
            try:
                emit(dict(record))
            except BaseException as callback_error:
                raise CallbackError(callback_error) from callback_error

    final = epochs[-1] if epochs else {}
    metrics = {k: final[k] for k in (*task.metrics, "eval_loss", "train_loss") if k in final}
    if status == "finished" and save_dir is not None and accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if prepared.report is None:
            unwrapped.save_pretrained(save_dir)
        else:
            save_peft(unwrapped, prepared.report, save_dir)
        say(f"saved to {save_dir}")
    accelerator.wait_for_everyone()
    return {
        "status": status,
        "error": error,
        "metrics": metrics,
        "epochs": epochs,
        "train_samples_per_s": round(samples / train_time, 3) if train_time > 0 and samples else None,
    }


@torch.no_grad()
def evaluate(model, eval_loader, accelerator, task) -> dict:
    model.eval()
    outputs, targets = [], []
    for batch in eval_loader:
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
    metrics = compute_metrics(task.metrics, predictions, labels.numpy(), 1 if task.regression else task.num_labels)
    return {"eval_loss": eval_loss, **metrics}


def run_local(config, on_epoch=None, save_dir=None, log=None) -> dict:
    """One worker, in this process."""
    try:
        prepared = prepare(config, log)
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - e.g. out of memory while loading the backbone
        status = "oom" if is_oom(error) else "failed"
        return {"status": status, "error": f"{type(error).__name__}: {error}", "peak_memory_mb": peak_memory_mb()}
    return train_worker(config, prepared, emit=on_epoch, log=log, save_dir=save_dir)
