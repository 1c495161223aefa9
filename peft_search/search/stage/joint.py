"""A joint search (`joint:` in the spec): every component at once instead of stage by stage, as one
Ray Tune experiment whose searcher proposes whole designs. The baseline a staged search is measured
against (issue 13): the same components and candidates (the spec's stages), the same trial layer,
the same records; decided and reported like a stage (stage 0, component `joint`).

- `JointSearcher` wraps Ray's `OptunaSearch` (Optuna's TPE sampler, or its RandomSampler for the
  random-design baseline) over one categorical parameter per component. Each suggestion is realised
  into a design on the driver (a free component left out of the stages is drawn with a seed from
  the suggestion); a design that cannot meet the budget is told to Optuna as failed and another is
  asked for, so `joint.trials` counts trained designs.
- One Tune trial trains its design on every task and seed (`design_trainable`): one record per task
  and seed, as stage trials write them, then the design's score (mean over tasks) is reported.
- Resume: the designs already recorded are given back to a fresh `OptunaSearch` as evaluated
  points (`points_to_evaluate` / `evaluated_rewards`), and only the missing designs are trained; a
  design suggested again is replayed from its records, never trained twice.
- The decision: the best design by score. How sure the search is of it is not estimated (one
  draw per design): the decision says so instead of printing a P(best).
"""

from __future__ import annotations

import json
import math
import time

from ray import tune
from ray.tune.search import Searcher

from peft_search.errors import InputError
from peft_search.search.interrupt import tune_stopper
from peft_search.search.progress import RecordProgress, quiet_tune_output
from peft_search.search.stage.decide import Decision, summarize_choice
from peft_search.search.stage.plan import PlanRow, choice_seed, trial_config
from peft_search.search.stage.scores import design_scores, trial_scores
from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.records import read_records
from peft_search.search.storage.run_dir import stage_dir
from peft_search.search.trials import TrialRow, row_id, run_row
from peft_search.space.components import STRATEGY_PREFIX, strategy_group

JOINT = "joint"
STAGE = 0  # a joint search is one stage
MAX_SUGGESTIONS_PER_DESIGN = 200  # infeasible suggestions tolerated before a trained design, as the sampler does


def parameter(component: str) -> str:
    """The searcher's parameter name of a component (`strategy.G1` -> `strategy_G1`: Tune reads dots)."""
    return component.replace(".", "_")


def joint_candidates(spec) -> dict[str, list[str]]:
    """component -> its candidates, from the spec's stages."""
    return {stage.component: list(stage.candidates) for stage in spec.stages}


