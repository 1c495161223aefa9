"""The stage controller: refine the design space greedily, one component per stage, then run the
final evaluation when the spec asks for one.

For each stage: plan the trials (deterministic from the search seed and the stage) and write the
plan; run them as one Ray Tune experiment; read the trial records (once); decide by mean design
score; clamp the space to the winner; write the state atomically; go on. The state lives outside
Tune (`state.json`), so `resume` can pick up any interrupted run: decided stages are not touched, a
finished trial is never run again (its record exists) and never lost. The report is written by the
caller (`peft_search.reporting` sits above search and reads what this leaves).

A job is checked completely before its run directory exists (`preflight.py`, re-exported here as
`prepare_spec`); a run that ends early anyway says `failed` in its state, with the reason.
"""

from __future__ import annotations

import datetime
import re
import sys
import time
from pathlib import Path

from peft_search.errors import InputError
from peft_search.search import interrupt
from peft_search.search.preflight import prepare_spec  # noqa: F401 - the controller's entry point, re-exported
from peft_search.search.preflight import say_checkpoint_heads
from peft_search.search.spec import SearchSpec, load_run_spec, spec_diff
from peft_search.search.seeds import derive_seed
from peft_search.search.stage.decide import Decision, decide_plan, decision_outcome, is_done, stage_outcome
from peft_search.search.stage.plan import StagePlan, plan_path, plan_stage, read_plan, write_plan
from peft_search.search.storage.records import read_records, write_results
from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.run_dir import (
    SPEC_FILE,
    STATE_FILE,
    read_json,
    require_run,
    storage_root,
    utc_now,
    write_json_atomic,
)
from peft_search.search.time_left import unplanned_stage_tasks
from peft_search.search.trials import trial_resources
from peft_search.space import Design, DesignSpace

STATE_FORMAT = 1


class SearchFailed(RuntimeError):
    """The search cannot go on (a stage with no finished design); the state says so."""


def new_run_dir(spec: SearchSpec, job_path: str | Path) -> StoragePath:
    """`<storage>/<name>-<time>`: always one directory directly inside the storage."""
    name = spec.name or _name_from_file(job_path)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    storage = storage_root(spec.storage)
    run_dir = storage / f"{name}-{stamp}"
    if run_dir.parent != storage:  # a checked name never gets here; the guard keeps it so
        raise InputError("name", f"{name!r} would place the run outside {storage}")
    suffix = 1
    while run_dir.exists():  # two runs of one job started within the same second
        suffix += 1
        run_dir = storage / f"{name}-{stamp}-{suffix}"
    return run_dir


def _name_from_file(job_path: str | Path) -> str:
    """A run name from the job file's name, with what a run name may not hold replaced by `_`."""
    return re.sub(r"\.\.+", ".", re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(job_path).stem)).lstrip(".-")[:100] or "run"


