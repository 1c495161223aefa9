"""A search on a cluster, simulated before it is submitted (`peft-search simulate JOB --gpus N`).

A discrete-event simulation of the job's whole staged search on N GPUs, driven by the project's own
code: every stage is planned by `plan_stage`, its rows go out through `dispatch.Dispatch` (the policy
the Tune searcher calls) whenever a slot is free, the race is `racing.race_state` over the records
so far, a decided race stops what still runs, and the next stage plans from the kept choice.
Nothing of this is copied; only the trials are modelled:

- Slots: a trial reserves `resources.gpus` x `resources.workers` GPUs (a fraction packs several trials
  on a GPU; a CPU-only job takes one slot per trial), at most `max_concurrent_trials` at once.
- Length: a trial trains its optimiser steps (`estimate.config_steps`: the Hub's published train
  sizes for epoch-based GLUE trials) at `step_time_s` seconds each. Starting a trial costs the
  driver `start_s` (Tune launches trials one after another; about 0.45 s on a 2-core head), or
  `fresh_start_s` for a stage's first `slots` trials, each on a new actor: the slot is held meanwhile
  and the GPU counts as idle. Short rows go out packed as the dispatch packs them.
- Scores: replayed from a recorded reference stage (`benchmarks/data/decisions-reference*.parquet`),
  never invented: a plan block takes a reference block (a fresh random permutation of the
  reference's blocks, drawn again once used up), and the stage's choices take the reference's
  choices: one stage choice, drawn at random, is the reference's best; the others take the
  others in turn (a second use of a reference choice reads its blocks shifted, so no two stage
  choices repeat each other's scores). Every task of a design gets the reference design score, so
  the design score the race sees is the reference's.

GPU use is busy GPU-time over the GPUs' time while stages run; trained GPU-hours count every trial
started, a stopped one up to its stop; wasted ones are those the decisions did not use (look-ahead
past a decision or a drop). The two lower bounds of a stage are the work its decision needed over N
GPUs, and its critical path (the longest trial it needed, started at once). Pure Python over the
search package; imports torch only to plan (the budget), never ray.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from peft_search.errors import InputError
from peft_search.search.seeds import derive_seed
from peft_search.search.time_left import START_COST_MIN_TRIALS, TRIAL_START_S, run_start_cost_s, run_start_costs_s
from peft_search.search.stage.decide import decide_plan
from peft_search.search.stage.dispatch import Dispatch
from peft_search.search.stage.estimate import config_steps
from peft_search.search.stage.plan import PlanRow, StagePlan, plan_stage
from peft_search.search.stage.racing import block_scores, judged_records, race_state
from peft_search.search.stage.selection import SELECTED, TIE

REFERENCES = Path(__file__).resolve().parents[2] / "benchmarks" / "data"
STREAMS = {  # recorded reference stages (docs/benchmarks.md, "Decisions")
    "decisive": REFERENCES / "decisions-reference-tunable.parquet",  # all groups ahead of G4 by 0.051, of G1 by 0.119
    "tied": REFERENCES / "decisions-reference.parquet",  # grouping: the best three within 0.001
}
# The driver's time to launch one trial: fitted to a rehearsal on the 2-core head (tests/test_rehearsal.py:
# 8 logical GPUs, reused actors; docs/benchmarks.md, "A search on a cluster"). 0.8 s was measured there
# with a fresh actor per trial.
DEFAULT_START_S = TRIAL_START_S  # search/time_left.py: the same figure estimates a run's time left
# Seconds per optimiser step when none is given: our LoRA on MiniLM, batch 32, length 128, on the
# 2-core CPU VM (docs/benchmarks.md, "PEFT injection: training-step time"). A GPU's is far shorter:
# give --step-time, or --step-time-from a run whose trials ran on the cluster's GPUs.
MEASURED_STEP_TIME_S = 1.754


@dataclass(frozen=True)
class TrialModel:
    step_time_s: float  # seconds per optimiser step
    start_s: float = DEFAULT_START_S  # the driver's time to launch one trial (on a reused actor)
    # ... on a new actor: a stage's first `slots` trials (each Tune experiment starts its own actors);
    # None: `start_s` (time_left.StartGaps times both on a run)
    fresh_start_s: float | None = None

    def start_cost(self, launched: int, slots: int) -> float:
        """The driver's time to launch a stage's trial after `launched` others."""
        return self.fresh_start_s if self.fresh_start_s is not None and launched < slots else self.start_s

    def seconds(self, row: PlanRow) -> float:
        steps = config_steps(row.config)
        if steps is None:
            raise InputError("fidelity", f"task {row.task}: a trial's steps depend on a dataset size not known before "
                             "reading it; give fidelity.max_steps or fidelity.max_train_examples to simulate")
        return steps * self.step_time_s


@dataclass(frozen=True)
class Cluster:
    gpus: float

    def slots(self, resources, max_concurrent: int | None) -> tuple[int, float]:
        """(trials at once, GPUs one trial reserves: 1 for a CPU-only trial's slot)."""
        per_trial = resources.gpus * resources.workers if resources.gpus > 0 else 1.0
        slots = math.floor(self.gpus / per_trial + 1e-9)
        if max_concurrent is not None:
            slots = min(slots, max_concurrent)
        if slots < 1:
            raise InputError("--gpus", f"{self.gpus:g} GPUs hold no trial of {per_trial:g} GPUs (resources.gpus x workers)")
        return slots, per_trial


class Reference:
    """A recorded stage's design scores: `scores[choice, block]` (NaN: a failed design), choices best first."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        if not Path(path).is_file():
            raise InputError("--scores", f"no reference at {path}; give decisive, tied or a Parquet file of trial records")
        rows = pq.read_table(path).to_pylist()
        if not rows or not {"choice", "block", "task", "score"} <= set(rows[0]):
            raise InputError("--scores", f"{path} holds no trial records with choice, block, task and score")
        table = block_scores(rows, sorted({r["task"] for r in rows}))
        blocks = sorted({r["block"] for r in rows})
        means = {c: np.nanmean([np.nan if v is None else v for v in table[c].values()]) for c in table}
        self.path = Path(path)
        self.choices = sorted(table, key=lambda c: -means[c])
        self.means = np.array([means[c] for c in self.choices])
        self.scores = np.array([[np.nan if table[c].get(b) is None else table[c][b] for b in blocks] for c in self.choices])


class ScoreReplay:
    """Scores of one stage's rows, replayed from a reference (see the module docstring)."""

    def __init__(self, reference: Reference, plan: StagePlan, rng: random.Random):
        self.reference = reference
        choices = [c for c in plan.choices if any(row.choice == c for row in plan.rows)]
        blocks = sorted({row.block for row in plan.rows})
        count = reference.scores.shape[1]
        order: list[int] = []
        while len(order) < len(blocks):
            order += rng.sample(range(count), count)
        self.block = {block: order[i] for i, block in enumerate(blocks)}
        self.best = rng.choice(choices)
        others = [c for c in choices if c != self.best]
        self.mapped = {self.best: (0, 0)}  # stage choice -> (reference choice, block shift)
        spare = max(1, len(reference.choices) - 1)
        for i, choice in enumerate(others):
            self.mapped[choice] = (1 + i % spare if len(reference.choices) > 1 else 0, 7 * (i // spare + (len(reference.choices) == 1)))
        self.count = count

    def score(self, row: PlanRow) -> float | None:
        index, shift = self.mapped[row.choice]
        value = self.reference.scores[index, (self.block[row.block] + shift) % self.count]
        return None if np.isnan(value) else float(value)

    def mean(self, choice: str) -> float:
        return float(self.reference.means[self.mapped[choice][0]])


@dataclass
class StageResult:
    stage: int
    component: str
    choices: int
    outcome: str  # selected | tie | undecided | skipped
    kept: str | None = None
    best: str | None = None  # the choice that replays the reference's best
    right: bool | None = None  # the kept choice within delta of the best (a tie: every tied choice is); None: no claim
    blocks: int = 0  # blocks the decision rests on
    trials: int = 0  # rows started (each a trial, or one of a packed trial's)
    tune_trials: int = 0  # trials the driver started (fewer than rows when trials are packed)
    trials_wasted: int = 0  # started, then not used by the decision (look-ahead past it, or stopped)
    wall_s: float = 0.0
    longest_trial_s: float = 0.0
    gpu_s: float = 0.0  # GPUs x wall-clock
    busy_gpu_s: float = 0.0  # trained GPU-time (a stopped trial up to its stop)
    stopped_gpu_s: float = 0.0  # of which trials stopped at the decision (they leave no record)
    wasted_gpu_s: float = 0.0
    work_bound_s: float = 0.0  # the needed trials' GPU-time / GPUs
    critical_path_s: float = 0.0  # the longest needed trial (plus its start)
    tail_s: float = 0.0  # from the last trial launched to the stage's end
    tail_idle_gpu_s: float = 0.0  # idle GPU-time in that tail: what starting the next stage early could fill at most

    @property
    def gpu_use(self) -> float:
        return self.busy_gpu_s / self.gpu_s if self.gpu_s else 0.0


@dataclass
class SearchSimulation:
    job: str
    gpus: float
    slots: int
    step_time_s: float
    start_s: float
    scores: str
    stages: list[StageResult] = field(default_factory=list)
    fresh_start_s: float | None = None  # a start on a new actor, where it differs

    def total(self, name: str) -> float:
        return sum(getattr(s, name) for s in self.stages)

    @property
    def wall_s(self) -> float:
        return self.total("wall_s")

    @property
    def gpu_use(self) -> float:
        gpu_s = self.total("gpu_s")
        return self.total("busy_gpu_s") / gpu_s if gpu_s else 0.0

    @property
    def longest_trial_s(self) -> float:
        return max((s.longest_trial_s for s in self.stages), default=0.0)

    def to_dict(self) -> dict:
        totals = {name: self.total(name) for name in ("wall_s", "busy_gpu_s", "wasted_gpu_s", "trials", "tune_trials", "trials_wasted",
                                                       "work_bound_s", "critical_path_s", "tail_idle_gpu_s")}
        totals.update(gpu_use=self.gpu_use, longest_trial_s=self.longest_trial_s,
                      wall_in_longest_trials=self.wall_s / self.longest_trial_s if self.longest_trial_s else None)
        return {"job": self.job, "gpus": self.gpus, "slots": self.slots, "step_time_s": self.step_time_s,
                "start_s": self.start_s, "fresh_start_s": self.fresh_start_s, "scores": self.scores,
                "stages": [{**asdict(s), "gpu_use": s.gpu_use} for s in self.stages], "total": totals}

    def describe(self) -> str:
        hours = lambda seconds: f"{seconds / 3600:,.1f}"  # noqa: E731
        longest = self.longest_trial_s or 1.0
        lines = [f"{self.job} on {self.gpus:g} GPUs ({self.slots} trials at once), {self.step_time_s:g} s per step, "
                 f"{self.start_s:g} s to start a trial"
                 + (f" ({self.fresh_start_s:g} s on a new actor)" if self.fresh_start_s is not None else "")
                 + f"; scores replayed from {self.scores}",
                 f"{'stage':<6}{'component':<16}{'outcome':<11}{'kept':<16}{'blocks':>6}{'trials':>8}"
                 f"{'wall h':>9}{'x longest':>10}{'GPU use':>8}{'GPU-h':>10}{'wasted':>9}{'work/N h':>9}{'crit. h':>8}"]
        for s in self.stages:
            lines.append(f"{s.stage:<6}{s.component:<16}{s.outcome:<11}{(s.kept or '-')[:15]:<16}{s.blocks:>6}"
                         f"{s.trials:>8,}{hours(s.wall_s):>9}{s.wall_s / longest:>10.1f}{s.gpu_use:>8.0%}"
                         f"{hours(s.busy_gpu_s):>10}{hours(s.wasted_gpu_s):>9}{hours(s.work_bound_s):>9}"
                         f"{hours(s.critical_path_s):>8}")
        busy = self.total("busy_gpu_s")
        lines.append(f"{'total':<6}{'':<16}{'':<11}{'':<16}{'':>6}{int(self.total('trials')):>8,}{hours(self.wall_s):>9}"
                     f"{self.wall_s / longest:>10.1f}{self.gpu_use:>8.0%}{hours(busy):>10}"
                     f"{hours(self.total('wasted_gpu_s')):>9}{hours(self.total('work_bound_s')):>9}"
                     f"{hours(self.total('critical_path_s')):>8}")
        raced = [s for s in self.stages if s.best is not None]
        lines.append(f"longest trial {hours(longest)} h; wasted {self.total('wasted_gpu_s') / busy if busy else 0:.0%} of the "
                     f"GPU-hours trained; idle at stage ends {hours(self.total('tail_idle_gpu_s'))} GPU-h; kept the "
                     f"reference's best in {sum(s.kept == s.best for s in raced)} of {len(raced)} stages")
        return "\n".join(lines)


def simulate_stage(spec, plan: StagePlan, cluster: Cluster, model: TrialModel, replay: ScoreReplay,
                   measured: dict[str, float] | None = None) -> StageResult:
    """One stage on the cluster: dispatch, race and stop exactly as the Tune searcher does. `measured`:
    task -> a trial's seconds, for the tasks whose trials have ended (in this stage or an earlier one),
    which is what packing knows of a row's length (the searcher's measured durations); updated here."""
    racing, tasks = spec.racing, tuple(spec.tasks)
    slots, per_trial = cluster.slots(spec.resources, spec.max_concurrent_trials)
    measured = {} if measured is None else measured
    lengths = {}

    def seconds(row: PlanRow) -> float:
        if row.task not in lengths:
            lengths[row.task] = model.seconds(row)
        return lengths[row.task]

    dispatch = Dispatch(plan, racing.lookahead if racing is not None else None, slots, length=seconds,
                        rows_per_trial=spec.rows_per_trial)
    records: list[dict] = []
    recorded: set[str] = set()
    # Rows handed out without a record yet -> (when it starts training, row); a packed trial's later
    # rows start as the one before them ends.
    running: dict[str, tuple[float, PlanRow]] = {}
    events: list[tuple[float, int, str, bool]] = []  # (a row's end, hand-out order, row id, whether its trial ends)
    now, driver_free, launched, busy, last_launch = 0.0, 0.0, 0, 0.0, 0.0
    trials_running = trials_launched = 0
    state = race_state(plan, records, racing, tasks)
    outstanding = {row.trial_id for row in state.pending}
    while True:
        while not state.done and trials_running < slots:
            rows = dispatch.next_trial(state, recorded, running, seconds=lambda row: measured.get(row.task),
                                       start_s=model.start_s)
            if not rows:
                break
            launch = max(now, driver_free)
            driver_free = launch + model.start_cost(trials_launched, slots)
            start = driver_free
            for position, row in enumerate(rows):  # back to back in the trial's one actor
                running[row.trial_id] = (start, row)
                start += seconds(row)
                heapq.heappush(events, (start, launched, row.trial_id, position == len(rows) - 1))
                launched += 1
            trials_running += 1
            trials_launched += 1
            last_launch = launch
        if not events:
            break
        now = events[0][0]
        while events and events[0][0] == now:  # rows ending at the same moment all report before the next launch
            _, _, trial_id, trial_ends = heapq.heappop(events)
            start, row = running.pop(trial_id)
            trials_running -= trial_ends
            busy += seconds(row) * per_trial
            measured.setdefault(row.task, seconds(row))
            score = replay.score(row)
            records.append({"trial_id": row.trial_id, "choice": row.choice, "block": row.block, "design_id": row.design_id,
                            "task": row.task, "seed": row.seed, "status": "finished" if score is not None else "failed",
                            "score": score, "seconds": seconds(row), "start": start, "end": now})
            recorded.add(trial_id)
            outstanding.discard(trial_id)
        if not outstanding:  # the procedure's next look is complete: judge (the race replays every record)
            state = race_state(plan, records, racing, tasks)
            outstanding = {r.trial_id for r in state.pending}
        if state.done:
            break
    started = {row_id: value for row_id, value in running.items() if value[0] < now}  # a packed trial's queued rows never start
    launched = len(records) + len(started)
    running = started
    stopped_gpu_s = sum(max(0.0, now - start) * per_trial for start, _ in running.values())  # stopped at the decision
    busy += stopped_gpu_s
    used = judged_records(plan, state, records) if racing is not None else records
    used_gpu_s = sum(r["seconds"] for r in used) * per_trial
    claim = state.outcome in (SELECTED, TIE)
    delta = racing.delta if racing is not None else 0.0
    kept = decide_plan(plan, records, racing, tasks).winner  # the controller's decision, on the same records
    right = None
    if claim:
        chosen = state.tied if state.outcome == TIE else (kept,)
        right = all(replay.mean(replay.best) - replay.mean(c) < delta for c in chosen)
    longest_needed = max((r["seconds"] for r in used), default=0.0)
    return StageResult(
        stage=plan.stage, component=plan.component, choices=len(plan.choices), outcome=state.outcome, kept=kept,
        best=replay.best, right=right, blocks=state.decided_at or state.blocks, trials=launched, tune_trials=trials_launched,
        trials_wasted=launched - len(used), wall_s=now, longest_trial_s=max(lengths.values(), default=0.0),
        gpu_s=now * cluster.gpus, busy_gpu_s=busy, stopped_gpu_s=stopped_gpu_s, wasted_gpu_s=busy - used_gpu_s,
        work_bound_s=used_gpu_s / cluster.gpus, critical_path_s=longest_needed + model.start_s, tail_s=now - last_launch,
        tail_idle_gpu_s=max(0.0, (now - last_launch) * cluster.gpus
                            - _busy_between(records, running, last_launch, now, per_trial)),
    )


def _busy_between(records: list[dict], running: dict, since: float, until: float, per_trial: float) -> float:
    """GPU-time trained between `since` and `until`, by finished and by stopped trials."""
    spans = [(r["start"], r["end"]) for r in records] + [(start, until) for start, _ in running.values()]
    return sum(max(0.0, min(end, until) - max(start, since)) for start, end in spans) * per_trial


def measured_step_time(run: str) -> float:
    """The median seconds per optimiser step of a run's finished trials (their wall time over their steps)."""
    from peft_search.search.storage.paths import StoragePath
    from peft_search.search.storage.records import read_records
    from peft_search.train.trial import TrialConfig

    directory = StoragePath.parse(run)
    if not (directory / "state.json").is_file():
        raise InputError("--step-time-from", f"{run} is not a run directory (no state.json)")
    per_step = []
    for record in read_records(directory):
        if record["status"] == "finished" and record.get("wall_time_s"):
            steps = config_steps(TrialConfig.from_dict(json.loads(record["config_json"])))
            if steps:
                per_step.append(record["wall_time_s"] / steps)
    if not per_step:
        raise InputError("--step-time-from", f"{run} has no finished trial whose steps are known")
    return float(np.median(per_step))


def measured_start_cost(run: str) -> float:
    """The driver's cost per trial measured on a run (`simulate --start-from RUN`, issue 38): the median
    over its ended stages of the start cost each timed as it ran (`state.json`'s `start_cost_s`), or for
    a stage run before that was recorded, of its slot time that did not train per trial
    (`time_left.run_start_cost_s`)."""
    from peft_search.search.storage.records import read_records

    directory, state = _run_state(run)
    cost = run_start_cost_s(state.get("stages", []), read_records(directory))
    if cost is None:
        raise InputError("--start-from", f"{run} has no stage of at least {START_COST_MIN_TRIALS} timed trials")
    return cost


def measured_trial_model(run: str, step_time_s: float) -> TrialModel:
    """The trial model with the start costs a run timed: on reused actors (the run's start cost where
    its stages did not time reused starts apart) and on new ones (`time_left.run_start_costs_s`)."""
    _, state = _run_state(run)
    fresh_s, reused_s = run_start_costs_s(state.get("stages", []))
    return TrialModel(step_time_s, reused_s if reused_s is not None else measured_start_cost(run), fresh_s)


def _run_state(run: str):
    from peft_search.search.storage.paths import StoragePath

    directory = StoragePath.parse(run)
    if not (directory / "state.json").is_file():
        raise InputError("--start-from", f"{run} is not a run directory (no state.json)")
    return directory, json.loads((directory / "state.json").read_text())


def simulate_job(job: str, gpus: float, step_time_s: float | None = None, step_time_from: str | None = None,
                 start_s: float = DEFAULT_START_S, scores: str = "decisive", seed: int = 0, backbone: str | None = None,
                 data_dir: str | None = None, start_from: str | None = None) -> tuple[SearchSimulation, str]:
    """`peft-search simulate`: the job file's search on `gpus` GPUs; also says where the step time came from.
    `backbone`: a local directory whose config stands in for the job's backbone (its shape is all
    planning needs; for a Hub id without network)."""
    from peft_search.search.preflight import load_profile
    from peft_search.search.spec import SearchSpec, load_spec
    from peft_search.train.tasks import get_task

    if not gpus > 0:
        raise InputError("--gpus", f"give a positive number of GPUs, got {gpus:g}")
    spec = load_spec(job, known_tasks=get_task)
    if data_dir is not None:
        spec = spec.with_data_dir(Path(data_dir).expanduser().resolve())
    if backbone is not None:
        spec = SearchSpec.from_dict({**spec.to_dict(), "backbone": backbone})
    profile, _ = load_profile(spec, offline=False, unchecked=[])
    if step_time_from is not None:
        step_time_s, source = measured_step_time(step_time_from), f"measured on {step_time_from}"
    elif step_time_s is not None:
        source = "given"
    else:
        step_time_s, source = MEASURED_STEP_TIME_S, "MiniLM on 2 CPU cores (docs/benchmarks.md); give --step-time for GPUs"
    if not step_time_s > 0:
        raise InputError("--step-time", f"give a positive number of seconds, got {step_time_s:g}")
    model = TrialModel(step_time_s, start_s)
    if start_from is not None:
        model = measured_trial_model(start_from, step_time_s)
        fresh = f" ({model.fresh_start_s:.2f} s on a new actor)" if model.fresh_start_s is not None else ""
        source += f"; start cost {model.start_s:.2f} s per trial{fresh}, measured on {start_from}"
    return simulate_search(spec, profile, gpus, model, scores, seed, job=str(job)), source


class Rehearsal:
    """A real search on a Ray cluster whose trials do not train: each holds its slot for its modelled
    seconds and reports the score the simulator replays for its row (the same seeds: the same scores
    and decisions as `simulate_search`), so a cluster's scheduling can be held against the simulator."""

    def __init__(self, reference: Reference, model: TrialModel, seed: int = 0):
        self.reference, self.model, self.seed = reference, model, seed

    def for_plan(self, plan: StagePlan):
        replay = ScoreReplay(self.reference, plan, random.Random(derive_seed(self.seed, "simulate", plan.stage)))
        return lambda row: {"seconds": self.model.seconds(row), "score": replay.score(row)}


@dataclass(frozen=True)
class RehearsalResult:
    run_dir: str
    wall_s: float  # the stages' wall-clock, as the run's state recorded it
    gpu_use: float  # recorded trials' GPU-time over the GPUs' time while stages ran
    trials: int  # trials recorded
    kept: tuple[str | None, ...]  # each stage's kept choice


def rehearse(spec, gpus: float, model: TrialModel, scores: str = "decisive", seed: int = 0, address: str | None = None,
             run_dir=None) -> RehearsalResult:
    """Run `spec`'s staged search on the Ray cluster at `address` (or one started here) with rehearsed
    trials, and measure it as the simulator does."""
    from peft_search.search.controller import Controller
    from peft_search.search.storage.records import read_records

    controller = Controller.create(spec, run_dir=run_dir)
    controller.rehearsal = Rehearsal(Reference(STREAMS.get(scores, Path(scores))), model, seed)
    state = controller.run(address)
    _, per_trial = Cluster(gpus).slots(spec.resources, spec.max_concurrent_trials)
    records = read_records(controller.run_dir)
    stages = [s for s in state["stages"] if s["status"] != "skipped"]
    wall = sum(s.get("wall_time_s", 0.0) for s in stages)
    busy = sum(r["wall_time_s"] for r in records if r["status"] == "finished") * per_trial
    kept = tuple(s.get("winner") for s in state["stages"])
    return RehearsalResult(str(controller.run_dir), wall, busy / (gpus * wall) if wall else 0.0, len(records), kept)


def simulate_search(spec, profile, gpus: float, model: TrialModel, scores: str = "decisive", seed: int = 0,
                    job: str = "job") -> SearchSimulation:
    """The whole staged search on `gpus` GPUs, its scores replayed from `scores` (decisive, tied or a
    Parquet file of trial records), the resampling drawn from `seed`."""
    if spec.joint is not None:
        raise InputError("joint", "the simulator models the staged search; a joint search has no stages to simulate")
    reference = Reference(STREAMS.get(scores, Path(scores)))
    cluster = Cluster(gpus)
    slots, _ = cluster.slots(spec.resources, spec.max_concurrent_trials)
    result = SearchSimulation(job, gpus, slots, model.step_time_s, model.start_s, scores, fresh_start_s=model.fresh_start_s)
    space = spec.initial_space()
    measured: dict[str, float] = {}  # task -> a trial's seconds, once one has ended (what packing knows)
    for index, stage in enumerate(spec.stages):
        plan = plan_stage(spec, index, space, profile)
        if plan.skipped:
            result.stages.append(StageResult(index, stage.component, len(stage.candidates), "skipped"))
            continue
        replay = ScoreReplay(reference, plan, random.Random(derive_seed(seed, "simulate", index)))
        stage_result = simulate_stage(spec, plan, cluster, model, replay, measured)
        result.stages.append(stage_result)
        space = space.clamp(stage.component, space.parse_choice(stage.component, stage_result.kept))
    return result


__all__ = ["Cluster", "DEFAULT_START_S", "Reference", "STREAMS", "ScoreReplay", "SearchSimulation", "StageResult", "TrialModel",
           "Rehearsal", "RehearsalResult", "measured_start_cost", "measured_step_time", "measured_trial_model", "rehearse",
           "simulate_job", "simulate_search", "simulate_stage"]
