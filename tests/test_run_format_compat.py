"""Run directories written by peft-search 0.1 (before the search package was split by concern and
trials ran through one path) still resume and report.

tests/data/runs-v0.1/ holds two real runs made by the 0.1 code (the tiny job of
tests/tiny_search_run.py, MiniLM on the bundled tweets task), without their Tune experiments:
- `partial`: killed with SIGKILL in stage 1, after stage 0 decided and 2 of stage 1's 4 trials
  finished (its state still says running);
- `finished`: a finished run with a final evaluation (the kept weights file is left out, to keep
  the repository small).
"""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import needs_minilm
from drivers import cli

FIXTURES = Path(__file__).parent / "data" / "runs-v0.1"


def records(run: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in run.glob("stages/*/trials/*.json")}


@needs_minilm
@pytest.mark.timeout(600)
def test_a_run_killed_by_the_old_version_resumes_without_retraining(tmp_path):
    run = tmp_path / "partial"
    shutil.copytree(FIXTURES / "partial", run)
    before = records(run)
    assert len(before) == 6  # 4 of stage 0, 2 of stage 1

    resumed = cli("resume", str(run))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    after = records(run)
    planned = set()
    for plan in run.glob("stages/*/plan.parquet"):
        planned |= set(pq.read_table(plan).column("trial_id").to_pylist())
    assert set(after) == planned  # every planned trial has exactly one record
    for trial_id, record in before.items():
        assert after[trial_id] == record  # nothing finished was trained again
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "finished"
    # Its `decided` stages read as their outcome (decided before racing, with no guarantee: undecided).
    assert [s["status"] for s in state["stages"]] == ["undecided", "undecided"]
    assert (run / "report" / "index.html").is_file()


def test_a_finished_old_run_reports_and_shows_its_status(tmp_path):
    run = tmp_path / "finished"
    shutil.copytree(FIXTURES / "finished", run)
    status = cli("status", str(run), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "finished"
    report = cli("report", str(run))
    assert report.returncode == 0, report.stderr[-3000:]
    page = (run / "report" / "index.html").read_text()
    assert "Final evaluation" in page and "bitfit" in page


def test_a_finished_old_run_exports_its_discovered_design(tmp_path):
    run = tmp_path / "finished"
    shutil.copytree(FIXTURES / "finished", run)
    result = cli("export", str(run), "--out", str(tmp_path / "export"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "export" / "export.json").read_text())
    state = json.loads((run / "state.json").read_text())
    assert summary["design_id"] == state["discovered"]["design_id"]
    # Its kept weights are left out of the fixture, so export trains the design (0.1's final fidelity).
    assert summary["tasks"]["tweets"]["weights_from"] == "trained by export"
    assert (tmp_path / "export" / "tweets" / "peft.safetensors").is_file()
