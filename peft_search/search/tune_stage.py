"""One refinement stage as one Ray Tune experiment: a trial per pending plan row.

The trainable is a pure function of its row. It writes the trial's record the moment the trial
finishes and, when it finds a record already there, reports it without training again; so a stage
restored with `Tuner.restore` (or replanned after a crash) never repeats a finished trial.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

import ray
from ray import tune

from peft_search.search.plan import PlanRow, StagePlan
from peft_search.search.results import read_records, record_path, started_path, trial_record
from peft_search.search.run_dir import stage_dir, write_json_atomic

EXPERIMENT = "tune"
DASHBOARD_PORT = 8265


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def stage_trainable(config: dict) -> None:
    """Ray Tune function trainable: train one plan row (`config["row"]`), record it, report it."""
    from peft_search.train.trial import TrialConfig, run_trial

    row = PlanRow(**config["row"])
    path = record_path(Path(config["run_dir"]), row.stage, row.trial_id)
    if path.is_file():
        record = json.loads(path.read_text())
        tune.report({"score": record["score"], "status": record["status"], "trial_id": row.trial_id, "replayed": True})
        return
    started_at = _now()
    marker = started_path(Path(config["run_dir"]), row.stage, row.trial_id)
    write_json_atomic(marker, {"trial_id": row.trial_id, "node": platform.node(), "started_at": started_at})
    epochs_reported = []

    def on_epoch(metrics: dict) -> None:
        epochs_reported.append(metrics)
        tune.report({**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "trial_id": row.trial_id})

    try:
        result = run_trial(TrialConfig.from_dict(row.config), on_epoch=on_epoch).to_dict()
    except Exception as error:  # bad input surfacing only now: record it as a failed trial, not a crash
        result = {"status": "failed", "score": None, "error": f"{type(error).__name__}: {error}"}
    record = trial_record(row, result, node=platform.node(), started_at=started_at, finished_at=_now())
    write_json_atomic(path, record)
    marker.unlink(missing_ok=True)
    final = {"score": record["score"], "status": record["status"], "trial_id": row.trial_id, "replayed": False}
    if not epochs_reported or record["status"] != "finished":
        tune.report(final)


class StageProgress(threading.Thread):
    """Terminal progress from the trial records (the source of truth, so it is right after a
    restore too): trials done of total, failures, best score so far."""

    def __init__(self, run_dir: Path, plan: StagePlan, num_stages: int, interval_s: float = 2.0, out=None):
        super().__init__(daemon=True)
        self.prefix = f"stage {plan.stage + 1}/{num_stages} ({plan.component})"
        self.run_dir, self.plan, self.interval_s, self.out = run_dir, plan, interval_s, out
        self.stopped = threading.Event()
        self.last_line = ""

    def line(self) -> str:
        records = read_records(self.run_dir, self.plan.stage)
        failed = sum(1 for r in records if r["status"] != "finished")
        scored = [(r["score"], r["choice"]) for r in records if r["status"] == "finished" and r["score"] is not None]
        best = max(scored) if scored else None
        text = f"{self.prefix}: {len(records)}/{self.plan.num_trials} trials done"
        text += f", {failed} failed" if failed else ""
        text += f", best trial so far {best[0]:.4f} ({best[1]})" if best else ""
        return text

    def report(self) -> None:
        line = self.line()
        if line != self.last_line:
            print(line, file=self.out or sys.stdout, flush=True)
            self.last_line = line

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.report()

    def stop(self) -> None:
        self.stopped.set()
        self.report()


def run_stage(run_dir: Path, plan: StagePlan, num_stages: int, resources: dict, max_concurrent: int | None, retries: int) -> None:
    """Run every plan row without a record, as one Tune experiment under `stages/<i>/tune`.

    An experiment left behind by an interrupted driver is restored (finished trials are kept,
    unfinished ones rerun); one that cannot be restored is replaced by a fresh one over the
    remaining rows. Either way the rows that already have a record are not trained again.
    """
    directory = stage_dir(run_dir, plan.stage)
    pending = [row for row in plan.rows if not record_path(run_dir, plan.stage, row.trial_id).is_file()]
    if not pending:
        return
    # Our progress line (from the records) replaces Tune's tables and info logs on the terminal.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    trainable = tune.with_resources(stage_trainable, resources)
    experiment = directory / EXPERIMENT
    if experiment.exists() and tune.Tuner.can_restore(str(experiment)):
        print(f"stage {plan.stage + 1}/{num_stages}: restoring the Tune experiment {experiment} ({len(pending)} trials left)", flush=True)
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, restart_errored=True)
    else:
        name = EXPERIMENT if not experiment.exists() else f"{EXPERIMENT}-{int(time.time())}"
        rows = [row.__dict__ for row in pending]
        tuner = tune.Tuner(
            trainable,
            param_space={"run_dir": str(run_dir), "row": tune.grid_search(rows)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent,
                # One actor runs trial after trial: torch and transformers are imported once, not per trial.
                reuse_actors=True,
                trial_name_creator=lambda trial: trial.config["row"]["trial_id"],
                trial_dirname_creator=lambda trial: trial.config["row"]["trial_id"],
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(directory),
                failure_config=tune.FailureConfig(max_failures=retries),
                verbose=0,
            ),
        )
    progress = StageProgress(run_dir, plan, num_stages)
    progress.start()
    try:
        tuner.fit()
    finally:
        progress.stop()


def init_ray(address: str | None) -> str | None:
    """Connect to `address`, or start Ray in-process with its dashboard on 127.0.0.1 only.

    Returns the dashboard URL when this process started it."""
    if ray.is_initialized():
        return None
    if address:
        ray.init(address=address, log_to_driver=False)
        return None
    port = DASHBOARD_PORT if _port_is_free(DASHBOARD_PORT) else _free_port()
    if port != DASHBOARD_PORT:
        print(f"port {DASHBOARD_PORT} is taken (another search or Ray?); the dashboard uses {port}", flush=True)
    context = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=False)
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
