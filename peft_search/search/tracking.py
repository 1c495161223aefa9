"""Experiment tracking: every trial and decision of a search in MLflow and W&B (docs/design.md,
"Experiment tracking").

Each trial is one tracked run: parameters (stage, component, choice, block, task, seed, learning
rate, budget, the design flattened; realised parameters once it ends), its metrics per evaluation
(as the trial reports them to Tune: score, eval loss, train loss, the task's metrics) and the final
ones of its record, and tags that group a search (`peft_search.run`, `peft_search.stage`). Each
stage is a parent run (MLflow) or a run of its own (W&B, grouped by the search) that logs the
decision: outcome, kept choice, each choice's mean and interval, blocks. The final evaluation logs
one run per contender.

The trials reach the tracker through a Ray Tune `Callback` on the driver (Tune's public callback
API): it sees each trial start, report and end. Ray ships `MLflowLoggerCallback` and
`WandbLoggerCallback`, but they log `trial.config` (here a `TrialRow` object) as the parameters, know
nothing of stages and decisions, and let a tracking server's error end the experiment. A tracker
that fails here warns once and is switched off: the search goes on, and every trial is still
recorded in the run directory, the source of truth. Credentials come from the environment only.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Callable

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from peft_search.errors import InputError
from peft_search.search.stage.decide import kept_as
from peft_search.search.storage.run_dir import read_json
from peft_search.search.trials import TrialRow, trial_rows

# Tune fills these into every result (ours: the row's id, whether a record was replayed, whether a
# packed trial's row ended); the tracker logs what the trial itself reported.
TUNE_RESULT_KEYS = frozenset(AUTO_RESULT_KEYS) | {"time_this_iter_s", "done", "trial_id", "experiment_tag", "replayed",
                                                 "should_checkpoint", "row_id", "row_done"}
# A tracking server that does not answer fails fast: a few tries over seconds, not MLflow's default of minutes.
# Our lines say where the runs are, once (`Tracker.where`), instead of MLflow's two lines per run.
MLFLOW_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                          "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def metric_key(name: str) -> str:
    """A metric or parameter name both trackers take: MLflow allows letters, digits and `_-. /` only
    (a choice such as `adapter+lora` becomes `adapter_lora`)."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


def trial_params(row) -> dict[str, str | int | float | None]:
    """A trial row's parameters, flat: the plan's fields, the training settings and the design."""
    config = row.config
    params = {key: value for key, value in row.fields.items() if key not in ("design_json",)}
    params.update(
        trial_id=row.trial_id, model=config.model, task=config.task, seed=config.seed,
        learning_rate=config.learning_rate, budget_fraction=config.budget_fraction, preset=config.preset,
        max_steps=config.max_steps, epochs=config.epochs, batch_size=config.batch_size,
        max_train_examples=config.max_train_examples, objective=config.objective,
    )
    if config.design is not None:
        design = config.design.to_dict()
        params.update({f"design.{key}": json.dumps(value) if not isinstance(value, str) else value
                       for key, value in design.items() if key != "strategies"})
        params.update({f"design.strategy.G{g}": "+".join(s) or "-" for g, s in enumerate(design["strategies"], start=1)})
    return {metric_key(key): value for key, value in params.items() if value is not None}


def record_outcome(record: dict) -> tuple[dict[str, float], dict[str, str]]:
    """The final metrics and parameters of a trial's record (what it realised, how it ended)."""
    metrics = {f"final.{key}": value for key, value in json.loads(record.get("metrics_json") or "{}").items()
               if isinstance(value, (int, float))}
    for key in ("score", "wall_time_s", "train_samples_per_s", "peak_memory_mb"):
        if isinstance(record.get(key), (int, float)):
            metrics[key if key != "score" else "final.score"] = record[key]
    params = {key: str(record[key]) for key in ("realised_params", "target_params", "head_params", "learning_rates_json")
              if record.get(key) is not None}
    params["status"] = record["status"]
    if record.get("error"):
        params["error"] = record["error"][:500]
    return {metric_key(k): float(v) for k, v in metrics.items() if math.isfinite(v)}, {metric_key(k): v for k, v in params.items()}


