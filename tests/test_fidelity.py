"""`peft-search fidelity`, as a user runs it: a real pilot on the real local Ray (MiniLM on the bundled
tweets, 2- and 4-step trials), through the one Tune door; its summary, its records (with the rate
each trial trained at) and a rerun with `--resume` that trains nothing again."""

import json

from conftest import needs_minilm
from drivers import cli, write_job


@needs_minilm
def test_a_fidelity_pilot_trains_every_length_and_resumes_without_retraining(tmp_path):
    storage = tmp_path / "runs"
    job = write_job(tmp_path, storage=str(storage))
    result = cli("fidelity", str(job), "--steps", "2,4", "--designs", "3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "recommended: fidelity.max_steps:" in result.stdout and "fidelity pilot: 6/6 trials done" in result.stdout
    (pilot,) = storage.iterdir()
    summary = json.loads((pilot / "fidelity.json").read_text())
    assert summary["lengths"] == [2, 4] and summary["recommended_steps"] in (2, 4)
    records = [json.loads(p.read_text()) for p in pilot.glob("fidelity/steps-*/*.json")]
    assert len(records) == 6 and {r["status"] for r in records} == {"finished"}
    assert all(r["learning_rate"] == 5e-3 and json.loads(r["learning_rates_json"])["head"] == 5e-3 for r in records)
    before = {r["trial_id"]: r["finished_at"] for r in records}

    again = cli("fidelity", str(job), "--steps", "2,4", "--designs", "3", "--resume", str(pilot))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(6 already done)" in again.stdout
    after = {r["trial_id"]: r["finished_at"] for r in map(json.loads, (p.read_text() for p in pilot.glob("fidelity/steps-*/*.json")))}
    assert after == before  # nothing trained twice
