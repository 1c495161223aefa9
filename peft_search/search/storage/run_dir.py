"""The run directory: its layout (DESIGN.md section 3), atomic file writes and the run's clock.

    <run>/spec.yaml                 the canonical spec that ran
    <run>/state.json                the controller's state (stages, decisions, current space)
    <run>/stages/<i>/plan.parquet   the stage's plan, written before any trial starts
    <run>/stages/<i>/tune/          the stage's Ray Tune experiment
    <run>/stages/<i>/trials/<trial_id>.json   one file per finished trial, written by the trial
    <run>/final/, final.parquet      the final evaluation (search/final/evaluate.py)
    <run>/results.parquet           every trial of every stage
    <run>/report/                   the HTML report

Runs live on a local or shared (NFS) file system; object-store URIs are not supported yet.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from pathlib import Path

from peft_search.atomic import write_atomic
from peft_search.errors import InputError

SPEC_FILE = "spec.yaml"
STATE_FILE = "state.json"
RESULTS_FILE = "results.parquet"


def utc_now() -> str:
    """The timestamp every file of a run uses (UTC, ISO 8601, seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def task_slug(task: str) -> str:
    """A directory name for a task (file tasks are spelled `file:text=a,label=b`)."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", task):
        return task
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)[:40] + "-" + hashlib.sha256(task.encode()).hexdigest()[:8]


def stage_dir(run_dir: Path, stage: int) -> Path:
    return run_dir / "stages" / str(stage)


def trials_dir(run_dir: Path, stage: int) -> Path:
    return stage_dir(run_dir, stage) / "trials"


def write_json_atomic(path: Path, value) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def local_path(storage: str, field: str = "storage") -> Path:
    if "://" in storage and not storage.startswith("file://"):
        raise InputError(
            field, f"{storage!r}: object-store URIs are not supported yet; give a local or shared (NFS) directory"
        )
    return Path(storage.removeprefix("file://")).expanduser().resolve()


def check_writable(directory: Path, field: str = "storage") -> None:
    """Refuse a storage directory we could not create or write, without creating anything."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(field, f"{directory} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(field, f"{directory} is not writable ({existing} does not allow it)")


def require_run(path: str | Path) -> Path:
    run_dir = Path(path).expanduser().resolve()
    if not (run_dir / STATE_FILE).is_file() or not (run_dir / SPEC_FILE).is_file():
        raise InputError("RUN", f"{path} is not a peft-search run directory (no {STATE_FILE} and {SPEC_FILE})")
    return run_dir
