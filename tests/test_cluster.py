"""The search on a real multi-node Ray cluster (issue 12): trials spread over the worker nodes, a
stage survives losing a node, a run whose driver was killed resumes from its records, and two
searches started at once finish apart, both listed by the dashboard (issue 27).

One cluster serves the module (`ray.cluster_utils.Cluster`, Ray's own multi-node test utility: every
node a real raylet with its own processes, all on this machine): a head with no CPUs, so no trial
ever runs there, and two workers with one CPU each, told apart by a custom resource (`node_a`,
`node_b`). Drivers are real `peft-search run/resume --address` subprocesses that connect to it, as
on a cluster; the trials are real MiniLM trials on the bundled tweets task (4 steps each).

The test that changes the cluster (the lost node) runs last; the `cluster` fixture brings a
removed worker back for any test after it. The cluster is kept off the machine's "current cluster"
file (/tmp/ray/ray_current_cluster, which `Cluster` would write): while it runs, a plain
`ray.init()` elsewhere on the machine must not find and join it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from peft_search.search.stage.decide import OUTCOMES

import drivers
from ray_clusters import local_ray_cluster
from tiny_search_run import needs_minilm_and_tweets

pytestmark = [needs_minilm_and_tweets, pytest.mark.distributed, pytest.mark.timeout(480)]

WORKERS = ("node_a", "node_b")  # each worker node's custom resource, and its name here
DRIVER_TIMEOUT_S = 300

CLUSTER_JOB = {  # over drivers.TINY_JOB: two trials at once (one per worker), retried on another node
    "name": "cluster",
    "racing": None,
    "fidelity": {"max_steps": 4, "max_train_examples": 64, "max_eval_examples": 32},
    "max_concurrent_trials": 2,
    "retries": 2,
}


# ---- the cluster --------------------------------------------------------------------------------------


class LocalCluster:
    """The module's cluster: `cluster.address` for drivers, the worker nodes by name, which Ray node
    id plays which role (`roles`, from `ray.nodes()`), and its dashboard's address."""

    def __init__(self, cluster, temp_dir: str, dashboard_url: str):
        self.cluster, self.temp_dir, self.dashboard_url = cluster, temp_dir, dashboard_url
        self.workers = {}  # name -> ray._private.node.Node

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self, name: str) -> None:
        self.workers[name] = self.cluster.add_node(num_cpus=1, resources={name: 1})

    def ensure_workers(self) -> None:
        """Both worker nodes alive (a test that removed one leaves a fresh one behind)."""
        for name in WORKERS:
            if name not in self.workers:
                self.add_worker(name)
        self.cluster.wait_for_nodes()

    def remove_worker(self, name: str) -> None:
        self.cluster.remove_node(self.workers.pop(name))

    def roles(self) -> dict[str, str]:
        """Live node id -> 'head' or the worker's name."""
        import ray

        roles = {}
        for node in ray.nodes():
            if not node["Alive"]:
                continue
            resources = node["Resources"]
            if "node:__internal_head__" in resources:
                roles[node["NodeID"]] = "head"
            for name in WORKERS:
                if name in resources:
                    roles[node["NodeID"]] = name
        return roles

    def node_id(self, role: str) -> str:
        (node_id,) = [i for i, r in self.roles().items() if r == role]
        return node_id


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    # The dashboard on a port of its own: the two-searches test reads its job list.
    dashboard_port = free_port()
    with local_ray_cluster("rc-", include_dashboard=True, dashboard_host="127.0.0.1",
                           dashboard_port=dashboard_port) as (cluster, temp_dir):
        local = LocalCluster(cluster, temp_dir, f"http://127.0.0.1:{dashboard_port}")
        local.ensure_workers()
        if ray.is_initialized():  # an in-process run of an earlier test module left its Ray behind
            ray.shutdown()
        ray.init(address=cluster.address, log_to_driver=False)  # for ray.nodes(); it joins the head
        assert sorted(local.roles().values()) == ["head", *WORKERS]
        yield local


@pytest.fixture
def cluster(ray_cluster) -> LocalCluster:
    ray_cluster.ensure_workers()
    return ray_cluster


# ---- drivers, runs, records ---------------------------------------------------------------------------