def decision_fields(decision, outcome: str) -> tuple[dict[str, str], dict[str, float]]:
    """A stage decision as parameters (outcome, kept choice, blocks, trials) and metrics (per choice:
    mean, its interval, P(best) where there is one)."""
    params = {"component": decision.component, "outcome": outcome, "kept": decision.winner or "-",
              "kept_as": kept_as(decision),
              "method": decision.method, "blocks": str(decision.blocks), "trials_run": str(decision.trials_run),
              "trials_planned": str(decision.trials_planned)}
    if decision.race_reason:
        params["race"] = decision.race_reason[:500]
    if decision.tied:
        params["tied"] = ", ".join(decision.tied)
    metrics = {}
    for stats in decision.choices:
        for name in ("mean", "ci_low", "ci_high", "p_best", "diff_mean"):
            value = getattr(stats, name)
            if value is not None and math.isfinite(value):
                metrics[metric_key(f"{stats.choice}.{name}")] = float(value)
        metrics[metric_key(f"{stats.choice}.designs")] = float(stats.n_finished)
    return {metric_key(k): v for k, v in params.items()}, metrics


class TrackerFailed(Exception):
    pass


# ---- the backends: one run per trial, stage or contender ----------------------------------------------


class MLflowBackend:
    name = "tracking.mlflow"

    def __init__(self, section, experiment: str):
        for key, value in MLFLOW_CLIENT_DEFAULTS.items():
            os.environ.setdefault(key, value)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise InputError(self.name, "needs the MLflow client: pip install 'peft-search[mlflow]'") from None
        try:
            self.client = MlflowClient(tracking_uri=section.tracking_uri)
        except Exception as error:  # a store this client cannot open (its database driver missing, say)
            raise InputError(f"{self.name}.tracking_uri", f"MLflow's client cannot use {section.tracking_uri!r}: "
                             f"{short(error)}") from None
        self.uri = section.tracking_uri
        self.experiment_name = section.experiment or experiment

    def check(self, create: bool = True) -> None:
        """Reach the server and find the experiment, creating it unless `create` is False (a dry run
        creates nothing); before the run directory exists."""
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            self.experiment_id = experiment.experiment_id
        elif create:
            self.experiment_id = self.client.create_experiment(self.experiment_name)

    def describe(self) -> str:
        return f"the MLflow tracking server at {self.uri}"

    def where(self) -> str:
        base = self.uri.rstrip("/")
        url = f"{base}/#/experiments/{self.experiment_id}" if base.startswith("http") else base
        return f"MLflow experiment {self.experiment_name!r}: {url}"

    def start(self, name: str, params: dict, tags: dict, parent: str | None = None) -> str:
        from mlflow.entities import Param

        tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(run.info.run_id, params=params[start:start + 100])
        return run.info.run_id

    def log(self, run: str, metrics: dict[str, float], step: int | None = None, params: dict | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self.client.log_batch(run, metrics=[Metric(k, v, now, step or 0) for k, v in metrics.items()],
                              params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()])

    def end(self, run: str, ok: bool) -> None:
        self.client.set_terminated(run, "FINISHED" if ok else "FAILED")

    def attach(self, run: str, name: str, text: str) -> None:
        self.client.log_text(run, text, name)


