"""One refinement stage as one Ray Tune experiment: `StageSearcher` (a Tune `Searcher`) hands out
the plan rows the race can use whenever Tune has a free slot (`dispatch.Dispatch`: no round
barrier), one row per trial or short rows packed several to a trial (`rows_per_trial`), and the one
trainable of `search.trials` trains each row (a pure function of its row, which records the row the
moment it ends and reports it: the race hears of each row of a packed trial as it ends). The
searcher's state is replayed from the trial records, so a resumed stage (a fresh experiment)
continues the race and never repeats a finished trial. Once the race is decided the experiment stops
the trials still running (look-ahead work the decision made unnecessary). Our progress line replaces
Tune's tables on the terminal.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray.tune import Callback
from ray.tune.search import Searcher

from peft_search.search.progress import RecordProgress
from peft_search.search.ray_tune import experiment_name, run_experiment
from peft_search.search.stage.dispatch import Dispatch
from peft_search.search.stage.plan import StagePlan
from peft_search.search.stage.racing import RaceState, race_state
from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.records import read_records, read_results, started_trials
from peft_search.search.storage.run_dir import stage_dir
from peft_search.search.time_left import (TRIAL_START_S, StartGaps, describe_time_left, list_schedule_s, rows_left,
                                          task_durations)
from peft_search.search.trials import record_failure

EXPERIMENT = "tune"


class StageSearcher(Searcher):
    """A Ray Tune `Searcher` that hands out the plan rows the stage's race can use next.

    It keeps no state of its own beyond the trials in flight: after every completed trial it replays
    the race from the trial records (`racing.race_state`), so a stage resumed in a fresh experiment
    continues the race where it stopped; which row goes out next is `dispatch.Dispatch`'s (the
    procedure's next look, then `racing.lookahead` blocks more, longest trial first). Without racing
    it hands out every row without a record. Short rows go out packed (`rows_per_trial`, sized by
    the rows' durations measured so far, `earlier` stages' included, and the start cost the stage
    times). A trial that Tune gives up on (it raised past `retries`) is recorded as failed here, at
    the row it was training (a packed trial's later rows go out again), so that every planned row
    that ran ends with exactly one record. `replay` (the cluster rehearsal, search/simulate.py) gives
    each row's modelled seconds and recorded score instead of training.
    """

    def __init__(self, run_dir: StoragePath, plan: StagePlan, racing, tasks, seed: int, say=None, replay=None,
                 slots: int = 1, rows_per_trial: int | str = 1, earlier: list[dict] = ()):
        super().__init__(metric="score", mode="max")
        self.run_dir, self.plan, self.racing, self.tasks, self.seed = run_dir, plan, racing, tuple(tasks), seed
        self.say = say or (lambda line: None)
        self.replay_trial = replay
        self.rows = {row.trial_id: row for row in plan.rows}
        self.dispatch = Dispatch(plan, racing.lookahead if racing is not None else None, slots, rows_per_trial=rows_per_trial)
        self.in_flight: dict[str, tuple[str, ...]] = {}  # Tune's trial id -> its plan row ids, in the order it trains them
        self.launched: dict[str, float] = {}  # plan row id -> when it started training here (monotonic)
        self.earlier = list(earlier)  # earlier stages' records: their durations size packed trials
        self.durations: dict[str, float] = {}  # task -> mean wall time of its rows so far
        self.starts = StartGaps(slots)  # the driver's time per start, timed by `TrialStarts`
        self.finished: dict[str, dict] = {}  # finished records read so far: each is read once, not after every trial
        self.recorded: set[str] = set()
        self.state = self.replay()

    def replay(self) -> RaceState:
        records = read_records(self.run_dir, self.plan.stage, finished=self.finished)
        self.recorded = {r["trial_id"] for r in records}
        self.durations = task_durations(self.earlier + records)
        return race_state(self.plan, records, self.racing, self.tasks, self.seed)

    def suggest(self, trial_id: str):
        running = {row for rows in self.in_flight.values() for row in rows}
        start_s = self.starts.next_start_s() or TRIAL_START_S
        rows = self.dispatch.next_trial(self.state, self.recorded, running, seconds=lambda row: self.durations.get(row.task),
                                        start_s=start_s)
        if not rows:
            self.starts.waited()  # nothing to hand out: the next start waits for the race, not the driver
            return Searcher.FINISHED if self.state.done else None
        self.in_flight[trial_id] = tuple(row.trial_id for row in rows)
        config = {"run_dir": str(self.run_dir), "rows": [row.trial_row() for row in rows]}
        if self.replay_trial is not None:
            config["replays"] = [self.replay_trial(row) for row in rows]
        return config

    def trial_started(self, trial_id: str) -> None:
        """Tune started the trial (`TrialStarts`): its first row trains from now. Tune asks for trials
        ahead of a free slot, so a trial handed out may wait for one first."""
        rows = self.in_flight.get(trial_id)
        if rows and rows[0] not in self.launched:
            self.launched[rows[0]] = time.monotonic()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A row of a packed trial ended (`row_done`): the next one starts, and the race hears of it now."""
        if not result.get("row_done"):
            return
        rows = self.in_flight.get(trial_id, ())
        if result.get("row_id") in rows[:-1]:
            self.launched[rows[rows.index(result["row_id"]) + 1]] = time.monotonic()
        self.judge()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        rows = self.in_flight.pop(trial_id, ())
        if error:  # the rows run in order: the first without a record is the one that failed
            unrecorded = [row for row in rows if not self.rows[row].trial_row().record_path(self.run_dir).is_file()]
            if unrecorded:
                record_failure(self.run_dir, self.rows[unrecorded[0]].trial_row(),
                               "the trial raised past its retries (see the Tune logs)")
        self.judge()

    def judge(self) -> None:
        """Replay the race from the records, and say what changed."""
        before, self.state = self.state, self.replay()
        if self.racing is None:
            return  # fixed N: no rounds, no drops, nothing to announce
        for choice, out in self.state.eliminated.items():
            if choice not in before.eliminated:
                self.say(f"stage {self.plan.stage + 1}: round {out.round + 1} ({out.blocks} blocks): dropped {choice} "
                         f"({out.gap:.4f} behind {out.behind}, more than KN's allowance {out.allowance:.4f})")
        if self.state.round != before.round and not self.state.done:
            self.say(f"stage {self.plan.stage + 1}: round {self.state.round + 1}: {len(self.state.survivors)} choices "
                     f"left, {self.state.blocks} blocks each")
        if self.state.done and not before.done:
            self.say(f"stage {self.plan.stage + 1}: race over after round {self.state.round + 1}: {self.state.reason}")

    def in_flight_left_s(self, records: list[dict], durations: dict[str, float], start_s: float) -> tuple[list[float], set[str]]:
        """The seconds each trial that started still holds its slot, and the rows they hold without a
        record: the row training now takes its task's duration (plus the trial's start, for its first
        row) less what it has run, and each row queued behind it in a packed trial all of its own. A
        trial handed out but not started yet holds no slot: its rows are still to start."""
        recorded, now, launched = {r["trial_id"] for r in records}, time.monotonic(), dict(self.launched)
        trials_s, held = [], set()
        for rows in list(self.in_flight.values()):
            waiting = [row for row in rows if row not in recorded]
            if not waiting or rows[0] not in launched:
                continue
            trial_s = 0.0
            for row in waiting:
                row_s = durations.get(self.rows[row].task, durations["*"]) + start_s * (row == rows[0])
                trial_s += max(0.0, row_s - (now - launched[row])) if row in launched else row_s
            trials_s.append(trial_s)
            held.update(waiting)
        return trials_s, held

    def save(self, checkpoint_path: str) -> None:
        # Nothing to keep: the race is replayed from the trial records.
        Path(checkpoint_path).write_text(json.dumps({"state": "replayed from the trial records"}))

    def restore(self, checkpoint_path: str) -> None:
        self.state = self.replay()


class TrialStarts(Callback):
    """Times each trial's start on the driver (Tune calls `on_trial_start` as a trial starts running),
    with the trials running besides it, for the searcher's `StartGaps`, and tells the searcher which
    trial started (time left counts a trial as running from then)."""

    def __init__(self, searcher: StageSearcher):
        self.searcher = searcher

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        running = sum(1 for other in trials if other is not trial and other.status == "RUNNING")
        self.searcher.starts.started(time.monotonic(), running)
        self.searcher.trial_started(trial.trial_id)


def run_stage(run_dir: StoragePath, plan: StagePlan, num_stages: int, resources: dict, max_concurrent: int | None, retries: int,
              racing=None, tasks=(), seed: int = 0, replay=None, slots: int = 1, callbacks: list | None = None,
              later_stages: list[list[str]] = (), rows_per_trial: int | str = 1) -> dict[str, float | None]:
    """Run the rows the stage's race needs (every row without a record, without racing) as one Tune
    experiment under `stages/<i>/tune` (`tune-<time>` for a resumed stage: the race is replayed from
    the records, so the rows that already have one are never trained again). `slots`: trials the
    cluster runs at once, which sizes `lookahead: auto` and packed trials (`rows_per_trial`, the
    spec's: rows one trial trains back to back); `callbacks`, Tune callbacks (experiment
    tracking: search/tracking.py); `later_stages`, the tasks of every trial each later stage could
    run (the progress line's time left in the search: search/time_left.py). Once the race is
    decided, trials still running are stopped; they leave no record (their started markers are
    removed: nothing of this stage runs any more). Returns the driver's time per trial start as this
    experiment timed it (`time_left.StartGaps`: `start_cost_s` over every start, `fresh_start_s` on new
    actors, `reused_start_s` on reused ones; None: too few starts)."""
    # Earlier stages' trial durations count until this stage has its own: from results.parquet, one
    # read (on an object store, reading every record again would be one GET each).
    earlier = [r for r in read_results(run_dir, ["stage", "task", "wall_time_s"]) if r["stage"] < plan.stage]
    searcher = StageSearcher(run_dir, plan, racing, tasks, seed, say=lambda line: print(line, flush=True), replay=replay,
                             slots=slots, rows_per_trial=rows_per_trial, earlier=earlier)
    if searcher.state.done:
        return {}
    directory = stage_dir(run_dir, plan.stage)
    unrecorded = len({row.trial_id for row in plan.rows} - {r["trial_id"] for r in read_records(run_dir, plan.stage)})
    limit = "at most " if racing is not None else ""
    finished: dict[str, dict] = {}  # every 2 s the progress line lists the records; each finished one is read once

    def time_left(records: list[dict]) -> str | None:
        survivors = searcher.state.survivors if racing is not None else None
        durations = task_durations(earlier + records)
        if "*" not in durations:
            return None  # nothing measured yet
        measured = searcher.starts.next_start_s()  # as soon as enough trials started
        start_s = TRIAL_START_S if measured is None else measured
        # A running trial holds its slot for what its rows last, less what it has run (its start included).
        running_left, handed_out = searcher.in_flight_left_s(records, durations, start_s)
        left = {row.trial_id for row in rows_left(plan, records, survivors)}
        # In the order the dispatch hands them out (block by block, longest trial first), packed as it packs them.
        to_start = [row.task for row in searcher.dispatch.order if row.trial_id in left and row.trial_id not in handed_out]
        stage_s = list_schedule_s(to_start, durations, slots, start_s, running_left, rows_per_trial)
        text = describe_time_left(stage_s, at_most=racing is not None)
        if text is None or not later_stages:
            return text
        search_s = stage_s + sum(list_schedule_s(stage_tasks, durations, slots, start_s, rows_per_trial=rows_per_trial)
                                 for stage_tasks in later_stages)
        return f"{text} (the search: {describe_time_left(search_s, at_most=racing is not None).removesuffix(' left')})"

    progress = RecordProgress(f"stage {plan.stage + 1}/{num_stages} ({plan.component})",
                              lambda: read_records(run_dir, plan.stage, finished=finished), f"{limit}{plan.num_trials}",
                              time_left=time_left)
    run_experiment(directory, experiment_name(directory, EXPERIMENT), resources=resources, max_concurrent=max_concurrent,
                   retries=retries, progress=progress, searcher=searcher,
                   num_samples=unrecorded,  # an upper bound: a race usually needs fewer
                   done=lambda: searcher.state.done, callbacks=[*(callbacks or []), TrialStarts(searcher)])
    if searcher.state.done:
        for trial_id in started_trials(run_dir, plan.stage):
            searcher.rows[trial_id].trial_row().started_path(run_dir).unlink(missing_ok=True)
    starts = searcher.starts
    return {"start_cost_s": starts.start_s(), "fresh_start_s": starts.fresh_s(), "reused_start_s": starts.reused_s()}