def write_job(directory: Path, **changes) -> Path:
    return drivers.write_job(directory, "job.yaml", **{**CLUSTER_JOB, "storage": str(directory / "runs"), **changes})


def grouping(*candidates: str) -> list[dict]:
    return [{"component": "grouping", "candidates": list(candidates)}]


class Driver:
    """`peft-search ARGS` in a process group of its own (a kill takes all it started), its output in a log."""

    def __init__(self, log: Path, *args: str):
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "peft_search.cli", *args], stdout=out, stderr=subprocess.STDOUT, text=True,
                start_new_session=True, env={**os.environ, "RAY_DEDUP_LOGS": "0"},
            )

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.log.name} (exit {self.process.poll()}) ---\n" + self.log.read_text(errors="replace")[-chars:]

    def wait(self, timeout: float = DRIVER_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the driver did not end within {timeout} s\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL to the driver's whole process group."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "peft_search.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def only_run(storage: Path) -> Path:
    runs = [p for p in storage.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def trials_dir(run: Path, stage: int = 0) -> Path:
    return run / "stages" / str(stage) / "trials"


def planned(run: Path, stage: int = 0) -> list[str]:
    return pq.read_table(run / "stages" / str(stage) / "plan.parquet").column("trial_id").to_pylist()


def record_texts(run: Path, stage: int = 0) -> dict[str, str]:
    """trial id -> its record file's exact text."""
    return {p.stem: p.read_text() for p in trials_dir(run, stage).glob("*.json")}


def markers(run: Path, stage: int = 0) -> dict[str, dict]:
    """Trials started and not yet recorded: trial id -> its `.started` marker."""
    found = {}
    for path in trials_dir(run, stage).glob("*.started"):
        try:
            found[path.stem] = json.loads(path.read_text())
        except OSError:  # its record was written and the marker removed meanwhile
            continue
    return {k: v for k, v in found.items() if not (trials_dir(run, stage) / f"{k}.json").exists()}


def state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


def wait_for(condition, driver: Driver, what: str, timeout: float = 300, poll: float = 0.25):
    """Poll `condition()` until it returns something truthy; fail (with the driver's log) if the
    driver ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if driver.process.poll() is not None:
            pytest.fail(f"the driver ended before {what}\n{driver.tail()}")
        time.sleep(poll)
    driver.kill()
    pytest.fail(f"timed out waiting for {what}\n{driver.tail()}")


def check_finished_run(run: Path, expected: set[str] | None, log: str) -> dict[str, dict]:
    """A finished run whose one stage decided, with exactly one record per trial in `expected`
    (every planned trial when None), the same rows in results.parquet, and `peft-search status`
    saying so; returns the records."""
    records = {p.stem: json.loads(p.read_text()) for p in trials_dir(run).glob("*.json")}
    expected = set(planned(run)) if expected is None else expected
    assert set(records) == expected, f"records {sorted(records)} != expected {sorted(expected)}\n{log}"
    assert all(r["trial_id"] == trial_id for trial_id, r in records.items())
    results = pq.read_table(run / "results.parquet").column("trial_id").to_pylist()
    assert sorted(results) == sorted(records), "results.parquet should hold each record exactly once"
    finished = state(run)
    assert finished["status"] == "finished", f"{finished}\n{log}"
    assert finished["stages"][0]["status"] in OUTCOMES and finished["stages"][0]["winner"] is not None

    status = cli("status", str(run), "--json")
    assert status.returncode == 0, status.stderr[-3000:]
    summary = json.loads(status.stdout)
    assert summary["status"] == "finished" and summary["stages"][0]["status"] == finished["stages"][0]["status"]
    assert summary["trials_done"] == len(records) and summary["trials_running"] == 0, summary
    text = cli("status", str(run)).stdout
    assert text.splitlines()[0].endswith(": finished") and finished["stages"][0]["status"] in text, text
    return records


# ---- the tests ----------------------------------------------------------------------------------------


def kill_driver_then_resume(cluster, tmp_path: Path, job: Path, kill_when, what: str):
    """Run `job`, SIGKILL its driver's process group once `kill_when(run)` holds (checked only while
    the stage runs and has a record), then `peft-search resume --address` it to the end. Returns the
    run, the records that existed when the driver died (exact texts), and both drivers."""
    first = Driver(tmp_path / "run.log", "run", str(job), "--address", cluster.address)
    storage = tmp_path / "runs"

    def time_to_kill():
        runs = [p for p in storage.glob("*") if (p / "state.json").is_file()]
        if not runs or not record_texts(runs[0]) or state(runs[0])["stages"][0]["status"] != "running":
            return None
        return runs[0] if kill_when(runs[0]) else None

    try:
        run = wait_for(time_to_kill, first, what)
    finally:
        first.kill()
    before = record_texts(run)
    assert 1 <= len(before) < len(planned(run)), first.tail()
    interrupted = state(run)
    assert interrupted["status"] == "running" and interrupted["stages"][0]["status"] == "running"
    status = cli("status", str(run), "--json")
    assert status.returncode == 0, status.stderr[-3000:]
    assert json.loads(status.stdout)["trials_running"] <= 2  # two at a time: at most two cut off

    second = Driver(tmp_path / "resume.log", "resume", str(run), "--address", cluster.address)
    code = second.wait()
    logs = first.tail() + "\n" + second.tail()
    assert code == 0, logs
    after = record_texts(run)
    for trial_id, text in before.items():
        assert after.get(trial_id) == text, f"{trial_id} was trained again after the driver died\n{logs}"
    return run, before, first, second


def test_a_killed_driver_resumes_a_race_on_the_cluster_from_its_records(cluster, tmp_path):
    """The driver dies mid-race; the resumed driver, on the same cluster, trains no recorded trial
    again and finishes the race from the records alone: every choice ran blocks 0..k-1, none skipped,
    none twice, and the stage's verdict is the one the selection procedure gives on those records.
    Both drivers' trials ran on the two worker nodes, never on the head."""
    from peft_search.search.spec import load_run_spec
    from peft_search.search.stage.plan import plan_path, read_plan
    from peft_search.search.stage.racing import judged_records, race_state
    from peft_search.search.storage.paths import StoragePath
    from peft_search.search.storage.records import read_records
    from peft_search.search.storage.run_dir import SPEC_FILE

    candidates = ("uniform", "spindle", "bottleneck")
    job = write_job(tmp_path, stages=grouping(*candidates), designs_per_choice=3,
                    racing={"min_blocks": 2, "confidence": 0.95})
    run, before, first, second = kill_driver_then_resume(
        cluster, tmp_path, job, lambda run: True, "the race's first trial was recorded",
    )
    logs = first.tail() + "\n" + second.tail()

    records = {p.stem: json.loads(p.read_text()) for p in trials_dir(run).glob("*.json")}
    assert all(r["status"] == "finished" for r in records.values()), logs
    # Two trials at a time, one CPU per worker node: trials ran on both workers, never on the head.
    roles = cluster.roles()
    ran_on = {roles.get(r["node_id"], f"unknown node {r['node_id']}") for r in records.values()}
    assert ran_on == set(WORKERS), f"trials ran on {ran_on}\n{logs}"
    assert all(r["node"] for r in records.values())  # the host name, beside the node id
    rows = pq.read_table(run / "results.parquet").to_pylist()
    assert {row["node_id"] for row in rows} == {cluster.node_id(name) for name in WORKERS}

    # The verdict is the race replayed from the records: nothing the dead driver knew is missing.
    spec = load_run_spec(run / SPEC_FILE)
    run_dir = StoragePath.parse(run)
    replayed = race_state(read_plan(plan_path(run_dir, 0)), read_records(run_dir, 0), spec.racing, spec.tasks)
    decision = state(run)["stages"][0]["decision"]
    assert replayed.done and decision["outcome"] == replayed.outcome, (decision, replayed)
    assert decision["winner"] in candidates
    if replayed.kept is not None:  # selected, or a tie kept by `on_tie`; undecided keeps the best mean
        assert decision["winner"] == replayed.kept, (decision, replayed)
    assert decision["trials_run"] == len(records) and decision["trials_planned"] == len(planned(run)) == 9
    # The verdict rests on the blocks it judged (rows trained ahead of it are spent, not evidence).
    judged = judged_records(read_plan(plan_path(run_dir, 0)), replayed, list(records.values()))
    blocks = {c: sorted(r["block"] for r in judged if r["choice"] == c) for c in candidates}
    for choice in candidates:
        # With 3 blocks at most nothing is screened out (KN needs a first stage of 8): every choice
        # ran the race's blocks, none skipped, none twice.
        assert blocks[choice] == list(range(replayed.decided_at)), f"{choice}: blocks {blocks[choice]}\n{logs}"
    check_finished_run(run, set(records), logs)


def test_two_searches_on_one_cluster_at_once_both_finish_apart(cluster, tmp_path):
    """Two users submit the same job to one cluster and one storage at the same moment: each run gets
    its own directory, both finish, and neither run's records hold a trial of the other's plan."""
    job = write_job(tmp_path, stages=grouping("uniform", "spindle"), designs_per_choice=1)
    drivers_ = [Driver(tmp_path / f"run-{i}.log", "run", str(job), "--address", cluster.address) for i in range(2)]
    codes = [driver.wait() for driver in drivers_]
    logs = "\n".join(driver.tail() for driver in drivers_)
    assert codes == [0, 0], logs
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len(runs) == 2, f"{runs}\n{logs}"
    # The same job plans the same trials (their ids hash the rows); each run trained and recorded its
    # own, in its own directory, and decided on them.
    for run in runs:
        records = check_finished_run(run, None, logs)
        assert len(records) == 2 and all(r["status"] == "finished" for r in records.values()), logs
    # The dashboard's job list shows both searches, each as its own finished driver.
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(cluster.dashboard_url).list_jobs()
    searches = [j for j in jobs if j.type == "DRIVER" and str(job) in (j.entrypoint or "")]
    assert len(searches) == 2 and {j.status for j in searches} == {"SUCCEEDED"}, searches


def test_a_stage_survives_losing_a_worker_node_mid_trial(cluster, tmp_path):
    job = write_job(tmp_path, stages=grouping("increasing", "uniform", "spindle"))  # 6 trials
    driver = Driver(tmp_path / "run.log", "run", str(job), "--address", cluster.address)
    storage = tmp_path / "runs"
    node_b = cluster.node_id("node_b")

    seen = {}  # the markers there were when the first record appeared

    def fresh_trial_on_b():
        """The run, once a trial started on node_b after the first record appeared (so it has its
        whole training ahead of it, and is cut off for sure)."""
        runs = [p for p in storage.glob("*") if (p / "state.json").is_file()]
        if not runs or not record_texts(runs[0]):
            return None
        running = markers(runs[0])
        if "first" not in seen:
            seen["first"] = set(running)
        if any(m.get("node_id") == node_b and t not in seen["first"] for t, m in running.items()):
            return runs[0]
        # Markers without a node id (trial code before 0.3): two running at once, one on each node.
        return runs[0] if len(running) == 2 and not any("node_id" in m for m in running.values()) else None

    try:
        run = wait_for(fresh_trial_on_b, driver, "a trial started on node_b after one was recorded")
        before = record_texts(run)
        running = markers(run)
        cluster.remove_worker("node_b")  # SIGTERM, then SIGKILL, to every process of the node
        removed = set(record_texts(run))  # no process of node_b is left to write one after this
        code = driver.wait()
    finally:
        driver.kill()
    assert code == 0, driver.tail()

    records = check_finished_run(run, None, driver.tail())
    assert len(records) == 6 and before
    assert all(r["status"] == "finished" for r in records.values()), driver.tail()
    after = record_texts(run)
    for trial_id, text in before.items():
        assert after[trial_id] == text, f"{trial_id} was trained again after node_b was lost\n{driver.tail()}"
    node_a = cluster.node_id("node_a")
    later = set(records) - removed
    assert later, "every trial had finished before the node was removed: nothing was tested"
    assert {records[t]["node_id"] for t in later} == {node_a}, driver.tail()
    if any("node_id" in m for m in running.values()):
        # The trial cut off with node_b was retried (retries: 2) and finished on node_a.
        lost = {t for t, m in running.items() if m["node_id"] == node_b} - removed
        assert lost, f"no trial was running on node_b when it was removed: {running}"
        assert all(records[t]["node_id"] == node_a for t in lost), driver.tail()
    assert node_b not in cluster.roles()
