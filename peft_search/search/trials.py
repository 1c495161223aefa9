"""Running trials: the one path by which a stage trial and a final-evaluation run are trained.

A `TrialRow` is what one Ray Tune trial executes: a `TrialConfig` (validated when the row was
planned), the directory its record goes to (relative to the run directory), the fields its record
carries besides the result (`fields`: a stage row's stage, choice, block and design; a final run's
phase and contender) and, optionally, where its trained PEFT state is kept. Stage plan rows
(`stage.plan.PlanRow.trial_row`) and final runs (`final.evaluate`) both become TrialRows, and
`trial_trainable` runs them: it writes the record the moment the trial ends and, when a record is
already there, reports it without training again, so a restored or replanned experiment never
repeats a finished trial.

A row's id is a hash of its canonical JSON (`row_id`); the same row always gets the same id.
Imports train's `TrialConfig` (no torch at import); ray only inside the trainable.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import dataclass, replace

from peft_search.search.storage.paths import LocalStaging, StoragePath
from peft_search.search.storage.run_dir import read_json, utc_now, write_json_atomic
from peft_search.train.trial import TrialConfig

ROW_ID_LENGTH = 16


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def row_id(row_fields: dict) -> str:
    """Short hash of a row's canonical JSON (everything in the row except the id itself)."""
    return hashlib.sha256(canonical_json(row_fields).encode()).hexdigest()[:ROW_ID_LENGTH]


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    config: TrialConfig
    record_dir: str  # relative to the run directory: stages/<i>/trials, final/runs, final/tuning/<task>/<contender>
    fields: dict  # what the record carries besides the result (JSON-safe)
    save_dir: str | None = None  # relative to the run directory: where the trained PEFT state is kept

    @classmethod
    def create(cls, config: TrialConfig, record_dir: str, fields: dict, save_dir: str | None = None) -> "TrialRow":
        """A row whose id hashes its config and fields (final runs; stage rows keep their plan's id)."""
        trial_id = row_id({"config": config.to_dict(), "fields": fields, "save_dir": save_dir})
        return cls(trial_id, config, record_dir, fields, save_dir)

    def with_learning_rate(self, learning_rate: float) -> "TrialRow":
        """The row at another learning rate (a tuning trial's sample), with its own id."""
        config = replace(self.config, learning_rate=float(learning_rate))
        return TrialRow.create(config, self.record_dir, {**self.fields, "learning_rate": float(learning_rate)}, self.save_dir)

    def record_path(self, run_dir: StoragePath) -> StoragePath:
        return run_dir / self.record_dir / f"{self.trial_id}.json"

    def started_path(self, run_dir: StoragePath) -> StoragePath:
        """The trial's marker while it runs: written when it starts, removed once its record exists."""
        return run_dir / self.record_dir / f"{self.trial_id}.started"

    def to_dict(self) -> dict:
        return {"trial_id": self.trial_id, "config": self.config.to_dict(), "record_dir": self.record_dir,
                "fields": self.fields, "save_dir": self.save_dir}

    @classmethod
    def from_dict(cls, data: dict) -> "TrialRow":
        return cls(data["trial_id"], TrialConfig.from_dict(data["config"]), data["record_dir"], data["fields"], data.get("save_dir"))


def trial_record(row: TrialRow, result: dict, started_at: str, finished_at: str) -> dict:
    """The flat record of one trial: its row's fields, its result, its config, where and when it ran."""
    finished = result["status"] == "finished"
    return {
        "trial_id": row.trial_id,
        **row.fields,
        "status": result["status"],
        "score": result.get("score"),
        # The score a constant prediction gets on the same evaluation examples, and whether the trial
        # ended there (it learned nothing): a real outcome, counted, and reported per stage.
        "baseline_score": result.get("baseline_score"),
        "collapsed": bool(result.get("collapsed")),
        "metrics_json": json.dumps(result.get("metrics") or {}, sort_keys=True),
        # The rate it trained at: the row's, or the default for its design or preset when the spec
        # left it null; and each strategy's (the base x its scale), as the optimiser had them.
        "learning_rate": row.config.base_learning_rate,
        "learning_rates_json": json.dumps(result["learning_rates"], sort_keys=True) if result.get("learning_rates") else None,
        "realised_params": result.get("realised_params"),
        "target_params": result.get("target_params"),
        "head_params": result.get("head_params"),
        "head": result.get("head"),
        "checkpoint_head_labels": result.get("checkpoint_head_labels"),
        "wall_time_s": result.get("wall_time_s"),
        "train_samples_per_s": result.get("train_samples_per_s"),
        "peak_memory_mb": result.get("peak_memory_mb"),
        "error": result.get("error"),
        "weights": row.save_dir if (row.save_dir is not None and finished) else None,
        "config_json": canonical_json(row.config.to_dict()),
        "node": platform.node(),
        "node_id": ray_node_id(),  # hosts can share a name (containers, several nodes on one machine)
        "started_at": started_at,
        "finished_at": finished_at,
    }