class Controller:
    def __init__(self, run_dir: StoragePath, spec: SearchSpec, state: dict, out=None):
        self.run_dir = run_dir
        self.spec = spec
        self.state = state
        self.out = out
        self.final_path: StoragePath | None = None  # final.parquet, once the final evaluation ran
        self.rehearsal = None  # a cluster rehearsal (search/simulate.py): trials sleep their modelled length
        self.tracker = None  # the spec's experiment trackers, once running (search/tracking.py)

    # ---- creating and opening runs ----------------------------------------------------------------

    @classmethod
    def create(cls, spec: SearchSpec, run_dir: StoragePath | None = None, out=None, first_plan: StagePlan | None = None,
               job_path: str | Path | None = None) -> "Controller":
        """A new run directory with the spec and a fresh state; `first_plan` (stage 0's plan, made by
        `preflight` on the same spec) is written as the plan the run starts from. Without `run_dir`,
        a new `<storage>/<name>-<time>` (`new_run_dir`), claimed by creating it: two searches started
        in the same second (two users, one cluster and storage) each get their own."""
        if run_dir is None:
            while True:
                run_dir = new_run_dir(spec, job_path or "job")
                try:
                    run_dir.mkdir(parents=True, exist_ok=False)  # atomic on a file system: one claimant wins
                    break
                except FileExistsError:
                    continue  # the other search took this name between our look and our claim
        else:
            run_dir.mkdir(parents=True, exist_ok=False)
        (run_dir / SPEC_FILE).write_text(spec.to_yaml())
        if first_plan is not None:
            write_plan(first_plan, plan_path(run_dir, 0))
        state = {
            "format": STATE_FORMAT,
            "status": "running",
            "created_at": utc_now(),
            "updated_at": utc_now(),
            "space": spec.initial_space().to_dict(),
            "stages": [
                {"stage": i, "component": stage.component, "choices": list(stage.candidates), "status": "pending"}
                for i, stage in enumerate(spec.stages)
            ] if spec.joint is None else [
                # A joint search is one stage over every component; its one "choice" is the sampler.
                {"stage": 0, "component": "joint", "choices": [spec.joint.sampler], "status": "pending",
                 "components": {stage.component: list(stage.candidates) for stage in spec.stages}}
            ],
            "discovered": None,
        }
        controller = cls(run_dir, spec, state, out)
        controller.save_state()
        return controller

    @classmethod
    def open(cls, path: str | Path, new_spec: SearchSpec | None = None, force: bool = False, out=None) -> "Controller":
        """An existing run; `new_spec` (if given) must equal the run's spec unless `force`."""
        run_dir = require_run(path)
        spec = load_run_spec(run_dir / SPEC_FILE)
        state = read_json(run_dir / STATE_FILE)
        for stage_state in state["stages"]:  # a state written before outcomes says `decided`
            stage_state["status"] = stage_outcome(stage_state)
        if new_spec is not None:
            differences = spec_diff(spec, new_spec, ignore=("storage",))
            if differences and not force:
                raise InputError(
                    "--spec",
                    "the job spec changed since this run started; resume with --force to run the new spec "
                    "(decided stages stay as they are):\n  " + "\n  ".join(differences),
                )
            if differences:
                spec = new_spec.with_storage(spec.storage)
                (run_dir / SPEC_FILE).write_text(spec.to_yaml())
        return cls(run_dir, spec, state, out)

    def save_state(self) -> None:
        self.state["updated_at"] = utc_now()
        write_json_atomic(self.run_dir / STATE_FILE, self.state)

    def say(self, text: str) -> None:
        # None: whatever sys.stdout is at the time (not at import time).
        print(text, file=self.out or sys.stdout, flush=True)

    # ---- running ------------------------------------------------------------------------------------

    def run(self, address: str | None = None) -> dict:
        """Run every stage not yet decided, then (when the spec has a `final:` section) the final
        evaluation; returns the state. SearchFailed when a stage cannot decide. SIGINT or SIGTERM
        (interrupt.py) stop it undecided: the state says `interrupted` and `RunInterrupted` goes on
        (KeyboardInterrupt after a second signal). An error ends it `failed`, with the reason; a run
        killed outright stays `running`. `resume` continues any of them."""
        with interrupt.interruptible():
            try:
                return self._run(address)
            except (interrupt.RunInterrupted, KeyboardInterrupt) as stop:
                self._mark_ended("interrupted", stop)
                raise
            except BaseException as error:
                self._mark_ended("failed", error)
                raise

    def _mark_ended(self, status: str, error: BaseException) -> None:
        """The state as `failed` or `interrupted`, with the reason; a finished search stays finished
        (what failed after it, the final evaluation, says so itself)."""
        if self.state["status"] == "finished":
            return
        reason = str(error).strip().splitlines()[0][:500] if str(error).strip() else ""
        self.state.update(status=status, error=f"{type(error).__name__}: {reason}".rstrip(": "))
        self.state[f"{status}_at"] = utc_now()
        for stage_state in self.state["stages"]:
            if stage_state["status"] == "running":
                stage_state["status"] = status  # not decided; `resume` runs it again from its records
        try:
            self.save_state()
        except OSError:
            pass  # the storage itself failed: the original error says more than this one would

    def _run(self, address: str | None) -> dict:
        from peft_search.search.ray_tune import start_ray

        if self.state["status"] != "running":  # a resumed run that had failed
            self.state["status"] = "running"
            self.state.pop("error", None)
            self.save_state()
        start_ray(address, self.say)
        self.tracker = open_tracker(self.spec, self.run_dir.name)
        say_checkpoint_heads(self.spec.backbone, self.spec.tasks, self.say, self.spec.objective)  # its own head: kept or replaced
        if self.spec.joint is not None:
            self.run_joint()
        else:
            self.run_stages()
        if self.spec.final is not None:
            from peft_search.search.final.evaluate import evaluate_run

            self.final_path = evaluate_run(self.run_dir, address=address, say=self.say, tracker=self.tracker)
        return self.state

    def run_stages(self) -> dict:
        from peft_search.peft import load_backbone, profile_backbone
        from peft_search.search.ray_tune import cluster_slots
        from peft_search.search.stage.experiment import run_stage

        self.say(f"run directory: {self.run_dir}")
        profile = profile_backbone(load_backbone(self.spec.backbone, meta=True))
        space = DesignSpace.from_dict(self.state["space"])
        num_stages = len(self.spec.stages)
        for index, stage_state in enumerate(self.state["stages"]):
            if is_done(stage_state):
                continue
            interrupt.check()  # between stages: the next one does not start
            component = stage_state["component"]
            path = plan_path(self.run_dir, index)
            if path.is_file():
                plan = read_plan(path)
            else:
                plan = plan_stage(self.spec, index, space, profile)
                write_plan(plan, path)  # before any trial starts
            stage_state.update(
                space=space.to_dict(),
                trials=plan.num_trials,
                redraws=plan.redraws,
                duplicates=plan.duplicates,
                reseeded_blocks=plan.reseeded_blocks,
                infeasible=plan.infeasible,
            )
            if plan.skipped:
                stage_state.update(status="skipped", skipped=plan.skipped)
                self.save_state()
                self.say(f"stage {index + 1}/{num_stages} ({component}): skipped, {plan.skipped}")
                continue
            slots = cluster_slots(self.spec.resources, self.spec.max_concurrent_trials)
            # `slots`: the trials the cluster ran at once, for `status`'s time left (search/time_left.py).
            stage_state.update(status="running", slots=slots)
            stage_state.setdefault("started_at", utc_now())
            self.save_state()
            redraws = sum(plan.redraws.values())
            self.say(
                f"stage {index + 1}/{num_stages} ({component}): {len(plan.choices)} choices, {plan.num_trials} trials"
                + (f", {redraws} infeasible draw{'s' if redraws != 1 else ''} redrawn" if redraws else "")
            )
            started = time.monotonic()
            tracked = self.tracker.stage_started(index, component, plan.choices) if self.tracker else None
            start_costs = run_stage(
                self.run_dir, plan, num_stages, trial_resources(self.spec.resources), self.spec.max_concurrent_trials,
                self.spec.retries, racing=self.spec.racing, tasks=self.spec.tasks, seed=derive_seed(self.spec.seed, index),
                replay=self.rehearsal.for_plan(plan) if self.rehearsal is not None else None,
                slots=slots, callbacks=[self.tracker.callback(self.run_dir, tracked)] if self.tracker else None,
                later_stages=[unplanned_stage_tasks(self.spec, later) for later in range(index + 1, num_stages)],
                rows_per_trial=self.spec.rows_per_trial)
            stage_state["wall_time_s"] = round(stage_state.get("wall_time_s", 0) + time.monotonic() - started, 1)
            # The driver's time per trial start as this stage timed it, and on new and reused actors (search/time_left.py).
            stage_state.update({key: round(cost, 3) for key, cost in start_costs.items() if cost is not None})
            interrupt.check()  # Tune stopped early: the stage is not decided, whatever finished
            records = read_records(self.run_dir, index)
            decision = self._decide(index, plan, records)
            space = space.clamp(component, space.parse_choice(component, decision.winner))
            self.state["space"] = space.to_dict()
            self._record_decision(index, num_stages, decision, records, tracked)
        return self._finish()

    def run_joint(self) -> dict:
        """The joint search (`joint:` in the spec): one stage over every component at once."""
        from peft_search.peft import load_backbone, profile_backbone
        from peft_search.search.stage.joint import decide_joint, run_joint

        stage_state = self.state["stages"][0]
        if not is_done(stage_state):
            self.say(f"run directory: {self.run_dir}")
            joint = self.spec.joint
            self.say(f"joint search ({joint.sampler}): {joint.trials} designs over {', '.join(stage_state['components'])}, "
                     f"each on {len(self.spec.tasks)} task(s) x {len(self.spec.seeds)} seed(s)")
            stage_state.update(status="running", trials=joint.trials * len(self.spec.tasks) * len(self.spec.seeds))
            stage_state.setdefault("started_at", utc_now())
            self.save_state()
            started = time.monotonic()
            profile = profile_backbone(load_backbone(self.spec.backbone, meta=True))
            tracked = self.tracker.stage_started(0, "joint", stage_state["choices"]) if self.tracker else None
            outcome = run_joint(self.run_dir, self.spec, profile, trial_resources(self.spec.resources), say=self.say,
                                callbacks=[self.tracker.callback(self.run_dir, tracked)] if self.tracker else None)
            stage_state["wall_time_s"] = round(stage_state.get("wall_time_s", 0) + time.monotonic() - started, 1)
            interrupt.check()
            records = read_records(self.run_dir, 0)
            decision = decide_joint(self.spec, records, derive_seed(self.spec.seed, 0))
            if decision.winner is None:
                self.state["status"] = "failed"
                self.save_state()
                raise SearchFailed(f"joint search: no design finished; every trial is recorded (peft-search status {self.run_dir})")
            self._record_decision(0, 1, decision, records, tracked, infeasible_draws=outcome["infeasible"])
        return self._finish()

    def _record_decision(self, index: int, num_stages: int, decision: Decision, records: list[dict], tracked,
                         **details) -> None:
        """A decided stage, staged or joint, recorded in one place: its state entry and the discovered
        design (saved with the results), the run's line, the trackers."""
        self.state["stages"][index].update(
            status=decision_outcome(decision), decision=decision.to_dict(), winner=decision.winner,
            finished=sum(1 for r in records if r["status"] == "finished"),
            failed=sum(1 for r in records if r["status"] != "finished"), decided_at=utc_now(), **details,
        )
        self.state["discovered"] = self._best_design(index, decision, records)
        write_results(self.run_dir)
        self.save_state()
        self.say(describe_decision(index, num_stages, decision))
        if self.tracker:
            self.tracker.stage_decided(tracked, decision, decision_outcome(decision))

    def _finish(self) -> dict:
        self.state["status"] = "finished"
        self.state["finished_at"] = utc_now()
        write_results(self.run_dir)
        self.save_state()
        return self.state

    def _decide(self, index: int, plan, records: list[dict]) -> Decision:
        decision = decide_plan(plan, records, self.spec.racing, self.spec.tasks, derive_seed(self.spec.seed, index))
        if decision.winner is None:
            self.state["status"] = "failed"
            self.save_state()
            errors = sorted({r["error"] for r in records if r.get("error")})[:3]
            raise SearchFailed(
                f"stage {index} ({decision.component}): no design finished, so nothing can be decided; "
                f"first errors: {errors}; every trial is recorded (peft-search status {self.run_dir})"
            )
        return decision

    def _best_design(self, index: int, decision: Decision, records: list[dict]) -> dict:
        """The best-scoring design of the winning choice: the concrete design the search hands back."""
        best = decision.best_design(decision.winner)
        design_json = next(r["design_json"] for r in records if r["design_id"] == best.design_id)
        design = Design.from_json(design_json)
        return {"stage": index, "choice": decision.winner, "design_id": best.design_id, "score": best.score,
                "design": design.to_dict()}


def open_tracker(spec: SearchSpec, run_name: str):
    """The spec's experiment trackers (None without a `tracking` section). A new run checked them in
    `preflight` before its directory existed; one that stops answering later (here, on resume) warns
    and is switched off: the search goes on, its records are the source of truth."""
    if spec.tracking is None:
        return None
    from peft_search.search.tracking import Tracker

    try:
        tracker = Tracker(spec, run_name)
    except InputError as error:  # its client was uninstalled since the run started
        print(f"warning: {error.field}: {error.message}; the search goes on without tracking", file=sys.stderr, flush=True)
        return None
    for backend in tracker.backends:
        try:
            Tracker.check_one(backend)
        except InputError as error:
            tracker.failed.add(backend.name)
            tracker.say(f"warning: {error.field}: {error.message}; the search goes on without it")
            continue
        print(f"tracking: {backend.where()}", flush=True)
    return tracker


def describe_decision(index: int, num_stages: int, decision: Decision) -> str:
    """The decision as one line: its outcome, the kept choice, how sure and what stands behind it."""
    from peft_search.search.status import decision_summary

    return f"stage {index + 1}/{num_stages} ({decision.component}) {decision_outcome(decision)}: {decision_summary(decision)}"
