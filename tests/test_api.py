"""The Python API (peft_search/api.py) end to end, in this process as a notebook would use it: a
small real search from a mapping (MiniLM on the bundled tweets, one stage of two choices, two
blocks of 3-step trials), its status as objects, report, export and load_peft; progress to the
`peft_search` logger and not to stdout; bad input raises InputError naming the field before
anything is created. One local Ray serves the module."""

from __future__ import annotations

import json
import logging

import pytest

import peft_search
from drivers import TINY_JOB
from tiny_search_run import needs_minilm_and_tweets

JOB = {**TINY_JOB, "name": "api", "stages": TINY_JOB["stages"][:1]}  # one stage of two choices, two blocks


@pytest.fixture(scope="module", autouse=True)
def one_ray_for_the_module():
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    storage = tmp_path_factory.mktemp("api")
    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Collect(level=logging.INFO)
    logger = logging.getLogger("peft_search")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = peft_search.run(JOB, storage=str(storage))
    finally:
        logger.removeHandler(handler)
    return result, lines


@needs_minilm_and_tweets
@pytest.mark.timeout(600)
def test_a_search_run_from_python_returns_its_stages_and_design(api_run, capsys):
    result, lines = api_run
    assert result.status == "finished" and len(result.stages) == 1
    stage = result.stage("grouping")
    assert stage.decided and stage.outcome in ("selected", "tie", "undecided") and stage.kept in ("uniform", "spindle")
    assert [c.choice for c in stage.choices] == ["uniform", "spindle"]
    assert all(c.designs == 2 and c.ci_low <= c.mean <= c.ci_high for c in stage.choices)
    assert stage.trials_done == 4 and stage.time_left_s == 0 and result.time_left_s == 0
    assert isinstance(result.discovered, peft_search.Design) and result.discovered.grouping == stage.kept
    # Everything the CLI prints went to the logger: the run directory, progress, the outcome.
    assert any(line.startswith("run directory: ") for line in lines)
    assert any(line.startswith(f"stage 1/1 (grouping) {stage.outcome}: ") for line in lines)
    assert any("trials done" in line for line in lines)
    state = json.loads(open(f"{result.run_dir}/state.json").read())
    assert state["stages"][0]["status"] == stage.outcome and state["stages"][0]["winner"] == stage.kept
    assert str(peft_search.status(result)) == result.text and result.run_dir in result.text


@needs_minilm_and_tweets
@pytest.mark.timeout(600)
def test_report_export_and_load_peft_from_python(api_run, tmp_path):
    import torch

    result, _ = api_run
    assert peft_search.report(result).name == "index.html"
    out = peft_search.export(result, tmp_path / "method")
    assert peft_search.Design.from_json((out / "design.json").read_text()) == result.discovered
    model = peft_search.load_backbone("minilm", num_labels=3)
    peft_search.load_peft(model, out / "tweets")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[101, 2023, 102]])).logits
    assert logits.shape == (1, 3)


def test_bad_input_raises_input_error_naming_the_field_and_creates_nothing(tmp_path):
    with pytest.raises(peft_search.InputError) as error:
        peft_search.run({**JOB, "designs_per_choice": 0}, storage=str(tmp_path / "runs"))
    assert "designs_per_choice" in str(error.value)
    with pytest.raises(peft_search.InputError) as error:
        peft_search.run(JOB, storage=str(tmp_path / "runs"), progress="loud")
    assert error.value.field == "progress"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_progress_lines_become_tqdm_bars_and_stdout_stays_clean(capsys):
    from peft_search.api import _progress
    from peft_search.search.progress import RecordProgress

    records = [{"status": "finished", "score": 0.5, "choice": "uniform"}, {"status": "failed", "score": None}]
    with _progress("tqdm"):
        RecordProgress("stage 1/1 (grouping)", lambda: records, "at most 4").report()
    captured = capsys.readouterr()
    assert captured.out == ""  # the progress line went to the bar (and the logger), not to stdout
    assert "stage 1/1 (grouping)" in captured.err and "2/at most 4 trials done, 1 failed" in captured.err
