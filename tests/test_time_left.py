"""Time left (search/time_left.py): list scheduling of the rows left over the trials' measured
durations per task, worked by hand; and `status` on a copy of a real run killed mid-stage
(tests/data/runs-v0.1/partial: stage 1 has 2 of its 4 trials)."""

import json
import shutil
from pathlib import Path

import pytest

from peft_search.search.status import run_status
from peft_search.search.time_left import (START_COST_MIN_TRIALS, TRIAL_START_S, StartGaps, describe_time_left,
                                          list_schedule_s, pack_target_s, packed_s, run_start_cost_s, run_start_costs_s,
                                          start_cost_s,
                                          task_durations)

PARTIAL = Path(__file__).parent / "data" / "runs-v0.1" / "partial"


def test_durations_are_each_tasks_mean_and_the_overall_mean_stands_in_for_an_unmeasured_task():
    records = [{"task": "sst2", "wall_time_s": 10.0}, {"task": "sst2", "wall_time_s": 20.0},
               {"task": "cola", "wall_time_s": 45.0}, {"task": "cola", "wall_time_s": None}]
    durations = task_durations(records)
    assert durations == {"sst2": 15.0, "cola": 45.0, "*": 25.0}
    assert list_schedule_s(["mrpc"], durations, slots=1, start_s=0) == 25.0


def test_each_trial_starts_on_the_first_slot_that_frees_in_the_plans_order():
    durations = {"sst2": 10.0, "cola": 30.0, "*": 20.0}
    # On 2 slots: sst2 | sst2 from 0 to 10, then cola on the first free one, 10 to 40.
    assert list_schedule_s(["sst2", "sst2", "cola"], durations, slots=2, start_s=0) == 40.0
    # cola first: cola 0-30 | sst2 0-10, sst2 10-20: 30.
    assert list_schedule_s(["cola", "sst2", "sst2"], durations, slots=2, start_s=0) == 30.0
    assert list_schedule_s(["sst2"] * 8, durations, slots=8, start_s=0) == 10.0  # one wave
    assert list_schedule_s(["sst2"] * 8, durations, slots=1, start_s=0) == 80.0
    assert list_schedule_s(["sst2"] * 8, durations, slots=1) == pytest.approx(8 * (10 + TRIAL_START_S))  # Tune's start cost
    # Starts are the driver's, one after another: short trials on many slots wait for them, not for a slot
    # (issue 38: 402 trials of 0.2 s on 16 logical GPUs took 169 s, where side-by-side starts said 16 s).
    assert list_schedule_s(["short"] * 402, {"short": 0.2, "*": 0.2}, slots=16) == pytest.approx(402 * TRIAL_START_S + 0.2)
    assert list_schedule_s(["sst2"] * 8, durations, slots=8) == pytest.approx(8 * TRIAL_START_S + 10)
    assert list_schedule_s([], durations, slots=4) == 0.0
    assert list_schedule_s(["sst2"], {}, slots=4) is None  # nothing measured yet: no figure


def test_a_running_trial_holds_its_slot_until_it_ends():
    durations = {"sst2": 10.0, "*": 10.0}
    # 16 slots, 5 busy for 3 s more: two trials start at once on free slots, 0.5 s apart.
    assert list_schedule_s(["sst2"] * 2, durations, slots=16, start_s=0.5, running=[3.0] * 5) == 11.0
    # 2 slots, both busy: the trials wait for them (3 s and 4 s), then start and last 10 s.
    assert list_schedule_s(["sst2"] * 2, durations, slots=2, start_s=0.5, running=[3.0, 4.0]) == 14.5
    assert list_schedule_s([], durations, slots=2, running=[3.0, 4.0]) == 4.0  # nothing to start: the last to end


