"""Racing a stage with a fake trainer: the real planner, `race_state` and the Tune `StageSearcher`
(its suggest / on_trial_complete, as Tune calls them), with scores that a function of the design
gives instead of training. Resume is a new searcher over the same records. The selection
procedure itself is tested on synthetic data in test_search_selection.py."""

import json
import random

import pytest

from conftest import build
from peft_search.peft import profile_backbone
from peft_search.search.spec import SearchSpec
from peft_search.search.stage.experiment import StageSearcher
from peft_search.search.stage.plan import plan_stage
from peft_search.search.stage.racing import judged_records, race_state
from peft_search.search.storage.records import read_records
from peft_search.search.trials import TrialRow, trial_record
from ray.tune.search import Searcher

TRUE_MEANS = {"increasing": 0.60, "uniform": 0.725, "decreasing": 0.62, "spindle": 0.74, "bottleneck": 0.55}


@pytest.fixture(scope="module")
def profile():
    return profile_backbone(build("bert"))


def make_spec(**changes) -> SearchSpec:
    base = {
        "backbone": "minilm",
        "tasks": ["sst2"],
        "budget_fraction": 0.02,
        "designs_per_choice": 12,
        "fidelity": {"max_steps": 20},
        "stages": ["grouping"],
        "racing": {"min_blocks": 8, "confidence": 0.95, "delta": 0.05},  # a first stage KN screens after
    }
    return SearchSpec.from_dict({**base, **changes})


def fake_score(row: TrialRow) -> float:
    """The choice's true mean, a block effect shared by the block's designs, and a little noise."""
    fields = row.fields
    block_effect = random.Random(fields["block"]).gauss(0, 0.05)
    noise = random.Random(row.trial_id).gauss(0, 0.02)
    return TRUE_MEANS[fields["choice"]] + block_effect + noise


def train(run_dir, config: dict) -> None:
    for row in config["rows"]:
        result = {"status": "finished", "score": fake_score(row)}
        path = row.record_path(run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(trial_record(row, result, "t0", "t1")))


def drive(searcher: StageSearcher, run_dir, concurrency: int = 2, stop_after: int | None = None) -> int:
    """Tune's loop in miniature: keep `concurrency` trials in flight, complete them in order."""
    in_flight, trained, counter = [], 0, 0
    while True:
        while len(in_flight) < concurrency:
            counter += 1
            config = searcher.suggest(f"t{counter}")
            if config is None or config == Searcher.FINISHED:
                break
            in_flight.append((f"t{counter}", config))
        if not in_flight:
            return trained
        trial_id, config = in_flight.pop(0)
        train(run_dir, config)
        trained += 1
        searcher.on_trial_complete(trial_id, {"score": 0.0})
        if stop_after is not None and trained >= stop_after:
            return trained  # the driver dies here: the in-flight trials are lost


def test_a_race_drops_the_clear_losers_and_stops_early(tmp_path, profile):
    spec = make_spec()
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    searcher = StageSearcher(tmp_path, plan, spec.racing, spec.tasks, seed=7)
    trained = drive(searcher, tmp_path)
    state = searcher.state
    assert state.done and trained == len(read_records(tmp_path, 0)) < plan.num_trials
    assert state.outcome == "selected" and state.survivors == ("spindle",) and state.kept == "spindle"
    dropped = state.eliminated["bottleneck"]
    assert dropped.round == 0 and dropped.gap > dropped.allowance >= 0
    # The first round trains min_blocks blocks of every choice; later rounds only the survivors.
    records = read_records(tmp_path, 0)
    assert {r["block"] for r in records if r["choice"] == "bottleneck"} == set(range(8))
    assert searcher.suggest("another") == Searcher.FINISHED


def test_choices_within_delta_stop_early_as_a_tie_kept_by_the_specs_rule(tmp_path, profile, monkeypatch):
    # Every pattern within 0.004 of the others, little noise: a tie within 0.05 before 12 blocks, at
    # the default first stage of 8 blocks.
    monkeypatch.setitem(globals(), "TRUE_MEANS", {c: 0.70 + 0.001 * i for i, c in enumerate(TRUE_MEANS)})
    spec = make_spec(racing={"delta": 0.05, "on_tie": "paper"})
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    searcher = StageSearcher(tmp_path, plan, spec.racing, spec.tasks, seed=7)
    trained = drive(searcher, tmp_path)
    state = searcher.state
    assert state.outcome == "tie" and set(state.tied) == set(TRUE_MEANS) and not state.eliminated
    assert trained < plan.num_trials  # stopped before its 12 planned blocks
    assert state.kept == "spindle"  # on_tie: paper (the paper's grouping)
    assert "tie within 0.05" in state.reason and "kept spindle (paper)" in state.reason


