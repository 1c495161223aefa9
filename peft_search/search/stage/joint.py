"""A joint search (`joint:` in the spec): every component at once instead of stage by stage, as one
Ray Tune experiment whose searcher proposes whole designs. The baseline a staged search is measured
against: the same components and candidates (the spec's stages), the same trial layer and
trainable, the same records; decided and reported like a stage (stage 0, component `joint`).

- `JointSearcher` asks an Optuna study (its TPE sampler, or its RandomSampler for the random-design
  baseline) for one categorical value per component, through Optuna's ask-and-tell interface (as
  Ray's `OptunaSearch` does inside). Each answer is realised into a design on the driver (a free
  component left out of the stages is drawn with a seed from the answer); a design that cannot
  meet the budget is told to Optuna as failed and another is asked for, so `joint.trials` counts
  trained designs.
- A design's rows (one per task and seed) are Tune trials of the one trainable
  (`trials.trial_trainable`), as a stage's are; when the last of them is recorded the design's score
  (mean over tasks) is told to Optuna.
- Resume: the designs already recorded are added to a fresh study as finished trials, and only the
  missing designs (or the missing rows of a design cut off mid-way) are trained; nothing with a
  record is trained twice.
- The decision: the best design by score. How sure the search is of it is not estimated (one
  draw per design): the decision says so instead of printing a P(best).
"""

from __future__ import annotations

import json
import math

from ray.tune.search import Searcher

from peft_search.errors import InputError
from peft_search.search.progress import RecordProgress
from peft_search.search.ray_tune import experiment_name, run_experiment
from peft_search.search.stage.decide import Decision, summarize_choice
from peft_search.search.stage.plan import PlanRow, choice_seed, trial_config
from peft_search.search.stage.scores import design_scores, trial_scores
from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.records import read_records
from peft_search.search.storage.run_dir import stage_dir
from peft_search.search.trials import TrialRow, record_failure, row_id
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
    """Hands out the rows of whole designs proposed by Optuna; see the module docstring."""

    def __init__(self, run_dir: StoragePath, spec, profile, say=None):
        import optuna
        from optuna.distributions import CategoricalDistribution

        super().__init__(metric="score", mode="max")
        self.run_dir, self.spec, self.profile = run_dir, spec, profile
        self.say = say or (lambda line: None)
        self.candidates = joint_candidates(spec)
        self.distributions = {parameter(c): CategoricalDistribution(choices) for c, choices in self.candidates.items()}
        seed = choice_seed(spec.seed, STAGE, JOINT, spec.joint.sampler) % 2**32
        sampler = optuna.samplers.TPESampler(seed=seed) if spec.joint.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        records = read_records(run_dir, STAGE)
        done = recorded_designs(records, spec.tasks, spec.seeds)
        for d in done.values():
            if d["choices"] is not None:
                self.study.add_trial(optuna.trial.create_trial(
                    params={parameter(c): v for c, v in d["choices"].items()}, distributions=self.distributions,
                    value=d["score"], state=optuna.trial.TrialState.COMPLETE if d["score"] is not None else optuna.trial.TrialState.FAIL,
                ))
        self.scores: dict[str, float | None] = {design_id: d["score"] for design_id, d in done.items()}
        # Designs cut off mid-way (some rows recorded): trained first, their missing rows only.
        self.designs_done = len(done) + len({r["design_id"] for r in records} - set(done))
        self.infeasible = 0
        self.queue: list[TrialRow] = []  # rows of designs asked for, not handed to Tune yet
        # design id -> {"trial": Optuna's (None for a resumed design), "choices", "rows": its rows not yet ended}
        self.designs: dict[str, dict] = {}
        self.in_flight: dict[str, tuple[str, str]] = {}  # Tune's trial id -> (design id, row id)
        for design_id in {r["design_id"] for r in records} - set(done):
            self._resume_design(design_id, [r for r in records if r["design_id"] == design_id])

    def suggest(self, trial_id: str):
        """The next row of a design being trained, or the first of a new design. Answers that miss
        the budget, or repeat a design already trained or training, are told to Optuna (failed, or
        the design's recorded score) and another is asked for; after MAX_SUGGESTIONS_PER_DESIGN such
        answers in a row the search ends (a small space can be exhausted before `joint.trials`)."""
        if not self.queue:
            if self.designs_done >= self.spec.joint.trials:
                return Searcher.FINISHED if not self.in_flight else None
            if not self.ask_design():
                return Searcher.FINISHED
        row = self.queue.pop(0)
        self.in_flight[trial_id] = (row.fields["design_id"], row.trial_id)
        return {"run_dir": str(self.run_dir), "row": row}

    def ask_design(self) -> bool:
        """Queue the rows of a new design Optuna proposes; False when none can be found."""
        for _ in range(MAX_SUGGESTIONS_PER_DESIGN):
            trial = self.study.ask(self.distributions)
            choices = {c: trial.params[parameter(c)] for c in self.candidates}
            design = self.design(choices)
            if design is None:
                self.infeasible += 1
                self.study.tell(trial, state=self._fail())
            elif design.design_id in self.scores:  # trained, or training: Optuna learns its score (or a failure)
                self._tell({"trial": trial}, self.scores[design.design_id])
            else:
                self.scores[design.design_id] = None  # training: a repeat is not trained twice
                rows = self.rows(design, choices, sample=self.designs_done)
                self.designs[design.design_id] = {"trial": trial, "choices": choices, "rows": {row.trial_id: row for row in rows}}
                self.queue += rows
                self.designs_done += 1
                return True
        if self.designs_done == 0:
            raise InputError(JOINT, f"{MAX_SUGGESTIONS_PER_DESIGN} designs in a row missed the budget "
                             f"{self.spec.budget_fraction:g} on this backbone; try another budget_fraction")
        self.say(f"joint search: {MAX_SUGGESTIONS_PER_DESIGN} suggestions in a row were trained already or missed the "
                 f"budget; the space is exhausted after {self.designs_done} designs")
        return False

    def _resume_design(self, design_id: str, recorded: list[dict]) -> None:
        """Queue the missing rows of a design an interrupted search had started (the same choices
        realise the same design); Optuna learns its score when they are recorded."""
        choices = recorded[0]["joint_choices"]
        design = self.design(choices)
        rows = [row for row in self.rows(design, choices, sample=recorded[0].get("sample", 0))
                if not row.record_path(self.run_dir).is_file()]
        self.scores[design_id] = None
        self.designs[design_id] = {"trial": None, "choices": choices, "rows": {row.trial_id: row for row in rows}}
        self.queue += rows

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
        design_id, row_id = self.in_flight.pop(trial_id)
        design = self.designs[design_id]
        row = design["rows"].pop(row_id)
        if error:  # raised past its retries: recorded as failed, so the design still gets a score
            record_failure(self.run_dir, row, "the trial raised past its retries (see the Tune logs)")
        if design["rows"]:
            return
        mine = [r for r in read_records(self.run_dir, STAGE) if r["design_id"] == design_id]
        (scored,) = design_scores(trial_scores(mine), list(self.spec.tasks))
        score = scored.score if scored.score is not None and math.isfinite(scored.score) else None
        self.scores[design_id] = score
        self._tell(design, score)

    def _tell(self, design: dict, score: float | None) -> None:
        import optuna

        if design["trial"] is None:  # a design resumed mid-way: Optuna learns it as a finished trial
            self.study.add_trial(optuna.trial.create_trial(
                params={parameter(c): v for c, v in design["choices"].items()}, distributions=self.distributions,
                value=score, state=optuna.trial.TrialState.COMPLETE if score is not None else self._fail()))
        elif score is None:
            self.study.tell(design["trial"], state=self._fail())
        else:
            self.study.tell(design["trial"], score)

    @staticmethod
    def _fail():
        import optuna

        return optuna.trial.TrialState.FAIL

    def save(self, checkpoint_path: str) -> None:
        from pathlib import Path

        # Nothing to keep: a resumed search rebuilds Optuna's history from the trial records.
        Path(checkpoint_path).write_text(json.dumps({"state": "rebuilt from the trial records"}))

    def restore(self, checkpoint_path: str) -> None:
        pass


