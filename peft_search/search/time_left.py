"""Time left in a stage and in a search, from the trials' measured durations (docs/design.md, "Time
left"): the progress line and `status` say it.

A stage still trains the rows its race may need: the rows without a record of the choices still in
it (every row without a record, without racing). A task's trial lasts, by estimate, the mean wall
time of the run's trials on it (the mean over every task for a task not yet measured), plus Tune's
cost of starting it (a record's wall time is the trainable's own). Rows run `slots` at a time (the
cluster's trial slots, recorded per stage), each on the first slot that frees, as the dispatch hands
them out (block by block; in a running stage's progress line in the dispatch's own order, longest
trial first within a block) (list scheduling), and started one after another, as Tune's driver starts
them (and the cluster simulator models them): with short trials on many slots, the starts, not the
slots, set the time (402 trials of 0.2 s on 16 slots take about 402 starts, not 402 / 16 trial
lengths; issue 38). The cost of a start is measured, not assumed, once there is something to measure
it on: a running stage times its own starts (`StartGaps`), `status` takes the run's ended stages'
(recorded, or for an older run `start_cost_s` of its stages' wall times), and before either
TRIAL_START_S stands in. A race can stop at any look, so under racing it is "at most"; a stage not
yet planned counts every block it could run. Pure Python.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections import defaultdict
from typing import Iterable, Sequence

# Seconds Tune's driver takes to start a trial, on top of the trial's own wall time: fitted on a
# 2-core head with reused actors (tests/test_rehearsal.py); the cluster simulator's default too, and
# what stands in until a run has measured its own (`start_cost_s`).
TRIAL_START_S = 0.45
# Fewer trials say little about the cost of a start (Tune's own start-up dominates them).
START_COST_MIN_TRIALS = 10
# Starts on new actors timed before their cost is believed (a stage has at most `slots` of them).
FRESH_MIN_GAPS = 3
# `rows_per_trial: auto` packs rows into a trial of at most this many times the driver's time to start
# one trial on every slot (stage/dispatch.py): the driver then keeps every slot fed with time to spare
# (chosen with the simulator: 1.25 to 2 did the same on the Qwen job; docs/benchmarks.md, "Packed trials").
PACK_SLOT_STARTS = 2


def pack_target_s(slots: int, start_s: float, left_s: float = math.inf) -> float:
    """The seconds a packed trial may last, with `left_s` seconds of rows still to hand out: at most
    PACK_SLOT_STARTS x `slots` starts of `start_s` (the driver keeps up), and where the driver sets the
    pace sqrt(2 x left x start): the economic lot size, which minimises the rest's starts (left / c
    of `start_s` each) plus the wait for the last trial (c / 2); never less than a slot's share of the
    work left, where the slots set the pace."""
    driver_s = math.sqrt(2 * left_s * start_s) if math.isfinite(left_s) else math.inf
    share_s = left_s / max(1, slots)
    return min(PACK_SLOT_STARTS * slots * start_s, max(share_s, driver_s))


def start_cost_s(wall_s: float, slots: int, trained_s: float, trials: int) -> float | None:
    """The driver's cost per trial as a stage shows it (issue 38): the slot time that did not train,
    per trial started, bounded by both regimes a stage can be in,
        min(wall / n, (slots x wall - trained) / n):
    with short trials the driver sets the pace (the wall is n starts); with long ones every slot-second
    not training went to starting trials or to waiting. `trained_s`: the trials' own wall time (a
    running one's so far). An upper bound of the pure start cost (a race's waits count too): the
    effective cost that makes a list schedule's wall-clock the stage's. None below
    START_COST_MIN_TRIALS trials started or before any time passed."""
    if trials < START_COST_MIN_TRIALS or wall_s <= 0:
        return None
    return max(0.0, min(wall_s / trials, (slots * wall_s - trained_s) / trials))


class StartGaps:
    """The driver's time per trial start, timed as a stage runs (issue 38): the gaps between one trial's
    start and the next's while a slot stayed free, so that the next start waited for the driver alone
    (not for a slot, and not for the race: `waited` drops the gap in which the searcher had nothing to
    hand out). Their mean, once START_COST_MIN_TRIALS trials started; the controller records it per
    stage in `state.json` (`start_cost_s`). A stage's first `slots` trials each start a new actor
    (a Tune experiment reuses an actor only once one of its trials has ended), so their gaps are also
    kept apart from the later ones' (`fresh_s`, `reused_s`): on a 2-core head a start on a new actor
    cost 1.46 s against 1.05 s with 16 long trials running, 0.75-0.81 s against 0.70 s with short ones
    (docs/benchmarks.md, "Time left")."""

    def __init__(self, slots: int):
        self.slots = slots
        self.gaps: list[float] = []
        self.fresh: list[float] = []  # gaps before a start on a new actor (the experiment's first `slots` starts)
        self.reused: list[float] = []  # gaps before a start on a reused actor
        self.count = 0  # trials started
        self.last: tuple[float, bool] | None = None  # (when the last trial started, whether a slot stayed free)

    def started(self, at: float, running_before: int) -> None:
        """A trial started at `at` (seconds, monotonic), `running_before` trials running besides it."""
        self.count += 1
        if self.last is not None and self.last[1]:
            self.gaps.append(at - self.last[0])
            (self.fresh if self.count <= self.slots else self.reused).append(at - self.last[0])
        self.last = (at, running_before + 1 < self.slots)

    def waited(self) -> None:
        self.last = None

    def start_s(self) -> float | None:
        return sum(self.gaps) / len(self.gaps) if len(self.gaps) >= START_COST_MIN_TRIALS - 1 else None

    def fresh_s(self) -> float | None:
        """The mean start on a new actor, from FRESH_MIN_GAPS such starts."""
        return sum(self.fresh) / len(self.fresh) if len(self.fresh) >= FRESH_MIN_GAPS else None

    def reused_s(self) -> float | None:
        """The mean start on a reused actor, once START_COST_MIN_TRIALS - 1 such gaps were timed."""
        return sum(self.reused) / len(self.reused) if len(self.reused) >= START_COST_MIN_TRIALS - 1 else None

    def next_start_s(self) -> float | None:
        """What the stage's next start costs, by what it timed: past its first wave, a reused actor's;
        else the mean over every start, or, within the first wave (too few starts for that, which is
        where a stage's first tenth often is), a new actor's."""
        return (self.reused_s() if self.count >= self.slots else None) or self.start_s() or self.fresh_s()


def run_start_costs_s(stages: Sequence[dict]) -> tuple[float | None, float | None]:
    """(fresh, reused): the medians over a run's ended stages of the costs of a start on a new actor
    and on a reused one, as each stage timed them (`fresh_start_s`, `reused_start_s` in `state.json`);
    None where no stage says (a run before they were recorded, or stages too small to time them)."""
    ended = [stage for stage in stages if stage.get("status") not in ("pending", "running")]
    fresh = [stage["fresh_start_s"] for stage in ended if stage.get("fresh_start_s") is not None]
    reused = [stage["reused_start_s"] for stage in ended if stage.get("reused_start_s") is not None]
    return (statistics.median(fresh) if fresh else None), (statistics.median(reused) if reused else None)


def run_start_cost_s(stages: Sequence[dict], records: Iterable[dict]) -> float | None:
    """The median over a run's stages that ran to their end of the start cost each measured as it ran
    (`start_cost_s` in `state.json`), or for a stage run before it was recorded `start_cost_s` of its
    wall time, slots and trial records; None when no stage says."""
    ended = [stage for stage in stages if stage.get("status") not in ("pending", "running")]
    walls: dict[int, list[float]] = defaultdict(list)
    for record in records:
        if record.get("wall_time_s"):
            walls[record["stage"]].append(float(record["wall_time_s"]))
    costs = []
    for stage in ended:
        if stage.get("start_cost_s") is not None:
            costs.append(stage["start_cost_s"])
        elif stage.get("wall_time_s") and stage.get("slots"):
            trials = walls[stage["stage"]]
            cost = start_cost_s(stage["wall_time_s"], stage["slots"], sum(trials), len(trials))
            if cost is not None:
                costs.append(cost)
    return statistics.median(costs) if costs else None


def task_durations(records: Iterable[dict]) -> dict[str, float]:
    """task -> mean wall time (s) of its trials that recorded one; `*`: the mean over every task."""
    walls: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record.get("wall_time_s"):
            walls[record["task"]].append(float(record["wall_time_s"]))
    durations = {task: sum(w) / len(w) for task, w in walls.items()}
    every = [w for ws in walls.values() for w in ws]
    if every:
        durations["*"] = sum(every) / len(every)
    return durations


def packed_s(tasks: Sequence[str], durations: dict[str, float], slots: int, start_s: float,
             rows_per_trial: int | str = 1) -> list[float]:
    """The seconds of each trial that rows of these tasks go out as, in order: one row each, or
    consecutive rows packed as the dispatch packs them (`rows_per_trial`: a number of rows, or `auto`:
    up to `pack_target_s`; stage/dispatch.py)."""
    seconds = [durations.get(task, durations["*"]) for task in tasks]
    if rows_per_trial == 1:
        return seconds
    if rows_per_trial != "auto":
        return [sum(seconds[i:i + rows_per_trial]) for i in range(0, len(seconds), rows_per_trial)]
    trials: list[float] = []
    left_s, target_s = sum(seconds), 0.0
    for row_s in seconds:
        if trials and trials[-1] + row_s <= target_s:
            trials[-1] += row_s
        else:  # a new trial, sized by the work still to hand out
            target_s = pack_target_s(slots, start_s, left_s)
            trials.append(row_s)
        left_s -= row_s
    return trials


def list_schedule_s(tasks: Sequence[str], durations: dict[str, float], slots: int,
                    start_s: float = TRIAL_START_S, running: Sequence[float] = (),
                    rows_per_trial: int | str = 1) -> float | None:
    """How long trials of these tasks take on `slots` slots, each started in order on the first slot
    that frees, the driver taking `start_s` per start, one start after another, and each trial then
    lasting its measured duration; `running`: the seconds until each trial already running ends (its
    slot is busy until then); `rows_per_trial`: the rows go out packed (`packed_s`). 0 with nothing to
    run, None with nothing measured yet."""
    if not tasks:
        return max(running, default=0.0)
    if "*" not in durations:
        return None
    trials = packed_s(tasks, durations, slots, start_s, rows_per_trial)
    slots = max(1, slots)
    # When each slot is next free: the running trials' ends, and as many free slots as there are trials to start.
    free_at = sorted(running)[:slots] + [0.0] * min(max(0, slots - len(running)), len(trials))
    heapq.heapify(free_at)
    driver_free = 0.0  # when the driver can start the next trial: it starts them one after another
    for trial_s in trials:
        launch = max(heapq.heappop(free_at), driver_free)
        driver_free = launch + start_s
        heapq.heappush(free_at, driver_free + trial_s)
    return max(max(free_at), max(running, default=0.0))


def rows_left(plan, records: Sequence[dict], survivors: Sequence[str] | None = None) -> list:
    """The plan's rows without a record, of the choices still in the race (`survivors`; None: all),
    block by block as the dispatch hands them out."""
    recorded = {r["trial_id"] for r in records}
    left = [row for row in plan.rows if row.trial_id not in recorded and (survivors is None or row.choice in survivors)]
    return sorted(left, key=lambda row: row.block if row.block is not None else row.sample)


def unplanned_stage_tasks(spec, index: int) -> list[str]:
    """A stage not yet planned: the task of every trial it could run (every candidate, every block)."""
    stage = spec.stages[index]
    return [task for task in spec.tasks for _ in range(len(stage.candidates) * spec.designs_per_choice * len(spec.seeds))]


def describe_time_left(seconds: float | None, at_most: bool) -> str | None:
    """`at most 3.2 min left` (racing) or `about 3.2 min left`; None when nothing was measured yet."""
    if seconds is None or seconds <= 0:
        return None
    if seconds >= 3600:
        amount = f"{seconds / 3600:.1f} h"
    elif seconds >= 60:
        amount = f"{seconds / 60:.1f} min"
    else:
        amount = f"{seconds:.0f} s"
    return f"{'at most' if at_most else 'about'} {amount} left"


__all__ = ["FRESH_MIN_GAPS", "PACK_SLOT_STARTS", "START_COST_MIN_TRIALS", "TRIAL_START_S", "StartGaps", "describe_time_left", "list_schedule_s", "pack_target_s", "packed_s", "rows_left", "run_start_cost_s", "run_start_costs_s",
           "start_cost_s", "task_durations", "unplanned_stage_tasks"]
