"""A trial: one design (or preset), one task, one seed, one fidelity, trained for real and scored.

`TrialConfig` is one plan row (frozen, validated, strict JSON round trip): what a trial is asked to
do; `TrialResult` is what it reports. `train.run.run_trial` trains one. Both sides of a trial import
these two types from here (the loop, Ray Train's workers, the search), and this module imports no
training code: no import circle.

This is the interface the search controller calls; keep its shape.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields

from peft_search.errors import InputError
from peft_search.space import Design
from peft_search.train.presets import PRESETS, check_learning_rate, default_learning_rate, preset_design
from peft_search.train.tasks import CLASSIFICATION, OBJECTIVE_NAMES, get_task

STATUSES = ("finished", "diverged", "oom", "failed")


@dataclass(frozen=True)
class TrialConfig:
    """One plan row. Exactly one of `design` (a `Design.to_dict()`) and `preset` is given.

    Training runs `max_steps` optimizer steps when given (evaluating at every epoch boundary and at
    the end), else `epochs` passes over the training set (fractions allowed). `batch_size` is the
    global batch: with `workers > 1` each worker takes batch_size / workers of it.
    `learning_rate=None` takes the preset's default (presets.py), or DESIGN_LEARNING_RATE for a design.
    `max_eval_examples` subsamples the validation split with a fixed seed, the same for every trial.
    `holdout_fraction` (None = off): train on the training examples less a held-back slice of this
    fraction (stratified, fixed seed) and evaluate on that slice instead of the validation split, so
    that tuning (the final evaluation's learning rates) never sees the dev set it reports.
    """

    model: str
    task: str
    data_dir: str | None = None
    design: Design | None = None  # a dict (a design file's JSON) is read into a Design once, here
    preset: str | None = None
    budget_fraction: float = 0.005
    seed: int = 0
    epochs: float | None = 1
    max_steps: int | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    learning_rate: float | None = None
    batch_size: int = 32
    warmup_ratio: float = 0.06
    max_length: int = 128
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    workers: int = 1
    cache_dir: str | None = None
    holdout_fraction: float | None = None
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    precision: str = "auto"  # autocast: auto (bf16 on a GPU, fp32 on a CPU) | fp32 | bf16 | fp16 (GPU only)
    backbone_dtype: str = "float32"  # the frozen backbone's weights; trainable tensors and norms stay float32
    objective: str = CLASSIFICATION  # classification (a task head) | text_to_text (the backbone's LM head)

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError("model", "give a Hub id, a local directory, or the alias minilm")
        if self.objective not in OBJECTIVE_NAMES:
            raise InputError("objective", f"must be one of {', '.join(OBJECTIVE_NAMES)}, got {self.objective!r}")
        get_task(self.task).check_objective(self.objective)
        if (self.design is None) == (self.preset is None):
            raise InputError("design", f"give exactly one of design and preset (presets: {', '.join(PRESETS)})")
        if self.preset is not None:
            preset_design(self.preset)
        else:
            if not isinstance(self.design, Design):  # validated and made canonical once, here
                object.__setattr__(self, "design", Design.from_dict(self.design))
        _number("budget_fraction", self.budget_fraction, low=0, high=1, open_low=True, open_high=True)
        _integer("seed", self.seed, low=0)
        if self.epochs is None and self.max_steps is None:
            raise InputError("epochs", "give epochs or max_steps")
        if self.epochs is not None:
            _number("epochs", self.epochs, low=0, open_low=True)
        if self.max_steps is not None:
            _integer("max_steps", self.max_steps, low=1)
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) is not None:
                _integer(name, getattr(self, name), low=1)
        if self.learning_rate is not None:
            check_learning_rate(self.learning_rate)
        if self.holdout_fraction is not None:
            _number("holdout_fraction", self.holdout_fraction, low=0, high=1, open_low=True, open_high=True)
        _integer("batch_size", self.batch_size, low=1)
        _number("warmup_ratio", self.warmup_ratio, low=0, high=1, open_high=True)
        _integer("max_length", self.max_length, low=8)
        _integer("gradient_accumulation_steps", self.gradient_accumulation_steps, low=1)
        _number("weight_decay", self.weight_decay, low=0)
        _integer("workers", self.workers, low=1)
        check_precision(self.precision, self.backbone_dtype)
        if not isinstance(self.gradient_checkpointing, bool):
            raise InputError("gradient_checkpointing", f"must be true or false, got {self.gradient_checkpointing!r}")
        if self.batch_size % self.workers:
            raise InputError("batch_size", f"{self.batch_size} does not split over {self.workers} workers; give a multiple of {self.workers}")

    @property
    def base_learning_rate(self) -> float:
        """The base rate the trial trains at (each strategy at this x its scale): `learning_rate`
        when given, else the preset's or designs' default."""
        return self.learning_rate if self.learning_rate is not None else default_learning_rate(self.preset)

    @property
    def design_obj(self) -> Design | None:
        """The design trained: `design`, or the preset's (None for full fine-tuning)."""
        return preset_design(self.preset) if self.preset is not None else self.design

    @property
    def design_id(self) -> str:
        design = self.design_obj
        return design.design_id if design is not None else self.preset

    def to_dict(self) -> dict:
        """Every field (the design as its canonical dict), except those added since 0.4 while they
        hold their default: a row's id hashes this dict, so rows written before a field existed keep
        their ids (and their records)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["design"] = self.design.to_dict() if self.design is not None else None
        for name, default in ADDED_FIELDS.items():
            if data[name] == default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrialConfig":
        if not isinstance(data, dict):
            raise InputError("trial", "must be a JSON object")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InputError("trial", f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
        missing = [key for key in ("model", "task") if key not in data]
        if missing:
            raise InputError("trial", f"missing key(s) {', '.join(missing)}")
        return cls(**data)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKBONE_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # each half dtype needs its autocast


def check_precision(precision: str, backbone_dtype: str) -> None:
    """The precision settings of a trial (docs/design.md, "Training loop and its reference"); InputError naming the field."""
    if precision not in PRECISIONS:
        raise InputError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backbone_dtype not in BACKBONE_DTYPES:
        raise InputError("backbone_dtype", f"must be one of {', '.join(BACKBONE_DTYPES)}, got {backbone_dtype!r}")
    needed = BACKBONE_DTYPES[backbone_dtype]
    if backbone_dtype != "float32" and precision != needed:
        # A half-precision backbone beside float32 trainable tensors runs only under its autocast.
        raise InputError("backbone_dtype", f"{backbone_dtype} needs precision {needed}, got {precision}")


# Fields added after rows were first stored, with the default an older row means.
ADDED_FIELDS = {"gradient_checkpointing": False, "precision": "auto", "backbone_dtype": "float32",
                "objective": CLASSIFICATION}


def _number(field, value, low=None, high=None, open_low=False, open_high=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(field, f"must be a number, got {value!r}")
    if low is not None and (value < low or (open_low and value == low)):
        raise InputError(field, f"must be {'>' if open_low else '>='} {low}, got {value}")
    if high is not None and (value > high or (open_high and value == high)):
        raise InputError(field, f"must be {'<' if open_high else '<='} {high}, got {value}")


def _integer(field, value, low):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(field, f"must be an integer, got {value!r}")
    if value < low:
        raise InputError(field, f"must be >= {low}, got {value}")


@dataclass(frozen=True)
class TrialResult:
    """status: finished | diverged | oom | failed. score: the task's main metric on the validation
    split after training (None unless finished). metrics: the final evaluation (main and extra
    metrics, eval_loss, train_loss). epochs: one flat dict per evaluation, as given to `on_epoch`.
    realised_params: trainable backbone parameters (all of them for `full`); head_params: the task
    head's. train_samples_per_s: training examples per second of training (evaluation excluded).
    peak_memory_mb: peak GPU memory allocated during the trial, or on CPU the process's peak resident
    set size (over the process's life); with several workers, rank 0's.
    baseline_score: the main metric of a constant prediction (majority class; a regression's mean) on
    the same validation examples (None when nothing was evaluated). collapsed: the finished trial
    learned nothing: it predicts one class (one value) for every example, or scores the baseline
    within 1e-9 (`metrics.is_collapsed`). A real outcome, counted like any other. Records written
    before these two existed read as None / False. learning_rates: the rate each parameter group
    trained at, at the schedule's peak (the base rate x the strategy's scale; `all` for full
    fine-tuning); None when training never started."""

    status: str
    score: float | None
    metrics: dict
    epochs: list
    realised_params: int | None
    target_params: int | None
    head_params: int | None
    wall_time_s: float
    train_samples_per_s: float | None
    peak_memory_mb: float | None
    error: str | None
    task: str
    design_id: str
    baseline_score: float | None = None
    collapsed: bool = False
    learning_rates: dict | None = None  # each parameter group's peak rate: {"lora": 5e-3, "head": 5e-3}
    head: str | None = None  # new | kept (the checkpoint's own head) | replaced (by a new one of the task's size) | lm
    checkpoint_head_labels: int | None = None  # the checkpoint's own head's outputs; None: it had none

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrialResult":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data or f.default is MISSING})
