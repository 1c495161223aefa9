"""`peft-search status` from a run's files: collapsed trials are counted per stage, with a warning
above 20% that says what to change (on a copy of a real run, tests/data/runs-v0.1/finished)."""

import json
import shutil
from pathlib import Path

from peft_search.search.status import COLLAPSE_WARNING, collapse_warning, run_status

FINISHED = Path(__file__).parent / "data" / "runs-v0.1" / "finished"


def mark_collapsed(run: Path, stage: int, how_many: int) -> None:
    for path in sorted(run.glob(f"stages/{stage}/trials/*.json"))[:how_many]:
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "collapsed": True}))


def test_collapsed_trials_are_counted_and_warned_about_per_stage(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FINISHED, run)
    mark_collapsed(run, 1, 2)  # 2 of stage 1's 4 trials
    status = run_status(run)
    stages = {s["stage"]: s for s in status["stages"]}
    assert (stages[0]["collapsed"], stages[1]["collapsed"]) == (0, 2)
    assert stages[0]["collapse_warning"] is None
    assert "2 of 4 trials (50%) collapsed" in stages[1]["collapse_warning"]
    assert "warning: stage 1 (strategy.G1)" in status["text"] and "train longer" in status["text"]


def test_the_warning_starts_above_one_in_five():
    assert COLLAPSE_WARNING == 0.2
    assert collapse_warning(2, 10) is None and collapse_warning(3, 10) is not None and collapse_warning(0, 0) is None
