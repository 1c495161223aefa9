"""A search whose run storage is an S3 bucket (moto's real S3 server on 127.0.0.1), run as a user
runs it: `peft-search run --storage s3://...` killed with SIGKILL mid-stage, `resume` finishing it
(the final evaluation included), then `status`, `report` and `export` reading everything back from
the bucket. Credentials and the endpoint reach every process only through the standard AWS
environment variables.

It is also the suite's check that a SIGKILLed `run` resumes running each trial exactly once: the
controller keeps its records through one `StoragePath` API for a local directory and a bucket alike,
and tests/test_joint_search.py and tests/test_cluster.py kill and resume runs on local storage."""

from __future__ import annotations

import json
import os

import pytest
from object_store import aws_environment, create_bucket, environment, moto_server

from conftest import needs_minilm
from drivers import cli, kill_9_when, write_job
from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.records import read_parquet

pytestmark = [needs_minilm, pytest.mark.distributed, pytest.mark.timeout(900)]

S3_JOB = {
    "name": "s3",
    "stages": [{"component": "grouping", "candidates": ["uniform", "spindle", "bottleneck"]}],
    "racing": None,
    "final": {
        "contenders": ["discovered"],
        "seeds": [0],
        "fidelity": {"max_steps": 3, "max_train_examples": 64, "max_eval_examples": 32},
        "tuning": {"trials": 2, "holdout_fraction": 0.25},
    },
}


def objects(prefix: StoragePath, pattern: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in prefix.glob(pattern)}


def test_a_search_on_s3_survives_kill_9_and_every_command_reads_it_back(tmp_path):
    job = write_job(tmp_path, "s3.yaml", **S3_JOB)
    with moto_server(tmp_path) as endpoint:
        create_bucket(endpoint, "searches")
        env = {**os.environ, **aws_environment(endpoint)}
        with environment(aws_environment(endpoint)):  # this process reads the bucket as the CLI does
            storage = StoragePath.parse("s3://searches/team/runs")
            kill_9_when(["run", str(job), "--storage", str(storage)],
                        lambda: len(storage.glob("*/stages/0/trials/*.json")) >= 2, env=env)
            (run,) = storage.iterdir()
            before = objects(run, "stages/0/trials/*.json")
            planned = set(read_parquet(run / "stages" / "0" / "plan.parquet").column("trial_id").to_pylist())
            assert 2 <= len(before) < len(planned) == 6
            assert json.loads((run / "state.json").read_text())["status"] == "running"
            interrupted = cli("status", str(run), "--json", env=env)
            assert interrupted.returncode == 0, interrupted.stderr
            assert json.loads(interrupted.stdout)["trials_running"] <= 2  # two at a time: at most two were cut off

            resumed = cli("resume", str(run), env=env)
            assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
            after = objects(run, "stages/0/trials/*.json")
            assert all(after[name] == data for name, data in before.items()), "a finished trial was trained again"
            assert {json.loads(data)["trial_id"] for data in after.values()} == planned
            assert f"report:  {run}/report/index.html" in resumed.stdout

            status = cli("status", str(run), "--json", env=env)
            assert status.returncode == 0, status.stderr
            summary = json.loads(status.stdout)
            assert summary["status"] == "finished" and summary["trials_done"] == 6 and summary["trials_running"] == 0
            results = read_parquet(run / "results.parquet").to_pylist()
            assert sorted(r["trial_id"] for r in results) == sorted(planned)
            assert all(r["status"] == "finished" for r in results)
            final = read_parquet(run / "final.parquet").to_pylist()
            assert {(r["phase"], r["status"]) for r in final} == {("tune", "finished"), ("final", "finished")}
            assert (run / "final" / "weights" / "tweets" / "peft.safetensors").is_file()
            assert "<html" in (run / "report" / "index.html").read_text()

            report = cli("report", str(run), "--out", "s3://searches/team/reports/s3", env=env)
            assert report.returncode == 0 and "s3://searches/team/reports/s3/index.html" in report.stdout, report.stderr
            exported = cli("export", str(run), "--out", str(tmp_path / "export"), env=env)
            assert exported.returncode == 0, exported.stderr[-3000:]
            card = json.loads((tmp_path / "export" / "export.json").read_text())
            assert card["run"] == str(run) and card["tasks"]["tweets"]["weights_from"] == "the final evaluation"
            assert (tmp_path / "export" / "tweets" / "peft.safetensors").read_bytes() == (
                run / "final" / "weights" / "tweets" / "peft.safetensors").read_bytes()
            secret = env["AWS_SECRET_ACCESS_KEY"]
            assert not any(secret in out for out in (resumed.stdout, resumed.stderr, status.stdout, report.stdout))
            assert not any(secret in path.read_text() for path in run.glob("*.json") + run.glob("*.yaml"))
