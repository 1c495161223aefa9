"""`submit_job` and the secure defaults of a cluster run: a real local `ray start --head` with token
authentication refuses a job without the token and runs one submitted with it.

The Ray head is isolated from every other Ray on this machine: its own temp dir, its own ports (all
chosen free, none of the defaults another test or engineer may be using), its own HOME and an
explicit RAY_AUTH_TOKEN_PATH, so neither the developer's ~/.ray/auth_token nor another test's
in-process Ray is read or changed. Teardown stops exactly the processes this head started (by pid),
never `ray stop`, which would kill every Ray process on the machine.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from peft_search.errors import InputError
from peft_search.search.cluster.submit import check_address, default_entrypoint, find_token, submit_job

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 120


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _http(method: str, url: str, token: str | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0  # not listening yet


def _stop_tree(head: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM the blocking `ray start` (it shuts its node down), then kill by pid whatever is left
    of its process tree or still runs from its temp dir."""
    try:
        parent = psutil.Process(head.pid)
        tree = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=10)
    mine = {p.pid: p for p in tree}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or ()):
                mine[proc.pid] = proc
        except psutil.Error:
            pass
    for proc in mine.values():
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(mine.values()), timeout=10)


@pytest.fixture(scope="module")
def token_cluster():
    """A head and one worker node started with `ray start`, token authentication on, on 127.0.0.1;
    yields (dashboard address, token file). The head has no CPUs, so every trial runs on the worker:
    a job that trains anything proves the worker joined with the token."""
    # Short paths: Ray's unix sockets live under the temp dirs and their paths are length-limited.
    temp_dir = tempfile.mkdtemp(prefix="pst", dir="/tmp")
    worker_dir = tempfile.mkdtemp(prefix="psw", dir="/tmp")
    home = Path(temp_dir) / "home"
    home.mkdir()
    token_path = Path(temp_dir) / "token"
    token_path.write_text(secrets.token_hex(32))
    gcs, dashboard, client, agent, agent_grpc, env_agent, metrics = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HOME=str(home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    # Jobs run `peft-search`, as on a cluster whose image installs it: put this environment's on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    head_command = [
        RAY, "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={temp_dir}", "--num-cpus=0", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={env_agent}",
        f"--metrics-export-port={metrics}",
    ]  # fmt: skip
    node_manager, object_manager, w_agent, w_agent_grpc, w_env_agent, w_metrics = _free_ports(6)
    worker_command = [
        RAY, "start", f"--address=127.0.0.1:{gcs}", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--temp-dir={worker_dir}", "--num-cpus=2", "--num-gpus=0",
        f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
        f"--dashboard-agent-listen-port={w_agent}", f"--dashboard-agent-grpc-port={w_agent_grpc}",
        f"--runtime-env-agent-port={w_env_agent}", f"--metrics-export-port={w_metrics}",
    ]  # fmt: skip
    log = open(Path(temp_dir) / "ray-start.log", "wb")
    worker_log = open(Path(worker_dir) / "ray-start.log", "wb")
    head = subprocess.Popen(head_command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        token = token_path.read_text()
        while _http("GET", f"{address}/api/jobs/", token) != 200:
            if head.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"ray start --head did not serve the job API:\n{(Path(temp_dir) / 'ray-start.log').read_text()}")
            time.sleep(1)
        worker = subprocess.Popen(worker_command, env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
        while len(_alive_nodes(address, token)) < 2:
            if worker.poll() is not None or time.monotonic() > deadline + START_TIMEOUT_S:
                worker_log.flush()
                pytest.fail(f"ray start --address did not join:\n{(Path(worker_dir) / 'ray-start.log').read_text()}")
            time.sleep(1)
        yield address, token_path
    finally:
        if worker is not None:
            _stop_tree(worker, worker_dir)
        _stop_tree(head, temp_dir)
        log.close()
        worker_log.close()
        subprocess.run(["rm", "-rf", temp_dir, worker_dir], check=False, timeout=60)


def _alive_nodes(address: str, token: str) -> list[dict]:
    """The cluster's live nodes, from the dashboard's state API (`is_head_node`, `node_id`, ...)."""
    import json

    request = urllib.request.Request(f"{address}/api/v0/nodes?limit=100", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            nodes = json.loads(response.read())["data"]["result"]["result"]
    except (OSError, KeyError, ValueError):
        return []
    return [node for node in nodes if node.get("state") == "ALIVE"]


def _job_dir(tmp_path: Path, marker: str) -> Path:
    root = tmp_path / "project"
    (root / "jobs").mkdir(parents=True)
    (root / "jobs" / "tiny.yaml").write_text(f"# {marker}\n")
    return root


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_cluster_refuses_a_job_without_the_token(token_cluster, tmp_path):
    address, token_path = token_cluster
    body = b'{"entrypoint": "echo pwned"}'
    assert _http("POST", f"{address}/api/jobs/", None, body) == 401
    assert _http("POST", f"{address}/api/jobs/", "not-the-token", body) == 403
    # Through submit_job with no token anywhere (an empty HOME): refused by the cluster, named clearly.
    root = _job_dir(tmp_path, "never runs")
    with pytest.raises(InputError) as caught:
        submit_job(root / "jobs" / "tiny.yaml", address, root, entrypoint="echo pwned",
                   environ={"HOME": str(tmp_path / "empty-home")})  # fmt: skip
    assert caught.value.field == "RAY_AUTH_TOKEN"
    assert "requires a Ray token" in caught.value.message
    assert _http("GET", f"{address}/api/jobs/", token_path.read_text()) == 200


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_submit_job_with_the_token_runs_to_completion(token_cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, token_path = token_cluster
    token = token_path.read_text()
    marker = f"marker-{secrets.token_hex(4)}"
    root = _job_dir(tmp_path, marker)
    (root / ".venv").mkdir()
    (root / ".venv" / "big").write_bytes(b"x" * 1024)
    (root / "shipped_module.py").write_text(f"MARK = 'importable-{marker}'\n")
    # A small entrypoint that proves the job runs in the shipped working directory, without the excludes,
    # and that the shipped code is importable from anywhere (as the `peft-search` console script needs).
    script = "import pathlib; print(pathlib.Path('jobs/tiny.yaml').read_text().strip(), pathlib.Path('.venv').exists())"
    probe = "import shipped_module; print(shipped_module.MARK)"
    entrypoint = f"{shlex.join([sys.executable, '-c', script])} && cd / && {shlex.join([sys.executable, '-c', probe])}"

    job = submit_job(root / "jobs" / "tiny.yaml", address, root, entrypoint=entrypoint,
                     environ={"RAY_AUTH_TOKEN_PATH": str(token_path)})  # fmt: skip

    assert job.dashboard_url == f"{address}/#/jobs/{job.job_id}"
    assert job.follow_command.startswith("RAY_AUTH_MODE=token ray job logs")
    assert token not in job.follow_command
    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(job.job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job still {status} after {JOB_TIMEOUT_S} s"
        time.sleep(1)
    logs = client.get_job_logs(job.job_id)
    assert status == JobStatus.SUCCEEDED, logs
    assert f"# {marker} False" in logs
    assert f"importable-{marker}" in logs
    info = client.get_job_info(job.job_id)
    assert info.metadata["peft_search_spec"] == "jobs/tiny.yaml"
    assert token not in repr(info)  # the token is never part of what the cluster stores about a job


def test_non_loopback_http_without_token_is_refused(tmp_path):
    with pytest.raises(InputError) as caught:
        check_address("http://10.0.0.5:8265", token=None)
    assert caught.value.field == "--address"
    assert "without a Ray token" in caught.value.message
    # And submit_job refuses before any network traffic (nothing listens on that address).
    root = _job_dir(tmp_path, "x")
    with pytest.raises(InputError, match="without a Ray token"):
        submit_job(root / "jobs" / "tiny.yaml", "http://ray-head.example:8265", root, environ={"HOME": str(tmp_path)})
    for loopback in ("http://127.0.0.1:8265", "http://localhost:8265/", "http://[::1]:8265"):
        assert check_address(loopback, token=None) == loopback.rstrip("/")
    with pytest.warns(UserWarning, match="unencrypted"):
        assert check_address("http://10.0.0.5:8265", token="t") == "http://10.0.0.5:8265"
    for bad in ("ray://10.0.0.5:10001", "10.0.0.5:8265", "http://"):
        with pytest.raises(InputError, match="dashboard's HTTP address"):
            check_address(bad, token="t")


def test_find_token_follows_rays_precedence(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    assert find_token({"HOME": str(home)}) is None
    (home / ".ray" / "auth_token").write_text("from-default\n")
    assert find_token({"HOME": str(home)}) == "from-default"
    path = tmp_path / "tok"
    path.write_text("from-path")
    assert find_token({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(path)}) == "from-path"
    assert find_token({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(path), "RAY_AUTH_TOKEN": "from-env"}) == "from-env"
    with pytest.raises(InputError) as caught:
        find_token({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    assert caught.value.field == "RAY_AUTH_TOKEN_PATH"
    assert "from-" not in str(caught.value)


def test_spec_and_storage_are_checked_before_submission(tmp_path):
    root = _job_dir(tmp_path, "x")
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("x: 1\n")
    env = {"HOME": str(tmp_path)}
    with pytest.raises(InputError, match="inside the working directory"):
        submit_job(outside, "http://127.0.0.1:1", root, environ=env)
    with pytest.raises(InputError, match="no such job spec"):
        submit_job(root / "jobs" / "missing.yaml", "http://127.0.0.1:1", root, environ=env)
    with pytest.raises(InputError) as caught:
        submit_job(root / "jobs" / "tiny.yaml", "http://127.0.0.1:1", root, storage="runs", environ=env)
    assert caught.value.field == "--storage"
    assert default_entrypoint("jobs/glue-t5-base.yaml", "s3://bucket/peft search") == (
        "peft-search run jobs/glue-t5-base.yaml --address auto --storage 's3://bucket/peft search'"
    )
    assert default_entrypoint("jobs/quickstart.yaml") == "peft-search run jobs/quickstart.yaml --address auto"


REPO = Path(__file__).resolve().parents[1]
CLUSTER_CHECK_TIMEOUT_S = 600  # 4 trials of 8 steps on the worker, two at a time, and Ray's start-up


@pytest.mark.distributed
@pytest.mark.timeout(CLUSTER_CHECK_TIMEOUT_S + 120)
def test_submit_runs_a_search_on_the_token_clusters_worker_to_completion(token_cluster, tmp_path):
    """`peft-search submit jobs/cluster-check.yaml` against a head and a worker started with `ray start`
    and token authentication: the real search runs on the cluster (`peft-search run ... --address
    auto`), its trials on the worker node (the head has no CPUs), and finishes; its results read back."""
    import json

    import pyarrow.parquet as pq
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, token_path = token_cluster
    token = token_path.read_text()
    storage = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "peft_search.cli", "submit", "jobs/cluster-check.yaml", "--address", address,
         "--storage", str(storage)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "RAY_AUTH_TOKEN_PATH": str(token_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split("submitted job ", 1)[1].split()[0]
    assert f"{address}/#/jobs/{job_id}" in result.stdout and "ray job logs" in result.stdout
    assert token not in result.stdout + result.stderr

    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + CLUSTER_CHECK_TIMEOUT_S
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job still {status} after {CLUSTER_CHECK_TIMEOUT_S} s"
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "discovered design" in logs
    (run,) = storage.iterdir()
    assert json.loads((run / "state.json").read_text())["status"] == "finished"
    results = pq.read_table(run / "results.parquet").to_pylist()
    assert len(results) == 4 and all(r["status"] == "finished" for r in results)
    (worker,) = [node["node_id"] for node in _alive_nodes(address, token) if not node["is_head_node"]]
    assert {r["node_id"] for r in results} == {worker}