def drive_out_of_order(searcher: StageSearcher, run_dir, concurrency: int, seed: int) -> None:
    """Tune's loop with `concurrency` slots, trials finishing in a random order (run times differ)."""
    rng, in_flight, counter = random.Random(seed), [], 0
    while True:
        while len(in_flight) < concurrency and not searcher.state.done:
            counter += 1
            config = searcher.suggest(f"t{counter}")
            if config is None or config == Searcher.FINISHED:
                break
            in_flight.append((f"t{counter}", config))
        if not in_flight or searcher.state.done:
            return  # a decided race stops what still runs
        trial_id, config = in_flight.pop(rng.randrange(len(in_flight)))
        train(run_dir, config)
        searcher.on_trial_complete(trial_id, {"score": 0.0})


@pytest.mark.parametrize("means", [TRUE_MEANS, {c: 0.70 + 0.001 * i for i, c in enumerate(TRUE_MEANS)}],
                         ids=["decisive", "tied"])
def test_look_ahead_with_results_out_of_order_decides_as_one_round_at_a_time(tmp_path, profile, monkeypatch, means):
    """Blocks are judged in order (dispatch.py): however many rows run ahead, packed three to a trial
    or not, and in whatever order they finish, the verdict is the sequential race's, on the records
    it judged."""
    monkeypatch.setitem(globals(), "TRUE_MEANS", means)
    verdicts = {}
    for name, lookahead, slots, rows_per_trial in (("rounds", 0, 1, 1), ("auto", "auto", 12, 1), ("far", 4, 30, 1),
                                                   ("packed", "auto", 12, 3)):
        spec = make_spec(racing={"min_blocks": 8, "delta": 0.05, "lookahead": lookahead})
        plan = plan_stage(spec, 0, spec.initial_space(), profile)
        run_dir = tmp_path / name
        searcher = StageSearcher(run_dir, plan, spec.racing, spec.tasks, seed=7, slots=slots, rows_per_trial=rows_per_trial)
        drive_out_of_order(searcher, run_dir, concurrency=slots, seed=3)
        state = searcher.state
        assert state.done
        judged = judged_records(plan, state, read_records(run_dir, 0))
        verdicts[name] = (state.outcome, state.kept, state.decided_at, state.tied, sorted(state.eliminated),
                          sorted(r["trial_id"] for r in judged))
    assert verdicts["auto"] == verdicts["rounds"] == verdicts["far"] == verdicts["packed"]


def test_without_racing_every_planned_row_runs(tmp_path, profile):
    spec = make_spec(designs_per_choice=3, racing=None)
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    searcher = StageSearcher(tmp_path, plan, None, spec.tasks, seed=7)
    assert drive(searcher, tmp_path) == plan.num_trials == 15


def test_resume_mid_race_continues_it_and_decides_as_an_uninterrupted_race(tmp_path, profile):
    spec = make_spec()
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    whole = tmp_path / "whole"
    drive(StageSearcher(whole, plan, spec.racing, spec.tasks, seed=7), whole)
    expected = race_state(plan, read_records(whole, 0), spec.racing, spec.tasks, seed=7)

    interrupted = tmp_path / "interrupted"
    drive(StageSearcher(interrupted, plan, spec.racing, spec.tasks, seed=7), interrupted, stop_after=16)
    before = {r["trial_id"]: r for r in read_records(interrupted, 0)}
    resumed = StageSearcher(interrupted, plan, spec.racing, spec.tasks, seed=7)  # a new driver: state from records
    assert not resumed.state.done and all(row.trial_id not in before for row in resumed.state.pending)
    drive(resumed, interrupted)
    after = {r["trial_id"]: r for r in read_records(interrupted, 0)}
    assert all(after[k] == v for k, v in before.items())  # nothing finished was trained again
    assert set(after) == {r["trial_id"] for r in read_records(whole, 0)}  # the same trials as the uninterrupted race
    assert resumed.state == expected


