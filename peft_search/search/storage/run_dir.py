"""The run directory: its layout (docs/design.md, "Module map"), atomic file writes and the run's clock.

    <run>/spec.yaml                 the canonical spec that ran
    <run>/state.json                the controller's state (stages, decisions, current space)
    <run>/stages/<i>/plan.parquet   the stage's plan, written before any trial starts
    <run>/stages/<i>/tune/          the stage's Ray Tune experiment
    <run>/stages/<i>/trials/<trial_id>.json   one file per finished trial, written by the trial
    <run>/final/, final.parquet      the final evaluation (search/final/evaluate.py)
    <run>/results.parquet           every trial of every stage
    <run>/report/                   the HTML report

Runs live on a local or shared (NFS) file system, or on an object store (s3://, gs://): every path
here is a `StoragePath` (paths.py), which reads and writes both.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import uuid
from pathlib import Path

from peft_search.errors import InputError
from peft_search.search.storage.paths import StoragePath

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


def stage_dir(run_dir: StoragePath, stage: int) -> StoragePath:
    return run_dir / "stages" / str(stage)


def trials_dir(run_dir: StoragePath, stage: int) -> StoragePath:
    return stage_dir(run_dir, stage) / "trials"


def write_json_atomic(path: StoragePath | str | Path, value) -> None:
    """Atomic on every storage (`StoragePath.write_bytes`)."""
    StoragePath.parse(path).write_bytes((json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: StoragePath) -> dict:
    return json.loads(path.read_bytes())


def storage_root(storage: str | Path, field: str = "storage") -> StoragePath:
    """Where runs are kept: a local directory (made absolute) or an object-store prefix."""
    return StoragePath.parse(storage, field)


def check_storage(root: StoragePath, field: str = "storage") -> None:
    """Refuse storage we could not write, without creating anything."""
    if root.is_local:
        check_writable(root.local, field)
    else:
        check_object_store(root, field)


def check_writable(directory: Path, field: str = "storage") -> None:
    """Refuse a storage directory we could not create or write, without creating anything."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(field, f"{directory} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(field, f"{directory} is not writable ({existing} does not allow it)")


# Where the AWS SDK (and so pyarrow) finds credentials without asking the network; an instance role
# (EC2 metadata) is the one source it can only find over the network, asked last (as the SDK does).
AWS_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def aws_credentials_found(environ=os.environ) -> bool:
    if any(environ.get(name) for name in AWS_CREDENTIAL_VARIABLES):
        return True
    home = Path(environ.get("HOME", "~")).expanduser()
    files = (environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials",
             environ.get("AWS_CONFIG_FILE") or home / ".aws" / "config")
    if any(Path(f).is_file() for f in files):
        return True
    if environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return False
    return _instance_metadata_answers()


def _instance_metadata_answers(timeout_s: float = 1.0) -> bool:
    import urllib.request

    request = urllib.request.Request("http://169.254.169.254/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return True
    except Exception:  # noqa: BLE001 - unreachable, refused or timed out: no instance role here
        return False


def check_object_store(root: StoragePath, field: str = "storage") -> None:
    """The bucket exists and takes a write from this process's credentials: one probe object, put
    and deleted (the only way to know a write will succeed). The bucket itself is never created."""
    from pyarrow import fs

    if root.scheme == "s3" and not aws_credentials_found():
        raise InputError(field, f"{root}: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                "AWS_PROFILE, or run where an instance or pod role provides them); "
                                "AWS_ENDPOINT_URL selects an S3-compatible server")
    try:
        bucket = root.filesystem.get_file_info(root.bucket).type
    except OSError as error:
        raise InputError(field, f"{root}: the object store did not answer: {_first_line(error)}") from None
    if bucket == fs.FileType.NotFound:
        raise InputError(field, f"{root}: bucket {root.bucket!r} does not exist (peft-search never creates buckets)")
    probe = root / f".peft-search-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except OSError as error:
        raise InputError(field, f"{root}: a test write was refused: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def require_run(path: str | Path | StoragePath, field: str = "RUN") -> StoragePath:
    run_dir = StoragePath.parse(path, field)
    if not (run_dir / STATE_FILE).is_file() or not (run_dir / SPEC_FILE).is_file():
        raise InputError(field, f"{path} is not a peft-search run directory (no {STATE_FILE} and {SPEC_FILE})")
    return run_dir
