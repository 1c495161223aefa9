"""The HTML report on a real small run: it renders (in headless Chromium when installed), shows one EDF
plot per decided stage, its decisions table equals a recomputation from results.parquet, and bad
input is refused with exit status 2. Failed trials in the report: tests/test_search_run.py."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from html import escape
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from peft_search.cli import main
from peft_search.reporting import write_report
from peft_search.search.seeds import derive_seed
from peft_search.search.stage.decide import decide_stage, trial_scores
from peft_search.search.stage.plan import plan_path, read_plan
from peft_search.search.stage.racing import race_state
from peft_search.search.spec import load_spec
from peft_search.search.status import choice_cells, run_status
from report_page import Page, read_page
from tiny_search_run import needs_minilm_and_tweets, tiny_run

pytestmark = [needs_minilm_and_tweets, pytest.mark.slow]

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.getbasetemp())




def test_run_ends_with_a_report_of_every_decided_stage(run_dir):
    index = run_dir / "report" / "index.html"
    assert index.is_file()  # written by `peft-search run` itself
    state = json.loads((run_dir / "state.json").read_text())
    decided = [s["stage"] for s in state["stages"] if s["status"] in ("selected", "tie", "undecided")]
    assert decided == [0, 1]
    page = read_page(index)
    edf = [i for i in page.images if "edf" in i.get("class", "")]
    assert [i["stage"] for i in edf] == decided
    for image in page.images:
        src = image["src"]
        assert not src.startswith(("/", "http:", "https:", "file:")), src  # relative: the directory moves as a whole
        data = (index.parent / src).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, src
    text = " ".join(page.text)
    assert "Path S0" in text and "Compute" in text and "Final evaluation" in text
    # Self-contained: the page loads nothing from a network.
    assert "http://" not in index.read_text() and "https://" not in index.read_text()


def test_decisions_table_equals_a_recomputation_from_results_parquet(run_dir):
    page = read_page(write_report(run_dir, run_dir / "report-again"))
    spec = load_spec(run_dir / "spec.yaml")
    records = pq.read_table(run_dir / "results.parquet").to_pylist()
    state = json.loads((run_dir / "state.json").read_text())
    for stage in state["stages"]:
        index = stage["stage"]
        mine = [r for r in records if r["stage"] == index]
        # As the controller decides: the race replayed from the records, then the decision.
        plan = read_plan(plan_path(run_dir, index))
        race = race_state(plan, mine, spec.racing, spec.tasks, derive_seed(spec.seed, index))
        again = decide_stage(stage["component"], stage["choices"], trial_scores(mine), spec.tasks,
                             seed=derive_seed(spec.seed, index), race=race, trials_planned=plan.num_trials,
                             racing=spec.racing)
        table = page.decisions[index]
        assert list(table) == stage["choices"]
        for stats in again.choices:
            row = table[stats.choice]
            for field in ("mean", "median", "ci_low", "ci_high", "n_finished", "n_failed", "n_failed_trials"):
                shown = row[field]
                value = getattr(stats, field)
                assert (shown is None and value is None) or float(shown) == value, (index, stats.choice, field, shown, value)
        line = page.decision_lines[index]
        assert line["data-kept"] == again.winner and (line["data-runner-up"] or None) == again.runner_up
        # A raced stage shows its selection procedure's verdict, and no P(best).
        assert line["data-outcome"] == again.outcome in ("selected", "tie", "undecided")
        assert "data-win-probability" not in line and again.win_probability is None


def test_status_text_shows_the_same_decision_cells(run_dir):
    status = run_status(run_dir)
    state = json.loads((run_dir / "state.json").read_text())
    from peft_search.search.stage.decide import Decision

    for stage in state["stages"]:
        for stats in Decision.from_dict(stage["decision"]).choices:
            cells = choice_cells(stats)
            line = next(l for l in status["text"].splitlines() if l.strip().startswith(stats.choice + " ") and cells["ci"] in l)
            assert cells["mean"] in line and cells["median"] in line


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install -y chromium)")
    index = write_report(run_dir, tmp_path / "report")
    shot = tmp_path / "shot.png"
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = Page(dom.stdout)
    assert sum("edf" in i.get("class", "") for i in rendered.images) == 2
    assert set(rendered.decisions) == {0, 1}
    subprocess.run([chromium, *flags, "--window-size=1200,3000", f"--screenshot={shot}", index.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_report_of_a_run_still_going_shows_what_is_decided(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report", "tune", "final*"))
    state = json.loads((copy / "state.json").read_text())
    state["status"] = "running"
    stage = state["stages"][1]
    for key in ("decision", "winner", "finished", "failed", "wall_time_s", "decided_at"):
        stage.pop(key, None)
    stage["status"] = "running"
    (copy / "state.json").write_text(json.dumps(state))
    trials = sorted((copy / "stages" / "1" / "trials").glob("*.json"))
    for path in trials[2:]:
        path.unlink()  # two of its four trials have finished so far
    page = read_page(write_report(copy))
    assert [i["stage"] for i in page.images if "edf" in i.get("class", "")] == [0]
    assert set(page.decisions) == {0}
    assert "Not decided yet: 2 of 4 trials recorded (0 failed)." in " ".join(page.text)
    assert sum(1 for t in page.trials if t["data-trial"] in {p.stem for p in trials[:2]}) == 2


@pytest.mark.parametrize("outcome", ["selected", "tie", "undecided", None], ids=["selected", "tie", "undecided",
                                                                              "no-procedure"])
def test_every_surface_names_the_kept_choice_by_the_stage_outcome(run_dir, tmp_path, outcome):
    """The report's header, table, decision line and plot legend, status's text and the API say what
    status says; an undecided stage is never called decided, nor its best mean a winner."""
    from peft_search import api
    from peft_search.reporting.plots import legend_labels
    from peft_search.search.stage.decide import Decision, decision_outcome, kept_as

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report"))
    state = json.loads((copy / "state.json").read_text())
    stage = state["stages"][0]
    decision = Decision.from_dict(stage["decision"])
    tied = tuple(c.choice for c in decision.choices) if outcome == "tie" else ()
    decision = dataclasses.replace(decision, outcome=outcome, tied=tied)
    stage.update(decision=decision.to_dict(), status=decision_outcome(decision))
    (copy / "state.json").write_text(json.dumps(state))
    kept = {"selected": "selected", "tie": "tie (kept)"}.get(outcome, "kept: best mean, no claim")
    assert kept_as(decision) == kept

    index = write_report(copy)
    html = index.read_text()
    other = state["stages"][1]["status"]
    counts = {"selected": 0, "tie": 0, "undecided": 0}
    for status in (decision_outcome(decision), other):
        counts[status] += 1
    header = f"2 stages: {counts['selected']} selected, {counts['tie']} tie{'s' if counts['tie'] != 1 else ''}, {counts['undecided']} undecided"
    assert header in html
    section = html[html.index('<section class="stage" data-stage="0"'):]
    section = section[:section.index("</section>")]
    assert f'data-status="{decision_outcome(decision)}"' in section
    row = section[section.index('<tr class="kept"'):]
    assert row.startswith(f'<tr class="kept" data-choice="{escape(decision.winner)}"><td>{escape(decision.winner)} '
                          f"<small>({escape(kept)})</small>")
    assert section.count('class="kept"') == 1
    legend = legend_labels(decision)
    assert sum(label.endswith(f" - {kept}") for label in legend) == 1
    if decision_outcome(decision) == "undecided":
        for text in (section, " ".join(legend)):
            assert not re.search(r"\bdecided\b|winner", text, re.IGNORECASE), text

    status = run_status(copy)
    assert header in status["text"]
    result = api.status(copy)
    assert result.stages[0].outcome == decision_outcome(decision) and result.stages[0].kept_as == kept


def test_bad_input_is_refused_with_exit_status_2(run_dir, tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a peft-search run directory" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()

    from peft_search.search.controller import Controller

    empty = tmp_path / "empty-run"
    Controller.create(load_spec(run_dir / "spec.yaml"), empty)  # a run that has not trained anything
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "has no finished trial yet" in err and "nothing to report" in err
    assert not (empty / "report").exists()