class WandbBackend:
    name = "tracking.wandb"

    def __init__(self, section, experiment: str):
        try:
            import wandb
        except ImportError:
            raise InputError(self.name, "needs the W&B client: pip install 'peft-search[wandb]'") from None
        self.wandb, self.section, self.group = wandb, section, experiment
        self.runs: dict[str, object] = {}

    def check(self, create: bool = True) -> None:
        if self.section.mode == "online" and not (os.environ.get("WANDB_API_KEY") or self.wandb.api.api_key):
            raise InputError(self.name, "mode online needs an API key: set WANDB_API_KEY or run `wandb login` (or give "
                             "mode: offline and `wandb sync` the runs later)")

    def describe(self) -> str:
        return "W&B"

    def where(self) -> str:
        if self.section.mode == "offline":
            return (f"W&B project {self.section.project!r}, offline: runs under {os.environ.get('WANDB_DIR', '.')}/wandb "
                    "(upload them with wandb sync)")
        return f"W&B project {self.section.project!r} (group: the run's name)"

    def start(self, name: str, params: dict, tags: dict, parent: str | None = None) -> str:
        run = self.wandb.init(project=self.section.project, entity=self.section.entity, mode=self.section.mode,
                              name=name, group=tags.get("peft_search.run"), job_type=tags.get("peft_search.kind"),
                              tags=[f"{k}={v}" for k, v in tags.items()][:64], config=params, reinit="create_new",
                              settings=self.wandb.Settings(silent=True, console="off"))
        self.runs[run.id] = run
        return run.id

    def log(self, run: str, metrics: dict[str, float], step: int | None = None, params: dict | None = None) -> None:
        handle = self.runs[run]
        if params:
            handle.config.update(params, allow_val_change=True)
        if step is None:
            handle.summary.update(metrics)
        else:
            handle.log(metrics, step=step)

    def end(self, run: str, ok: bool) -> None:
        self.runs.pop(run).finish(exit_code=0 if ok else 1)

    def attach(self, run: str, name: str, text: str) -> None:
        self.runs[run].summary[name] = text


# ---- the tracker ---------------------------------------------------------------------------------------


class Tracker:
    """The trackers a spec names, for one search run. Every call is safe: a tracker that fails warns
    once (naming its spec field) and is switched off; the search goes on."""

    def __init__(self, spec, run_name: str, say: Callable[[str], None] | None = None):
        self.run_name = run_name
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        section = spec.tracking
        experiment = spec.name or "peft-search"
        self.backends = []
        if section is not None and section.mlflow is not None:
            self.backends.append(MLflowBackend(section.mlflow, experiment))
        if section is not None and section.wandb is not None:
            self.backends.append(WandbBackend(section.wandb, experiment))
        self.failed: set[str] = set()

    def check(self, create: bool = True) -> None:
        """Reach every tracker now: InputError naming its field when one does not answer. `create`
        False (a dry run) reaches them the same way and creates nothing."""
        for backend in self.backends:
            self.check_one(backend, create)

    @staticmethod
    def check_one(backend, create: bool = True) -> None:
        try:
            backend.check(create)
        except InputError:
            raise
        except Exception as error:
            raise InputError(backend.name, f"{backend.describe()} does not answer: {short(error)}") from None

    def _each(self, what: str, call) -> dict[str, object]:
        """`call(backend)` on every tracker still on; a failure warns once and switches that one off."""
        out = {}
        for backend in self.backends:
            if backend.name in self.failed:
                continue
            try:
                out[backend.name] = call(backend)
            except Exception as error:
                self.failed.add(backend.name)
                self.say(f"warning: {backend.name} failed ({what}: {short(error)}); the search goes on without it, and "
                         "every trial is still recorded in the run directory")
        return out

    # A handle is {backend name: its run id}.

    def start(self, name: str, params: dict, tags: dict, parent: dict | None = None) -> dict:
        tags = {"peft_search.run": self.run_name, **tags}
        return self._each(f"starting {name}", lambda b: b.start(name, params, tags, (parent or {}).get(b.name)))

    def log(self, handle: dict, metrics: dict[str, float], step: int | None = None, params: dict | None = None) -> None:
        self._each("logging", lambda b: b.log(handle[b.name], metrics, step, params) if b.name in handle else None)

    def end(self, handle: dict, ok: bool = True) -> None:
        self._each("ending a run", lambda b: b.end(handle[b.name], ok) if b.name in handle else None)

    def attach(self, handle: dict, name: str, text: str) -> None:
        self._each("attaching " + name, lambda b: b.attach(handle[b.name], name, text) if b.name in handle else None)

    # ---- what a search logs ---------------------------------------------------------------------------

    def stage_started(self, stage: int | str, component: str, choices, kind: str = "stage") -> dict:
        """The parent run of a stage's trials (`kind` final: the final evaluation's seeded runs)."""
        name = f"{self.run_name} stage {stage} {component}" if kind == "stage" else f"{self.run_name} {component}"
        return self.start(name, {"component": component, "choices": ", ".join(choices)},
                          {"peft_search.stage": str(stage), "peft_search.kind": kind})

    def stage_decided(self, handle: dict, decision, outcome: str) -> None:
        params, metrics = decision_fields(decision, outcome)
        self.log(handle, metrics, params=params)
        self.attach(handle, "decision.json", json.dumps(decision.to_dict(), indent=1, sort_keys=True))
        self.end(handle)

    def contenders_compared(self, handle: dict, records: list[dict]) -> None:
        """The final evaluation: one run per contender under `handle`, its mean dev score per task
        (over its finished seeds) and over the tasks; then `handle` ends."""
        by_contender: dict[str, dict[str, list[float]]] = {}
        for record in records:
            if record["status"] == "finished" and record.get("score") is not None:
                by_contender.setdefault(record["contender"], {}).setdefault(record["task"], []).append(record["score"])
        for contender, tasks in by_contender.items():
            means = {task: sum(scores) / len(scores) for task, scores in tasks.items()}
            metrics = {metric_key(f"{task}.mean"): mean for task, mean in means.items()}
            metrics["average"] = sum(means.values()) / len(means)
            run = self.start(f"{self.run_name} final {contender}", {"contender": contender, "seeds": str(max(map(len, tasks.values())))},
                             {"peft_search.stage": "final", "peft_search.kind": "contender"}, parent=handle)
            self.log(run, metrics)
            self.end(run)
        self.end(handle)

    def callback(self, run_dir, parent: dict | None = None) -> "TrialLogger":
        """A Ray Tune callback that logs each trial of an experiment under `parent` (a stage's handle)."""
        return TrialLogger(self, run_dir, parent)