def recorded_designs(records: list[dict], tasks, seeds) -> dict[str, dict]:
    """design_id -> {choices, score} for every design with a record for each task and seed."""
    by_design: dict[str, list[dict]] = {}
    for record in records:
        by_design.setdefault(record["design_id"], []).append(record)
    done = {}
    for design_id, mine in by_design.items():
        if {(r["task"], r["seed"]) for r in mine} != {(task, seed) for task in tasks for seed in seeds}:
            continue  # cut off mid-design: its missing rows run first when the search resumes
        (score,) = design_scores(trial_scores(mine), list(tasks))
        done[design_id] = {"choices": mine[0].get("joint_choices"), "score": score.score}
    return done


def run_joint(run_dir: StoragePath, spec, profile, resources: dict, say=print, callbacks: list | None = None) -> dict:
    """Train the joint search's designs still missing as one Tune experiment under `stages/0/tune`
    (`tune-<time>` when resumed); returns what the stage state records (designs, infeasible draws).
    `callbacks`: Tune callbacks (experiment tracking)."""
    searcher = JointSearcher(run_dir, spec, profile, say=say)
    rows_per_design = len(spec.tasks) * len(spec.seeds)
    to_train = (spec.joint.trials - searcher.designs_done) * rows_per_design + len(searcher.queue)
    if to_train > 0:
        directory = stage_dir(run_dir, STAGE)
        finished: dict[str, dict] = {}  # each finished record is read once, not every 2 s
        progress = RecordProgress(f"joint search ({spec.joint.sampler})",
                                  lambda: read_records(run_dir, STAGE, finished=finished), str(spec.joint.trials * rows_per_design))
        run_experiment(directory, experiment_name(directory, "tune"), resources=resources,
                       max_concurrent=spec.max_concurrent_trials, retries=spec.retries, progress=progress,
                       searcher=searcher, num_samples=to_train,  # at most: an exhausted space ends sooner
                       callbacks=callbacks)
    return {"designs": len(recorded_designs(read_records(run_dir, STAGE), spec.tasks, spec.seeds)),
            "infeasible": searcher.infeasible}


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


__all__ = ["JOINT", "JointSearcher", "decide_joint", "joint_candidates", "recorded_designs", "run_joint"]
