"""A real S3 server for tests: moto's (`moto[server]`, a test dependency) on 127.0.0.1, reached the
way users reach S3: pyarrow.fs with the standard AWS environment variables (`AWS_ENDPOINT_URL`,
keys, region). Nothing is mocked in-process: every read and write is an HTTP request to the server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

MOTO_SERVER = str(Path(sys.executable).with_name("moto_server"))
START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def aws_environment(endpoint: str) -> dict[str, str]:
    """What a user exports to reach an S3-compatible server (credentials are moto's dummies)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "never-printed-secret",
            "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def moto_server(log_dir: Path):
    """Start `moto_server` on a free port; yield its endpoint URL; stop it."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(log_dir / "moto.log", "wb")
    server = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start:\n{(log_dir / 'moto.log').read_text()}") from None
                time.sleep(0.3)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def create_bucket(endpoint: str, bucket: str) -> None:
    from pyarrow import fs

    s3 = fs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing", region="us-east-1",
                         allow_bucket_creation=True)
    s3.create_dir(bucket)


@contextmanager
def environment(values: dict[str, str | None]):
    """Set (or, for None, remove) environment variables for the block, then restore them."""
    before = {name: os.environ.get(name) for name in values}
    try:
        _apply(values)
        yield
    finally:
        _apply(before)


def _apply(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
