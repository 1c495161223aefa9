"""Running `peft-search` as a user does, in a subprocess: `write_job` writes a tiny real job (MiniLM
on the bundled tweets, 3-step trials) with changes, `cli` waits for a command, and `kill_9_when`
starts a search's driver and kills it (and the Ray it started) with SIGKILL once a condition holds,
the way a lost terminal or a dead driver pod ends a search."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

TINY_JOB = {
    "name": "tiny",
    "backbone": "minilm",
    "tasks": ["tweets"],
    "data": {"source": "bundled"},
    "budget_fraction": 0.005,
    "stages": [
        {"component": "grouping", "candidates": ["uniform", "spindle"]},
        {"component": "strategy.G1", "candidates": ["adapter", "lora"]},
    ],
    "designs_per_choice": 2,
    "fidelity": {"max_steps": 3, "max_train_examples": 64, "max_eval_examples": 32},
    "hyperparameters": {"batch_size": 8, "max_length": 32},
    "resources": {"cpus": 1},
    "max_concurrent_trials": 2,  # two 1-CPU trials at a time: most of a tiny trial is start-up, one thread
    "retries": 0,
}


def write_job(directory: Path, filename: str = "tiny.yaml", **changes) -> Path:
    """TINY_JOB with `changes` (top-level keys replaced) as `directory/filename`."""
    path = directory / filename
    path.write_text(yaml.safe_dump({**TINY_JOB, **changes}, sort_keys=False))
    return path


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peft_search.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def kill_9_when(args: list[str], condition: Callable[[], bool], env: dict | None = None, timeout: float = 400) -> None:
    """Run `peft-search ARGS` until `condition()` holds, then SIGKILL it and its process group (the
    local Ray it started). Fails when the run ends first or the condition never holds."""
    driver = subprocess.Popen([sys.executable, "-m", "peft_search.cli", *args], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not condition():
            assert driver.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, f"the condition to kill the run did not hold within {timeout} s"
            time.sleep(0.5)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
