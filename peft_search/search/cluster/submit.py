"""Submit a search to a running Ray cluster as a Ray Job (`peft-search submit JOB.yaml --address URL`).

Owns the client side of a cluster run: which address may be used, where the Ray token comes from
(the environment or Ray's token file, never the job spec), what the job ships (the working directory
and its runtime environment) and what it runs (`peft-search run <spec> --address auto`). It talks to
the cluster only through Ray's `JobSubmissionClient`; it never reads or writes a run directory, which
the job itself does on the cluster. Imports nothing from peft_search but `errors`.

Security: an unauthenticated Ray job API lets anyone who reaches it run code on the cluster
(CVE-2023-48022, "ShadowRay"). So a plain-HTTP address that is not on this machine is refused unless
a token is available; the recommended way in is a port-forward to 127.0.0.1 (docs/deploy.md). The
token is sent as an `Authorization: Bearer` header and is never logged, printed, put in the job's
runtime environment or in an error message.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from peft_search.errors import InputError
from peft_search.search.storage.paths import split_uri

#: What never travels to the cluster with the working directory: environments, VCS data, local runs
#: and caches (the same list as .dockerignore). Ray's `excludes` take gitignore-style patterns.
DEFAULT_EXCLUDES = (
    ".git",
    ".venv",
    "venv",
    "runs",
    "data",
    "build",
    "dist",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
)

_ADDRESS_EXAMPLE = "http://127.0.0.1:8265 (after `kubectl port-forward` or `ray dashboard`, docs/deploy.md)"


@dataclass(frozen=True)
class SubmittedJob:
    """What the user needs after a submission: the job's id, where to watch it, how to follow its logs."""

    job_id: str
    dashboard_url: str
    follow_command: str


def find_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The Ray token, in Ray's own order of precedence: `RAY_AUTH_TOKEN`, then the file named by
    `RAY_AUTH_TOKEN_PATH`, then `~/.ray/auth_token`; None when there is none.

    A `RAY_AUTH_TOKEN_PATH` that cannot be read or is empty is an error, as it is for Ray, rather than
    a silent fall-back to another token.
    """
    env = os.environ if environ is None else environ
    token = env.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = env.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as error:
            raise InputError("RAY_AUTH_TOKEN_PATH", f"cannot read the token file {path}: {error.strerror}") from None
        if not token:
            raise InputError("RAY_AUTH_TOKEN_PATH", f"the token file {path} is empty")
        return token
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    default = home / ".ray" / "auth_token"
    try:
        token = default.read_text().strip()
    except OSError:
        return None
    return token or None


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP addresses (127.0.0.0/8, ::1): traffic that stays on this
    machine, such as a port-forward."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_address(address: str, token: str | None) -> str:
    """The dashboard address without a trailing slash, or an `InputError` on field `--address`.

    Refuses anything but http(s) URLs with a host, and a non-loopback `http://` address without a
    token: without one, the job API is either open to anyone on that network or will refuse us.
    """
    parts = urlsplit(address.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(
            "--address",
            f"give the Ray dashboard's HTTP address (the job API, port 8265), e.g. {_ADDRESS_EXAMPLE}; got {address!r}",
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname) and token is None:
        raise InputError(
            "--address",
            f"refusing to submit to {address} without a Ray token: an unauthenticated job API lets anyone who "
            f"can reach it run code on the cluster. Forward the dashboard port and use {_ADDRESS_EXAMPLE}, "
            "or give the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token",
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        warnings.warn(
            f"the Ray token travels unencrypted to {parts.hostname}; prefer a port-forward to 127.0.0.1 or https",
            stacklevel=3,
        )
    return address.strip().rstrip("/")


def _check_storage(storage: str) -> str:
    """A storage every node of the cluster reaches: an object-store URI (checked for its form here; the
    job's driver checks the bucket with the cluster's credentials) or an absolute shared path."""
    if "://" in storage:
        split_uri(storage, "--storage")  # the scheme and bucket; InputError otherwise
        return storage
    if not Path(storage).is_absolute():
        raise InputError(
            "--storage",
            f"on a cluster the storage must be shared by every node: an absolute path on a shared volume "
            f"(NFS, EFS, a ReadWriteMany PVC); got {storage!r}",
        )
    return storage


def default_entrypoint(spec: str, storage: str | None = None) -> str:
    """`peft-search run <spec> --address auto [--storage S]`: the search's driver runs on the cluster
    and joins it (`auto`) instead of starting a Ray of its own."""
    command = ["peft-search", "run", spec, "--address", "auto"]
    if storage is not None:
        command += ["--storage", storage]
    return shlex.join(command)


def submit_job(
    spec_path: str | os.PathLike,
    address: str,
    working_dir: str | os.PathLike = ".",
    *,
    storage: str | None = None,
    entrypoint: str | None = None,
    runtime_env: Mapping | None = None,
    submission_id: str | None = None,
    excludes: tuple[str, ...] = DEFAULT_EXCLUDES,
    environ: Mapping[str, str] | None = None,
) -> SubmittedJob:
    """Submit `spec_path` as a Ray Job to the cluster whose dashboard is at `address`.

    The job ships `working_dir` (which must contain the spec; `excludes` left out) and runs
    `entrypoint`, by default `peft-search run <spec relative to working_dir> --address auto
    [--storage STORAGE]`. `runtime_env` is merged over the working directory. The token comes from
    `environ` (default: the process environment) or Ray's token file; see `find_token`.

    Bad input raises `InputError` before anything is sent.
    """
    token = find_token(environ)
    address = check_address(address, token)

    root = Path(working_dir).resolve()
    if not root.is_dir():
        raise InputError("--working-dir", f"not a directory: {working_dir}")
    spec = Path(spec_path)
    resolved = (spec if spec.is_absolute() else Path.cwd() / spec).resolve()
    if not resolved.is_file():
        raise InputError(str(spec_path), "no such job spec file")
    if not resolved.is_relative_to(root):
        raise InputError(
            str(spec_path),
            f"the job spec must lie inside the working directory {root}, the only files the cluster receives",
        )
    spec_in_job = resolved.relative_to(root).as_posix()
    if storage is not None:
        storage = _check_storage(storage)
    if entrypoint is None:
        entrypoint = default_entrypoint(spec_in_job, storage)

    env = {"working_dir": str(root), "excludes": list(excludes)}
    env.update(runtime_env or {})

    # Imported here: `peft-search --help` and input checks must not pay for Ray's import.
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    # An explicit header takes precedence over Ray's own token loading, so the token sent is the one
    # found above, whatever RAY_AUTH_MODE says in this process.
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        client = JobSubmissionClient(address, headers=headers)
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env=env,
            submission_id=submission_id,
            metadata={"peft_search_spec": spec_in_job},
        )
    except AuthenticationError:
        source = "none found" if token is None else "the one found was refused"
        raise InputError(
            "RAY_AUTH_TOKEN",
            f"the cluster at {address} requires a Ray token ({source}); get it from the cluster "
            "(docs/deploy.md) and set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token",
        ) from None

    auth_env = "RAY_AUTH_MODE=token " if token else ""
    return SubmittedJob(
        job_id=job_id,
        dashboard_url=f"{address}/#/jobs/{job_id}",
        follow_command=f"{auth_env}ray job logs --address {shlex.quote(address)} --follow {shlex.quote(job_id)}",
    )