def test_a_packed_trial_is_at_most_the_drivers_time_for_every_slot_and_the_economic_lot_of_the_work_left():
    """Issue 38, `rows_per_trial: auto` (stage/dispatch.py): at most 2 x slots x start (the driver keeps
    up); where the driver sets the pace, sqrt(2 x work left x start), but never below a slot's share."""
    assert pack_target_s(16, 0.5) == 16.0
    assert pack_target_s(16, 0.5, left_s=10_000) == 16.0  # plenty of work: the driver's cap
    assert pack_target_s(16, 0.5, left_s=100) == pytest.approx(10.0)  # sqrt(2 x 100 x 0.5)
    assert pack_target_s(2, 0.5, left_s=7) == pytest.approx(2.0)  # 2 slots: the cap, 2 x 2 x 0.5
    assert pack_target_s(16, 0.01, left_s=320) == pytest.approx(0.32)  # the cap, under a slot's share (20 s)
    durations = {"short": 1.0, "*": 1.0}
    # 100 rows of 1 s, 16 slots, 0.5 s a start: the first trials take 10 rows, the last ones fewer.
    trials = packed_s(["short"] * 100, durations, slots=16, start_s=0.5, rows_per_trial="auto")
    assert sum(trials) == 100 and trials[0] == 10.0 and trials[-1] < trials[0]
    assert packed_s(["short"] * 10, durations, 16, 0.5, rows_per_trial=4) == [4.0, 4.0, 2.0]
    assert packed_s(["short"] * 3, durations, 16, 0.5) == [1.0] * 3
    # Packed, the driver's 100 starts (50 s) become a few: the rows end far sooner.
    assert list_schedule_s(["short"] * 100, durations, 16, 0.5, rows_per_trial="auto") < 20
    assert list_schedule_s(["short"] * 100, durations, 16, 0.5) == pytest.approx(100 * 0.5 + 1)


def test_the_start_cost_is_the_slot_time_that_did_not_train_per_trial_in_either_regime():
    # The driver's pace: 20 trials of 0.2 s on 16 slots in 9 s: 9 / 20, far below the idle slot time.
    assert start_cost_s(9.0, 16, 20 * 0.2, 20) == pytest.approx(0.45)
    # The slots' pace: 20 trials of 10 s on 2 slots in 105 s: 10 idle slot-seconds over 20 trials.
    assert start_cost_s(105.0, 2, 200.0, 20) == pytest.approx(0.5)
    assert start_cost_s(9.0, 16, 4.0, START_COST_MIN_TRIALS - 1) is None  # too few to say
    # A run's: the median over its ended stages; a stage still running says nothing yet.
    stages = [{"stage": 0, "status": "selected", "wall_time_s": 9.0, "slots": 16},
              {"stage": 1, "status": "tie", "wall_time_s": 105.0, "slots": 2},
              {"stage": 2, "status": "running", "wall_time_s": 1.0, "slots": 2}]
    records = ([{"stage": 0, "wall_time_s": 0.2}] * 20 + [{"stage": 1, "wall_time_s": 10.0}] * 20
               + [{"stage": 2, "wall_time_s": 10.0}] * 20)
    assert run_start_cost_s(stages, records) == pytest.approx((0.45 + 0.5) / 2)
    assert run_start_cost_s(stages[2:], records) is None
    # A stage that timed its starts as it ran says so in state.json: that figure, not the bound.
    stages[1]["start_cost_s"] = 0.61
    assert run_start_cost_s(stages, records) == pytest.approx((0.45 + 0.61) / 2)