def short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


class TrialLogger(Callback):
    """Tune's callback API on the driver: a tracked run per row (a packed trial trains several, each
    reporting under its own id), its reported metrics per step, its record's outcome at the end."""

    def __init__(self, tracker: Tracker, run_dir, parent: dict | None):
        self.tracker, self.run_dir, self.parent = tracker, run_dir, parent
        self.handles: dict[tuple[str, str], dict] = {}  # (Tune's trial id, row id) -> the row's tracked run

    def on_trial_start(self, iteration, trials, trial, **info):
        rows = trial_rows(trial.config)
        if rows:
            self._start(trial, rows[0])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = next((row for row in trial_rows(trial.config) if row.trial_id == result.get("row_id")), None)
        handle = self._start(trial, row) if row is not None else None
        if handle is None:
            return
        metrics = {metric_key(k): float(v) for k, v in result.items()
                   if k not in TUNE_RESULT_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if metrics:
            self.tracker.log(handle, metrics, step=int(result.get("training_iteration") or 0))
        if result.get("row_done"):  # a packed trial's row ended; the next one reports under its own id
            self._end(trial, row)

    def on_trial_complete(self, iteration, trials, trial, **info):
        for row in trial_rows(trial.config):
            self._end(trial, row)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.on_trial_complete(iteration, trials, trial)

    def _start(self, trial, row: TrialRow) -> dict:
        key = (trial.trial_id, row.trial_id)
        if key not in self.handles:
            tags = {"peft_search.stage": str(row.fields.get("stage", "final")), "peft_search.kind": "trial",
                    "peft_search.trial": row.trial_id}
            self.handles[key] = self.tracker.start(row.trial_id, trial_params(row), tags, self.parent)
        return self.handles[key]

    def _end(self, trial, row: TrialRow) -> None:
        handle = self.handles.pop((trial.trial_id, row.trial_id), None)
        if handle is None:
            return  # never started (a packed trial stopped before it), or ended already
        path = row.record_path(self.run_dir)
        if not path.is_file():  # stopped by a decided race (or crashed): no record, no outcome
            self.tracker.log(handle, {}, params={"status": "stopped"})
            self.tracker.end(handle, ok=False)
            return
        record = read_json(path)
        metrics, params = record_outcome(record)
        self.tracker.log(handle, metrics, params=params)
        self.tracker.end(handle, ok=record["status"] == "finished")


__all__ = ["Tracker", "TrialLogger", "decision_fields", "metric_key", "record_outcome", "trial_params"]