class JointSearcher(Searcher):
    """Hands out whole designs proposed by Optuna; see the module docstring."""

    def __init__(self, run_dir: StoragePath, spec, profile, say=None):
        import optuna
        from optuna.distributions import CategoricalDistribution
        from ray.tune.search.optuna import OptunaSearch

        super().__init__(metric="score", mode="max")
        self.run_dir, self.spec, self.profile = run_dir, spec, profile
        self.say = say or (lambda line: None)
        self.candidates = joint_candidates(spec)
        space = {parameter(c): CategoricalDistribution(choices) for c, choices in self.candidates.items()}
        seed = choice_seed(spec.seed, STAGE, JOINT, spec.joint.sampler)
        sampler = (optuna.samplers.TPESampler(seed=seed % 2**32) if spec.joint.sampler == "tpe"
                   else optuna.samplers.RandomSampler(seed=seed % 2**32))
        done = recorded_designs(read_records(run_dir, STAGE), spec.tasks)
        scored = [(d["choices"], d["score"]) for d in done.values() if d["choices"] is not None and d["score"] is not None]
        self.inner = OptunaSearch(
            space=space, sampler=sampler, metric="score", mode="max",
            points_to_evaluate=[{parameter(c): v for c, v in choices.items()} for choices, _ in scored] or None,
            evaluated_rewards=[score for _, score in scored] or None,
        )
        for d in done.values():
            if d["choices"] is not None and d["score"] is None:
                self.inner.add_evaluated_point({parameter(c): v for c, v in d["choices"].items()}, 0.0, error=True)
        self.scores: dict[str, float | None] = {design_id: d["score"] for design_id, d in done.items()}
        self.designs_done = len(done)
        self.infeasible = 0
        self.in_flight: dict[str, tuple[str, str]] = {}  # Tune's trial id -> (the inner searcher's, design id)

    def suggest(self, trial_id: str):
        """A design not trained yet. Suggestions that miss the budget, or repeat a design already
        trained or training, are told to Optuna (failed, or the design's recorded score) and another
        is asked for; after MAX_SUGGESTIONS_PER_DESIGN such suggestions in a row the search ends (a
        small space can be exhausted before `joint.trials`)."""
        for attempt in range(MAX_SUGGESTIONS_PER_DESIGN):
            inner_id = f"{trial_id}-{attempt}"
            params = self.inner.suggest(inner_id)
            choices = {c: params[parameter(c)] for c in self.candidates}
            design = self.design(choices)
            if design is None:
                self.infeasible += 1
                self.inner.on_trial_complete(inner_id, None, error=True)
            elif design.design_id in self.scores:
                score = self.scores[design.design_id]
                self.inner.on_trial_complete(inner_id, {"score": score} if score is not None else None, error=score is None)
            else:
                self.scores[design.design_id] = None  # training: a repeat is not trained twice
                self.in_flight[trial_id] = (inner_id, design.design_id)
                rows = self.rows(design, choices, sample=self.designs_done)
                self.designs_done += 1
                return {"run_dir": str(self.run_dir), "rows": [r.to_dict() for r in rows]}
        if self.designs_done == 0:
            raise InputError(JOINT, f"{MAX_SUGGESTIONS_PER_DESIGN} designs in a row missed the budget "
                             f"{self.spec.budget_fraction:g} on this backbone; try another budget_fraction")
        self.say(f"joint search: {MAX_SUGGESTIONS_PER_DESIGN} suggestions in a row were trained already or missed the "
                 f"budget; the space is exhausted after {self.designs_done} designs")
        return Searcher.FINISHED

    def design(self, choices: dict[str, str]):
        """The design `choices` realises (a free component not among the stages drawn with a seed from
        the choices); None when it cannot meet the budget."""
        from peft_search.peft.budget import plan_budget

        space = self.spec.initial_space()
        # Strategies last, and only for groups that are tuned: a suggestion's strategy for a group its
        # tunable_groups leave out does not change the design (Optuna learns that it does not matter).
        for component, choice in sorted(choices.items(), key=lambda item: item[0].startswith(STRATEGY_PREFIX)):
            if (component.startswith(STRATEGY_PREFIX) and space.tunable_groups is not None
                    and strategy_group(component, space.num_groups) not in space.tunable_groups):
                continue
            space = space.clamp(component, space.parse_choice(component, choice))

        def is_feasible(design) -> bool:
            return plan_budget(self.profile, design, self.spec.budget_fraction).feasible

        seed = choice_seed(self.spec.seed, STAGE, JOINT, json.dumps(choices, sort_keys=True))
        try:
            (design,) = space.sample(1, seed, self.profile.num_blocks, is_feasible).designs
        except InputError as error:
            if error.field != "space":
                raise
            return None
        return design

    def rows(self, design, choices: dict[str, str], sample: int) -> list[TrialRow]:
        """The design's trial rows, one per task and seed; records carry the choices that made it."""
        from peft_search.peft.budget import plan_budget

        planned = plan_budget(self.profile, design, self.spec.budget_fraction).planned_params
        rows = []
        for task in self.spec.tasks:
            for seed in self.spec.seeds:
                fields = {"stage": STAGE, "component": JOINT, "design_id": design.design_id, "task": task, "seed": seed}
                config = trial_config(self.spec, task, seed, design)
                plan_row = PlanRow(
                    trial_id=row_id({**fields, "config": config.to_dict()}), stage=STAGE, component=JOINT,
                    choice=self.spec.joint.sampler, choice_index=0, sample=sample, design_id=design.design_id,
                    design_json=design.to_json(), task=task, seed=seed, planned_params=planned, config=config,
                )
                row = plan_row.trial_row()
                rows.append(TrialRow(row.trial_id, row.config, row.record_dir, {**row.fields, "joint_choices": choices}))
        return rows

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.in_flight:
            return
        inner_id, design_id = self.in_flight.pop(trial_id)
        score = (result or {}).get("score")
        if error or score is None or not math.isfinite(score):
            self.inner.on_trial_complete(inner_id, None, error=True)
        else:
            self.scores[design_id] = score
            self.inner.on_trial_complete(inner_id, {"score": score})

    def save(self, checkpoint_path: str) -> None:
        from pathlib import Path

        # Nothing to keep: a resumed search rebuilds Optuna's history from the trial records.
        Path(checkpoint_path).write_text(json.dumps({"state": "rebuilt from the trial records"}))

    def restore(self, checkpoint_path: str) -> None:
        pass