def test_the_drivers_start_cost_is_the_gap_between_starts_while_a_slot_stayed_free():
    """4 slots, trials of 10 s, the driver taking 0.5 s a start: 4 starts fill the slots (3 gaps of 0.5 s
    counted; after the 4th no slot is free, so the gap to the 5th is a wait for a slot); then each start
    follows an end. A start after the searcher waited for the race is not counted either."""
    gaps = StartGaps(slots=4)
    assert gaps.start_s() is None
    at = 0.0
    for wave in range(4):
        for k in range(4):
            gaps.started(at + 0.5 * k, running_before=k)
        at += 10.5
    assert gaps.gaps == [0.5] * 12 and gaps.start_s() == pytest.approx(0.5)
    gaps.started(100.0, running_before=0)
    gaps.waited()
    gaps.started(130.0, running_before=0)  # 30 s later: the race's wait, not the driver's
    assert gaps.gaps == [0.5] * 12
    few = StartGaps(slots=16)
    for k in range(START_COST_MIN_TRIALS - 1):
        few.started(0.7 * k, running_before=k)
    assert few.start_s() is None  # 8 gaps: too few to say
    few.started(0.7 * 9, running_before=9)
    assert few.start_s() == pytest.approx(0.7)


def test_starts_on_new_actors_are_timed_apart_from_starts_on_reused_ones():
    """A stage's first `slots` trials each start a new actor: 8 slots, fresh starts 1.4 s apart, then
    every start after an end on a reused actor, 0.7 s apart; the next start is a reused one's."""
    gaps = StartGaps(slots=8)
    for k in range(8):
        gaps.started(1.4 * k, running_before=k)
    assert gaps.fresh == [pytest.approx(1.4)] * 7 and gaps.fresh_s() == pytest.approx(1.4) and gaps.reused_s() is None
    assert gaps.start_s() is None  # 7 gaps in all: too few for the one cost over every start ...
    assert gaps.next_start_s() == pytest.approx(1.4)  # ... but enough to say what the first wave's starts cost
    for k in range(10):  # a wave of ends: slots free up, reused actors start 0.7 s apart
        gaps.started(100.0 + 0.7 * k, running_before=0)
    assert gaps.reused_s() == pytest.approx(0.7) and gaps.next_start_s() == pytest.approx(0.7)
    assert gaps.start_s() == pytest.approx((7 * 1.4 + 9 * 0.7) / 16)  # one cost over every start, as before
    stages = [{"stage": 0, "status": "selected", "fresh_start_s": 1.4, "reused_start_s": 0.7},
              {"stage": 1, "status": "tie", "fresh_start_s": 1.2, "reused_start_s": 0.9},
              {"stage": 2, "status": "running", "fresh_start_s": 5.0, "reused_start_s": 5.0},
              {"stage": 3, "status": "undecided", "start_cost_s": 0.6}]  # before they were timed apart
    assert run_start_costs_s(stages) == (pytest.approx(1.3), pytest.approx(0.8))
    assert run_start_costs_s(stages[3:]) == (None, None)


@pytest.mark.parametrize("seconds, at_most, text", [
    (42.4, True, "at most 42 s left"), (192.0, False, "about 3.2 min left"), (9000.0, True, "at most 2.5 h left"),
    (None, True, None), (0.0, True, None),
])
def test_time_left_says_at_most_under_racing(seconds, at_most, text):
    assert describe_time_left(seconds, at_most) == text


def test_status_gives_the_running_stage_and_the_search_their_time_left(tmp_path):
    run = tmp_path / "partial"
    shutil.copytree(PARTIAL, run)
    records = [json.loads(p.read_text()) for p in run.glob("stages/*/trials/*.json")]
    trial_s = sum(r["wall_time_s"] for r in records) / len(records)  # one task: its mean
    status = run_status(run)
    stages = {s["stage"]: s for s in status["stages"]}
    assert stages[0]["status"] == "undecided" and stages[0]["time_left_s"] == 0  # decided before outcomes: no guarantee
    # 2 rows left, one at a time (the spec's max_concurrent_trials: the run predates recorded slots).
    left = 2 * (trial_s + TRIAL_START_S)
    assert stages[1]["time_left_s"] == pytest.approx(left)
    assert status["estimated_remaining_s"] == pytest.approx(left, abs=0.1)
    assert f"{describe_time_left(status['estimated_remaining_s'], status['time_left_at_most'])} in the search's stages" in status["text"]
