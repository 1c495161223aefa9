"""SIGINT and SIGTERM stop a search undecided; `resume` then reaches the decisions an uninterrupted
run reaches (issue 24; docs/design.md, "Interrupted runs").

Real runs of a tiny job (MiniLM on the bundled tweets, two stages of two choices, one block each),
in this process through the CLI's own entry point, so that the signal reaches the driver's handler
as Ctrl+C or `ray job stop` would; one local Ray serves the whole module.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from peft_search.search.stage.decide import OUTCOMES

from drivers import write_job
from tiny_search_run import needs_minilm_and_tweets

pytestmark = [needs_minilm_and_tweets, pytest.mark.timeout(900)]


@pytest.fixture(scope="module", autouse=True)
def one_ray_for_the_module():
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    # One trial at a time: a stage's second trial starts after its first is recorded, so a signal sent
    # on that record lands mid-stage (two trials side by side end together, and it could land after).
    return write_job(tmp_path_factory.mktemp("interrupt"), designs_per_choice=1, racing=None, max_concurrent_trials=1)


@pytest.fixture(scope="module")
def uninterrupted(job, tmp_path_factory):
    """The decisions of the job run from start to end, uninterrupted."""
    from peft_search.cli import main

    storage = tmp_path_factory.mktemp("uninterrupted")
    assert main(["run", str(job), "--storage", str(storage)]) == 0
    return decisions(state_of(only_run(storage)))


def only_run(storage: Path) -> Path:
    (run,) = [p for p in storage.iterdir() if p.is_dir()]
    return run


def state_of(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


def decisions(state: dict) -> list[dict | None]:
    return [stage.get("decision") for stage in state["stages"]]


def signal_when(condition, signum: int, timeout: float = 300) -> threading.Thread:
    """Send `signum` to this process once `condition()` holds (polled from a thread)."""
    def watch():
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signum)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def records(storage: Path, stage: int) -> list[Path]:
    return list(storage.glob(f"*/stages/{stage}/trials/*.json"))


def stage_status(storage: Path, stage: int) -> str | None:
    states = list(storage.glob("*/state.json"))
    return json.loads(states[0].read_text())["stages"][stage]["status"] if states else None


@pytest.mark.parametrize("signum, when, stage_statuses", [
    # Ctrl+C mid-stage: one trial of stage 0 recorded, the other running.
    (signal.SIGINT, lambda storage: len(records(storage, 0)) >= 1, [("interrupted", "pending")]),
    # SIGTERM (`ray job stop`, a preempted driver) between stages: stage 0 decided, no trial of stage 1
    # done (stage 1 may have started or not when the signal lands).
    (signal.SIGTERM, lambda storage: stage_status(storage, 0) in OUTCOMES, [(o, s) for o in OUTCOMES for s in ("interrupted", "pending")]),
], ids=["sigint-mid-stage", "sigterm-between-stages"])
def test_an_interrupted_run_decides_nothing_and_resumes_to_the_uninterrupted_decisions(
        job, uninterrupted, tmp_path, capsys, signum, when, stage_statuses):
    from peft_search.cli import main

    storage = tmp_path / "runs"
    watcher = signal_when(lambda: when(storage), signum)
    code = main(["run", str(job), "--storage", str(storage)])
    watcher.join()
    out, err = capsys.readouterr()
    run = only_run(storage)

    assert code == 128 + signum
    assert f"continue with: peft-search resume {run}" in err
    assert "search finished" not in out and "Tuner.restore" not in out + err
    state = state_of(run)
    assert state["status"] == "interrupted"
    assert tuple(stage["status"] for stage in state["stages"]) in stage_statuses
    decided = [stage["status"] in OUTCOMES for stage in state["stages"]]
    # A decided stage is decided as in the uninterrupted run; an undecided one has no decision at all.
    assert [d for d, done in zip(decisions(state), decided) if done] == [d for d, done in zip(uninterrupted, decided) if done]
    assert all(d is None for d, done in zip(decisions(state), decided) if not done)
    assert all(json.loads(path.read_text())["status"] == "finished" for path in run.glob("stages/*/trials/*.json"))
    assert main(["status", str(run)]) == 0
    assert f"interrupted (continue with: peft-search resume {run})" in capsys.readouterr().out

    assert main(["resume", str(run)]) == 0
    resumed = state_of(run)
    assert resumed["status"] == "finished"
    assert decisions(resumed) == uninterrupted