def design_trainable(config: dict) -> None:
    """Ray Tune function trainable of a joint search: train one design on every task and seed
    (`config["rows"]`, one TrialRow dict each; recorded as they finish), report the design's score."""
    run_dir = StoragePath.parse(config["run_dir"])
    records = []
    for data in config["rows"]:
        row = TrialRow.from_dict(data)
        record, _ = run_row(run_dir, row)
        records.append(record)
    (design,) = design_scores(trial_scores(records), list(dict.fromkeys(r["task"] for r in records)))
    score = design.score if design.score is not None else float("nan")
    tune.report({"score": score, "design_id": design.design_id,
                 "trials_failed": sum(1 for r in records if r["status"] != "finished")})


def recorded_designs(records: list[dict], tasks) -> dict[str, dict]:
    """design_id -> {choices, score} for every design with a record for each task and seed."""
    by_design: dict[str, list[dict]] = {}
    for record in records:
        by_design.setdefault(record["design_id"], []).append(record)
    done = {}
    for design_id, mine in by_design.items():
        if {r["task"] for r in mine} != set(tasks):
            continue  # cut off mid-design: its missing rows run again when it is suggested again
        (score,) = design_scores(trial_scores(mine), list(tasks))
        done[design_id] = {"choices": mine[0].get("joint_choices"), "score": score.score}
    return done


def run_joint(run_dir: StoragePath, spec, profile, resources: dict, say=print) -> dict:
    """Train the joint search's designs still missing as one Tune experiment under `stages/0/tune`
    (`tune-<time>` when resumed); returns what the stage state records (designs, infeasible draws)."""
    searcher = JointSearcher(run_dir, spec, profile, say=say)
    remaining = spec.joint.trials - searcher.designs_done
    if remaining > 0:
        directory = stage_dir(run_dir, STAGE)
        quiet_tune_output()
        name = "tune" if not (directory / "tune").exists() else f"tune-{int(time.time())}"
        tuner = tune.Tuner(
            tune.with_resources(design_trainable, resources),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=remaining,
                max_concurrent_trials=spec.max_concurrent_trials,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(directory), stop=tune_stopper(),
                                      failure_config=tune.FailureConfig(max_failures=spec.retries), verbose=0),
        )
        total = spec.joint.trials * len(spec.tasks) * len(spec.seeds)
        finished: dict[str, dict] = {}  # each finished record is read once, not every 2 s
        progress = RecordProgress(f"joint search ({spec.joint.sampler})",
                                  lambda: read_records(run_dir, STAGE, finished=finished), str(total))
        progress.start()
        try:
            tuner.fit()
        finally:
            progress.stop()
    return {"designs": len(recorded_designs(read_records(run_dir, STAGE), spec.tasks)), "infeasible": searcher.infeasible}


def decide_joint(spec, records: list[dict], seed: int) -> Decision:
    """The best design by score, as a Decision with one choice (the sampler) whose designs are every
    design trained; P(best) is not estimated (one draw per design)."""
    sampler = spec.joint.sampler
    designs = design_scores(trial_scores(records), spec.tasks)
    stats = summarize_choice(sampler, [d.score for d in designs], sum(1 for r in records if r["status"] != "finished"),
                             collapsed_trials=sum(1 for r in records if r.get("collapsed")))
    scored = any(d.score is not None for d in designs)
    return Decision(
        component=JOINT, winner=sampler if scored else None, runner_up=None, win_probability=None, choices=(stats,),
        seed=seed, resamples=0, designs=tuple(designs), method=JOINT, trials_run=len(records),
        trials_planned=spec.joint.trials * len(spec.tasks) * len(spec.seeds),
        collapsed_trials=stats.n_collapsed_trials,
    )


__all__ = ["JOINT", "JointSearcher", "decide_joint", "design_trainable", "joint_candidates", "recorded_designs", "run_joint"]
