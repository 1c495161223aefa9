"""Experiment tracking against the real thing (search/tracking.py): a real `mlflow server` (SQLite
backend store, local artifact root, a loopback port) started here, and W&B in offline mode.

One small real search (MiniLM on the bundled tweets, one stage of two choices, two blocks of 3-step
trials, packed two to a Tune trial) logs to both; MLflow's client reads back one run per trial with its parameters and metrics,
nested under the stage's run, which holds the decision; the W&B offline run files hold the same.
A server that is down at the start stops `run` with exit 2 naming `tracking.mlflow` before the run
directory exists; a server killed mid-stage costs a warning, not a trial.

The server is MLflow's full package, which pins pyarrow below the project's pin, so `make test`
installs it in a virtual environment of its own (.venv-mlflow/; MLFLOW_SERVER names another
`mlflow` executable); the search itself needs only the client (`pip install 'peft-search[mlflow]'`).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from drivers import TINY_JOB, cli
from tiny_search_run import needs_minilm_and_tweets

pytest.importorskip("mlflow", reason="the MLflow client is an optional extra: pip install 'peft-search[mlflow]'")
pytest.importorskip("wandb", reason="the W&B client is an optional extra: pip install 'peft-search[wandb]'")

REPO = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("MLFLOW_SERVER") or str(REPO / ".venv-mlflow" / "bin" / "mlflow")
needs_server = pytest.mark.skipif(not Path(SERVER).is_file(),
                                  reason=f"no MLflow server at {SERVER} (make test installs it in .venv-mlflow/)")

# One stage of two choices, two blocks; two rows to a Tune trial (`rows_per_trial`), so each tracked run
# is a row, whichever trial trained it.
JOB = {**TINY_JOB, "name": "tracked", "stages": TINY_JOB["stages"][:1], "rows_per_trial": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MLflowServer:
    """`mlflow server` on a loopback port, its store and artifacts under `root`."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.log = open(root / "server.log", "w")
        self.process = subprocess.Popen(
            [SERVER, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MLflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


def write_job(path: Path, **tracking) -> Path:
    path.write_text(yaml.safe_dump({**JOB, "tracking": tracking}))
    return path


@pytest.fixture(scope="module")
def tracked_run(server, tmp_path_factory):
    """The small search, logged to the server and to W&B offline at once."""
    root = tmp_path_factory.mktemp("tracked")
    job = write_job(root / "job.yaml", mlflow={"tracking_uri": server.uri, "experiment": "tracked-search"},
                    wandb={"project": "peft-search-test", "mode": "offline"})
    result = cli("run", str(job), "--storage", str(root / "runs"), env={**os.environ, "WANDB_DIR": str(root)}, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (root / "runs").iterdir()
    return run, root, result.stdout


def records(run: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in run.glob("stages/*/trials/*.json")}


@needs_minilm_and_tweets
@needs_server
@pytest.mark.timeout(600)
def test_every_trial_is_an_mlflow_run_under_its_stage_which_holds_the_decision(server, tracked_run):
    from mlflow.tracking import MlflowClient

    run, _, stdout = tracked_run
    assert f"tracking: MLflow experiment 'tracked-search': {server.uri}/#/experiments/" in stdout
    assert "View run" not in stdout  # one line says where, not two per run
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("tracked-search")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`peft_search.run` = '{run.name}'")
    stage = [r for r in runs if r.data.tags["peft_search.kind"] == "stage"]
    trials = {r.data.tags["peft_search.trial"]: r for r in runs if r.data.tags["peft_search.kind"] == "trial"}
    assert len(stage) == 1 and set(trials) == set(records(run))  # one run per trial, nothing else

    for trial_id, record in records(run).items():
        tracked = trials[trial_id]
        assert tracked.info.status == "FINISHED" and tracked.data.tags["mlflow.parentRunId"] == stage[0].info.run_id
        params = tracked.data.params
        for key in ("stage", "component", "choice", "block", "task", "seed"):
            assert params[key] == str(record[key]), key
        assert params["design.grouping"] == record["grouping"] and params["realised_params"] == str(record["realised_params"])
        assert json.loads(params["learning_rates_json"]) == json.loads(record["learning_rates_json"])
        assert tracked.data.metrics["final.score"] == pytest.approx(record["score"])
        history = client.get_metric_history(tracked.info.run_id, "eval_loss")  # per evaluation, as reported
        assert [m.value for m in history] == pytest.approx([json.loads(record["metrics_json"])["eval_loss"]])

    state = json.loads((run / "state.json").read_text())
    decision = state["stages"][0]["decision"]
    decided = stage[0].data
    assert decided.params["outcome"] == state["stages"][0]["status"] and decided.params["kept"] == decision["winner"]
    assert decided.params["blocks"] == str(decision["blocks"])
    for choice in decision["choices"]:
        assert decided.metrics[f"{choice['choice']}.mean"] == pytest.approx(choice["mean"])
        assert decided.metrics[f"{choice['choice']}.ci_low"] == pytest.approx(choice["ci_low"])
    artifacts = [a.path for a in client.list_artifacts(stage[0].info.run_id)]
    assert artifacts == ["decision.json"]


def wandb_records(path: Path):
    """The records of a W&B offline run file (`run-<id>.wandb`: a 7-byte header, then LevelDB-log
    framed protobuf records in 32 KiB blocks), parsed with W&B's own protobuf messages."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending = path.read_bytes(), 7, b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@needs_minilm_and_tweets
@needs_server
@pytest.mark.timeout(600)
def test_wandb_offline_holds_a_run_per_trial_and_one_for_the_stage(tracked_run):
    run, root, stdout = tracked_run
    assert f"W&B project 'peft-search-test', offline: runs under {root}/wandb" in stdout
    runs = {}
    for path in (root / "wandb").glob("offline-run-*/run-*.wandb"):
        config, exit_code = {}, None
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                name, group, job_type = record.run.display_name, record.run.run_group, record.run.job_type
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif kind == "config":
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "exit":
                exit_code = record.exit.exit_code
        assert group == run.name and exit_code == 0
        runs[name] = (job_type, config)
    trial_runs = {name: config for name, (kind, config) in runs.items() if kind == "trial"}
    assert set(trial_runs) == set(records(run))
    for trial_id, record in records(run).items():
        config = trial_runs[trial_id]
        assert (config["choice"], config["block"], config["task"]) == (record["choice"], record["block"], record["task"])
        assert config["realised_params"] == str(record["realised_params"])
    (stage,) = [config for kind, config in runs.values() if kind == "stage"]
    assert stage["outcome"] == json.loads((run / "state.json").read_text())["stages"][0]["status"]


@needs_server
def test_a_server_that_is_down_stops_the_run_before_anything_is_created(tmp_path, capsys):
    from peft_search.cli import main

    job = write_job(tmp_path / "job.yaml", mlflow={"tracking_uri": f"http://127.0.0.1:{free_port()}"})
    started = time.monotonic()
    assert main(["run", str(job), "--storage", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert "tracking.mlflow: the MLflow tracking server at http://127.0.0.1:" in error and "does not answer" in error
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert time.monotonic() - started < 60  # a few quick tries, not MLflow's default minutes of retries


@needs_minilm_and_tweets
@needs_server
@pytest.mark.timeout(600)
def test_a_server_killed_mid_stage_costs_a_warning_and_no_trial(server, tracked_run, tmp_path):
    # The module's server, killed here: this test runs last in the module (tracked_run is read before).
    job = write_job(tmp_path / "job.yaml", mlflow={"tracking_uri": server.uri})
    storage = tmp_path / "runs"
    driver = subprocess.Popen([sys.executable, "-m", "peft_search.cli", "run", str(job), "--storage", str(storage)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(storage.glob("*/stages/0/trials/*.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        server.stop()  # mid-stage: one trial recorded, the others to come
        out, err = driver.communicate(timeout=400)
    finally:
        driver.kill()
        server.stop()
    assert driver.returncode == 0, out[-3000:] + err[-3000:]
    assert err.count("warning: tracking.mlflow failed") == 1, err[-3000:]
    assert "every trial is still recorded in the run directory" in err
    (run,) = storage.iterdir()
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "finished" and state["stages"][0]["status"] in ("selected", "tie", "undecided")
    assert len(records(run)) == state["stages"][0]["decision"]["trials_run"] >= 2