def test_a_trial_that_crashed_past_its_retries_is_recorded_as_failed(tmp_path, profile):
    spec = make_spec(designs_per_choice=2)
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    searcher = StageSearcher(tmp_path, plan, spec.racing, spec.tasks, seed=7)
    config = searcher.suggest("t1")
    searcher.on_trial_complete("t1", None, error=True)
    (record,) = read_records(tmp_path, 0)
    assert record["trial_id"] == config["rows"][0].trial_id and record["status"] == "failed"
    assert config["rows"][0].trial_id not in {row.trial_id for row in searcher.state.pending}


def test_a_packed_trial_reports_each_row_and_a_crash_fails_only_the_row_it_was_training(tmp_path, profile):
    """Three rows to a trial: each row's record is judged as it lands (`row_done`), before the trial
    ends; a trial that raised past its retries after its first row is recorded as failed at its
    second row, and its third goes out again."""
    spec = make_spec(designs_per_choice=2)
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    searcher = StageSearcher(tmp_path, plan, spec.racing, spec.tasks, seed=7, rows_per_trial=3)
    first, second, third = searcher.suggest("t1")["rows"]
    train(tmp_path, {"rows": [first]})
    searcher.on_trial_result("t1", {"row_id": first.trial_id, "row_done": True})
    assert first.trial_id in searcher.recorded and second.trial_id in searcher.launched
    searcher.on_trial_complete("t1", None, error=True)
    statuses = {r["trial_id"]: r["status"] for r in read_records(tmp_path, 0)}
    assert statuses == {first.trial_id: "finished", second.trial_id: "failed"}
    assert searcher.suggest("t2")["rows"][0].trial_id == third.trial_id


def test_a_six_block_stage_stops_for_a_tie_after_three_blocks_under_the_default_first_stage(tmp_path, profile,
                                                                                          monkeypatch):
    """Issue 38: an allocation stage (3 choices) planning 6 blocks, its choices within noise of each
    other, under the default racing (first stage 8): the race looks after 3 blocks and stops there
    for a tie, 9 trials instead of all 18, as the old default first stage of 3 did."""
    monkeypatch.setitem(globals(), "fake_score", lambda row: 0.70 + random.Random(row.trial_id).gauss(0, 0.002))
    spec = make_spec(stages=["allocation"], designs_per_choice=6, racing={"lookahead": 0})
    assert spec.racing.min_blocks == 8
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    assert plan.num_trials == 18
    searcher = StageSearcher(tmp_path, plan, spec.racing, spec.tasks, seed=7)
    trained = drive(searcher, tmp_path)
    state = searcher.state
    assert state.outcome == "tie" and state.decided_at == 3 and trained == 9


def test_the_searcher_knows_what_runs_and_that_a_wait_for_the_race_is_not_the_drivers(tmp_path, profile, monkeypatch):
    """Issue 38: time left holds a running trial's slot for what it has left (`in_flight_left_s`: its
    task's duration and start less the time since Tune started it, for the rows without a record; a
    trial handed out that has not started holds none), and a `suggest` with nothing to hand out tells
    the start clock that the next start waited for the race, not for the driver."""
    from peft_search.search.stage import experiment

    clock = [100.0]
    monkeypatch.setattr(experiment.time, "monotonic", lambda: clock[0])
    spec = make_spec(designs_per_choice=8)
    plan = plan_stage(spec, 0, spec.initial_space(), profile)
    searcher = StageSearcher(tmp_path, plan, spec.racing, spec.tasks, seed=7, slots=16)
    configs = []
    for i in range(4):
        configs.append(searcher.suggest(f"t{i}"))
        if i < 3:
            searcher.trial_started(f"t{i}")  # t3 was handed out ahead of a free slot: it waits for one
        clock[0] += 0.8
    train(tmp_path, configs[0])
    searcher.on_trial_complete("t0", {"score": 0.0})
    records = read_records(tmp_path, 0)
    left_s, held = searcher.in_flight_left_s(records, {"sst2": 5.0, "*": 5.0}, start_s=0.5)
    assert left_s == [pytest.approx(5.5 - 2.4), pytest.approx(5.5 - 1.6)]
    assert held == {configs[1]["rows"][0].trial_id, configs[2]["rows"][0].trial_id}
    searcher.starts.started(1.0, running_before=0)
    for i in range(4, plan.num_trials + 1):  # hand out the first look's rows: then the race waits
        config = searcher.suggest(f"t{i}")
        if config is None:
            break
        assert config != Searcher.FINISHED
    assert searcher.starts.last is None  # the gap to the next start is not counted