def ray_node_id() -> str | None:
    """The Ray node this process runs on; None outside Ray."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def rehearse(replay: dict) -> dict:
    """A rehearsal's trial (search/simulate.py): no training; it holds its slot for the modelled
    seconds and reports the score the simulator replayed for its row."""
    time.sleep(replay["seconds"])
    return {"status": "finished", "score": replay["score"], "wall_time_s": replay["seconds"]}


def run_row(run_dir: StoragePath, row: TrialRow, on_epoch=None, replay: dict | None = None) -> tuple[dict, bool]:
    """Train `row` unless it has a record; returns (its record, whether it was already there).
    `replay` ({"seconds", "score"}): rehearse it instead of training (a cluster rehearsal)."""
    from peft_search.train.run import run_trial

    path = row.record_path(run_dir)
    if path.is_file():
        return read_json(path), True
    started_at = utc_now()
    marker = row.started_path(run_dir)
    write_json_atomic(marker, {"trial_id": row.trial_id, "node": platform.node(), "node_id": ray_node_id(),
                               "started_at": started_at})
    try:
        if replay is not None:
            result = rehearse(replay)
        elif row.save_dir is None:
            result = run_trial(row.config, on_epoch=on_epoch).to_dict()
        else:  # trained weights are written to disk, then kept with the run (uploaded to an object store)
            with LocalStaging(run_dir / row.save_dir) as save_dir:
                result = run_trial(row.config, on_epoch=on_epoch, save_dir=str(save_dir)).to_dict()
    except Exception as error:  # bad input surfacing only now: record it as a failed trial, not a crash
        result = {"status": "failed", "score": None, "error": f"{type(error).__name__}: {error}"}
    record = trial_record(row, result, started_at=started_at, finished_at=utc_now())
    write_json_atomic(path, record)
    marker.unlink(missing_ok=True)
    return record, False


def record_failure(run_dir: StoragePath, row: TrialRow, error: str) -> None:
    """Record `row` as failed unless it has a record (a trial that crashed outside `run_row`)."""
    path = row.record_path(run_dir)
    if not path.is_file():
        now = utc_now()
        write_json_atomic(path, trial_record(row, {"status": "failed", "score": None, "error": error}, now, now))
        row.started_path(run_dir).unlink(missing_ok=True)


def reported_score(record: dict) -> float:
    """The score a trial reports to Tune: NaN unless it finished (searchers such as Optuna need a number)."""
    score = record.get("score")
    return score if record["status"] == "finished" and score is not None and math.isfinite(score) else float("nan")


def trial_rows(config: dict) -> list[TrialRow]:
    """The rows a trial's config trains, in order: a stage's (`rows`: one, or several packed back to
    back) or a final run's (`row`)."""
    return list(config["rows"]) if config.get("rows") else [config["row"]] if config.get("row") is not None else []


def trial_trainable(config: dict, **constants) -> None:
    """Ray Tune function trainable: run `config["rows"]` one after another (a packed stage trial;
    rehearsed instead when `config["replays"]` gives each its seconds and score) or `config["row"]`
    (a TrialRow, at `config["learning_rate"]` when a searcher samples one), record each row the
    moment it ends, report it (`row_id`: Tune fills `trial_id` with its own). Every row of a packed
    trial but its last reports `row_done`: the searcher hears of it before the trial ends. `constants` (`run_dir`, `row`), given through
    `tune.with_parameters`, fill what the config leaves out (a searcher's space holds only the rate)."""
    from ray import tune

    config = {**constants, **config}
    rows = trial_rows(config)
    if "learning_rate" in config:
        rows = [row.with_learning_rate(config["learning_rate"]) for row in rows]
    replays = config.get("replays") or [config.get("replay")] * len(rows)
    run_dir = StoragePath.parse(config["run_dir"])
    for position, (row, replay) in enumerate(zip(rows, replays)):
        epochs_reported = []

        def on_epoch(metrics: dict, row: TrialRow = row, epochs_reported: list = epochs_reported) -> None:
            epochs_reported.append(metrics)
            tune.report({**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "row_id": row.trial_id})

        record, replayed = run_row(run_dir, row, on_epoch=on_epoch, replay=replay)
        last = position == len(rows) - 1
        if not last or replayed or not epochs_reported or record["status"] != "finished":
            tune.report({"score": reported_score(record), "status": record["status"], "row_id": row.trial_id,
                         "replayed": replayed, "row_done": not last})


def trial_resources(resources) -> dict:
    """What one Tune trial reserves, from the spec's `resources` section."""
    if resources.workers > 1:
        # The Tune trial only drives its TorchTrainer, whose workers reserve their own resources.
        return {"cpu": 0.1}
    return {"cpu": resources.cpus, "gpu": resources.gpus}


__all__ = ["TrialRow", "canonical_json", "record_failure", "row_id", "run_row", "trial_record", "trial_resources", "trial_rows",
           "trial_trainable"]
