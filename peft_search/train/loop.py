"""The per-worker training loop on Accelerate: optimiser groups, schedule, steps, and an evaluation
after every epoch.

The same `train_worker` runs in this process (one worker, `run_local`) and in every Ray Train worker
(several, distributed.py; Accelerate then picks up Ray's process group and wraps the model in DDP).
AdamW, linear warm-up and decay, gradient clipping at norm 1, gradient accumulation, bf16 autocast on
GPU and fp32 on CPU (device.py), dynamic padding (batching.py). What a trial needs before its first
step is prepare.py's; evaluation is evaluation.py's.

Runtime failures end the trial with a status (`diverged` on a non-finite loss, `oom`, `failed`);
only `InputError` (bad input) is raised. Seeding covers the head's and the modules' initialisation,
dropout and the shuffling order: the same row gives the same metrics on the same machine.
"""

from __future__ import annotations

import math
import time
import traceback
from typing import Callable

import numpy as np
import torch

from peft_search.errors import InputError
from peft_search.peft import save_peft
from peft_search.peft.strategies import learning_rate_scale, trainable_parameters_by_strategy
from peft_search.train.batching import evaluation_loader, training_loader
from peft_search.train.device import is_oom, make_accelerator, peak_memory_mb
from peft_search.train.objectives import get_objective
from peft_search.train.prepare import Prepared, prepare

MAX_GRAD_NORM = 1.0
LOG_EVERY_S = 10.0


class CallbackError(Exception):
    """An exception raised by the caller's `emit` callback (e.g. Tune stopping the trial): it belongs
    to the caller, so it passes through instead of becoming a `failed` status."""

    def __init__(self, error: BaseException):
        super().__init__(repr(error))
        self.error = error


# ---- optimiser and schedule -------------------------------------------------------------------


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parameter_groups(model, weight_decay: float, base_learning_rate: float, injected: bool):
    """AdamW groups: no decay on biases and normalisation weights (the usual BERT recipe); on an
    injected model each strategy's parameters at base_learning_rate x its `learning_rate_scale` (the head's: 1). Each
    group is named (`name`: the strategy, `head`, or `all` for full fine-tuning)."""
    names = {id(p): n for n, p in model.named_parameters()}

    def split(parameters, lr, name):
        decay = [p for p in parameters if not (p.ndim < 2 or "norm" in names[id(p)].lower())]
        no_decay = [p for p in parameters if p.ndim < 2 or "norm" in names[id(p)].lower()]
        return [
            {"params": group, "weight_decay": wd, "lr": lr, "name": name}
            for group, wd in ((decay, weight_decay), (no_decay, 0.0))
            if group
        ]

    if not injected:  # full fine-tuning: one rate for everything
        return split([p for p in model.parameters() if p.requires_grad], base_learning_rate, "all")
    groups = []
    for strategy, parameters in trainable_parameters_by_strategy(model).items():
        groups += split(parameters, base_learning_rate * learning_rate_scale(strategy), strategy)
    return groups


def peak_learning_rates(groups: list[dict]) -> dict[str, float]:
    """What each named group trained at (the peak of its schedule): {"lora": 5e-3, "head": 5e-3, ...}."""
    return {group["name"]: group["lr"] for group in groups}


# ---- the loop ----------------------------------------------------------------------------------


def train_worker(config, prepared: Prepared, emit: Callable[[dict], None] | None = None,
                 log: Callable[[str], None] | None = None, save_dir: str | None = None) -> dict:
    """Train `prepared.model` as `config` says; returns an outcome dict (status, metrics, epochs,
    throughput, peak memory, error). Never raises for runtime failures."""
    accelerator = make_accelerator(config.gradient_accumulation_steps, config.precision)
    main = accelerator.is_main_process
    say = (lambda line: log(line)) if (log is not None and main) else (lambda line: None)
    outcome = {"status": "failed", "metrics": {}, "epochs": [], **prepared.counts}
    if torch.cuda.is_available():
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
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return outcome


def _train(config, prepared: Prepared, accelerator, emit, say, save_dir) -> dict:
    task = prepared.data.task
    model = prepared.model
    objective = get_objective(config.objective)
    model_type = model.config.model_type
    train_loader = training_loader(prepared.data.train, prepared.tokenizer, task, config.batch_size, config.seed,
                                   collate=objective.collate(prepared.tokenizer, task, model_type))
    eval_loader = evaluation_loader(prepared.data.validation, prepared.tokenizer, task, config.batch_size,
                                    collate=objective.collate(prepared.tokenizer, task, model_type, evaluation=True))
    groups = parameter_groups(model, config.weight_decay, config.base_learning_rate, injected=prepared.report is not None)
    learning_rates = peak_learning_rates(groups)
    optimizer = torch.optim.AdamW(groups, lr=config.base_learning_rate)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    trainable = [p for p in model.parameters() if p.requires_grad]

    batches_per_epoch = len(train_loader)  # global batches (split_batches): the same for any worker count
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps if config.max_steps is not None else max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    scheduler = linear_schedule(optimizer, warmup_steps, total_steps)
    say(f"train: {total_steps} steps ({steps_per_epoch}/epoch), batch {config.batch_size} x "
        f"{config.gradient_accumulation_steps} accumulation on {accelerator.num_processes} worker(s) "
        f"({accelerator.device}), lr {config.base_learning_rate:g}, warm-up {warmup_steps}")

    started = time.perf_counter()
    train_time, samples, step, epoch = 0.0, 0, 0, 0
    epochs: list[dict] = []
    evaluation = None  # the latest
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
        evaluation_started = time.perf_counter()
        evaluation = objective.evaluate(model, eval_loader, accelerator, task, prepared.data.validation, prepared.tokenizer)
        record = {
            "epoch": round(step / steps_per_epoch, 4),
            "step": step,
            "train_loss": float(np.mean(losses)) if losses else None,
            **evaluation.metrics,
            "score": evaluation.score,
            "elapsed_s": round(time.perf_counter() - started, 3),
            "evaluation_s": round(time.perf_counter() - evaluation_started, 3),  # what scoring cost (docs/benchmarks.md)
        }
        epochs.append(record)
        say("  eval  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        if emit is not None:
            try:
                emit(dict(record))
            except BaseException as callback_error:
                raise CallbackError(callback_error) from callback_error

    final = epochs[-1] if epochs else {}
    metrics = {k: v for k, v in final.items() if k not in ("epoch", "step", "score", "elapsed_s", "evaluation_s")}
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
        "baseline_score": None if evaluation is None else evaluation.baseline_score,
        "collapsed": evaluation is not None and evaluation.collapsed,
        "learning_rates": learning_rates,
    }


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
