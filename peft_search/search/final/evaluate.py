"""The final evaluation: the discovered design against baseline presets at the same budget (the spec's
`final:` section; `peft-search evaluate RUN`, and at the end of `peft-search run`).

Fair by construction, per task:
- every contender's learning rate is tuned the same way: Optuna's TPE sampler through Ray Tune's
  `OptunaSearch`, `final.tuning.trials` trials over the same log-uniform range, with the same sampler
  seed (so every contender starts from the same random learning rates) and the same training seed
  (`final.seeds[0]`, so the same training examples);
- tuning trials train on the training data less a held-back slice (`final.tuning.holdout_fraction`,
  the trial layer's `holdout_fraction`) and are scored on that slice, never on the dev set;
- the tuned rate is the one with the best held-back score (ties: the lower rate); a tuning trial that
  fails or diverges counts as failed for Optuna (reported as NaN); with `final.tuning.task` every
  contender is tuned on that one task only and trains at its rate on every task;
- then each contender trains once per seed of `final.seeds` at its tuned rate on the whole training
  data and is scored on the dev set, at the final fidelity and the spec's budget (full fine-tuning
  trains every parameter; BitFit's size is fixed).
A preset that cannot realise the budget on this backbone (the paper's `s4-t5` on a backbone with too
few blocks, say) is left out, and why is written to `final/skipped.json`.

Layout under the run directory:

    final/tuning/<task>/<contender>/<trial_id>.json one record per tuning trial
    final/tuning/<task>/<contender>/best.json       the tuned rate, once the contender's tuning ended
    final/runs/<trial_id>.json                      one record per seeded final run
    final/weights/<task>/                           the discovered design's trained PEFT state (seed final.seeds[0])
    final/skipped.json                              contenders (or contender x task) not compared, and why
    final/done.json                                 written when everything finished
    final/final.json                                the final section evaluated (the spec's or --final FILE's)
    final/tune/                                     the Ray Tune experiments
    final.parquet                                   every tuning trial and final run (column `phase`)

Resumable like the stages: a run with a record is never trained again; a contender's tuning that was
interrupted before its `best.json` restarts from scratch (its partial records are removed), so that
every contender gets exactly the same number of tuning trials. Every run is a `TrialRow` trained by
the one trainable of `search.trials`, as stage trials are. Ray is imported only to run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from peft_search.errors import InputError
from peft_search.search import interrupt
from peft_search.search.progress import RecordProgress
from peft_search.search.spec import FinalSpec, SearchSpec, load_run_spec
from peft_search.search.seeds import derive_seed
from peft_search.search.stage.plan import trial_config
from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.records import FINAL_DIR, FINAL_DONE_FILE, read_final_records, write_final
from peft_search.search.storage.run_dir import STATE_FILE, read_json, require_run, task_slug, utc_now, write_json_atomic
from peft_search.search.trials import TrialRow, trial_resources
from peft_search.space import Design
from peft_search.train.presets import MAX_LEARNING_RATE

DISCOVERED = "discovered"
FINAL_SUMMARY_FILE = "final.json"  # the comparison (FinalComparison); each run's record is in final.parquet


@dataclass(frozen=True)
class Contender:
    name: str  # "discovered" or a preset name
    preset: str | None
    design: Design | None  # the discovered design; None for presets


def final_dir(run_dir: StoragePath) -> StoragePath:
    return run_dir / FINAL_DIR


def weights_subdir(task: str) -> str:
    """Where the discovered design's trained state for `task` is kept, relative to the run directory."""
    return f"{FINAL_DIR}/weights/{task_slug(task)}"


# ---- what is compared -------------------------------------------------------------------------------


def open_final(path: str | Path, final: FinalSpec | None = None) -> tuple[StoragePath, SearchSpec, FinalSpec, dict]:
    """The run, its spec, the final section to evaluate (the spec's, unless `final` is given) and the
    discovered design; InputError when there is no final section or nothing discovered yet."""
    run_dir = require_run(path)
    spec = load_run_spec(run_dir / "spec.yaml")
    if final is not None:
        spec = spec.with_final(final)
    final = spec.final
    if final is None:
        raise InputError(
            "final",
            f"{run_dir / 'spec.yaml'} has no final section; give one with --final FILE (a YAML mapping of the "
            "spec's final keys: contenders, seeds, fidelity, tuning; see peft-search schema)",
        )
    state = read_json(run_dir / STATE_FILE)
    if not state.get("discovered"):
        raise InputError("RUN", f"{run_dir} has no decided stage yet, so no discovered design to evaluate")
    return run_dir, spec, final, state["discovered"]


def evaluated_final(run_dir: StoragePath, spec: SearchSpec) -> FinalSpec | None:
    """The final section a run was last evaluated with (`--final FILE` included), else its spec's."""
    path = final_dir(run_dir) / FINAL_SUMMARY_FILE
    if not path.is_file():
        return spec.final
    return spec.with_final(read_json(path)).final


def contenders(spec: SearchSpec, final: FinalSpec, discovered: dict) -> tuple[list[Contender], dict[str, str]]:
    """The contenders that fit the budget on this backbone, and why the others are left out."""
    from peft_search.peft import load_backbone, profile_backbone
    from peft_search.train import plan_fit

    profile = profile_backbone(load_backbone(spec.backbone, meta=True))
    chosen, skipped = [], {}
    for name in final.contenders:
        if name == DISCOVERED:
            contender = Contender(name, None, Design.from_dict(discovered["design"]))
        elif name in final.designs:
            contender = Contender(name, None, load_design(final.designs[name], f"final.designs.{name}"))
        else:
            contender = Contender(name, name, None)
        try:
            plan_fit(profile, contender.design if contender.design is not None else name, spec.budget_fraction,
                     backbone=spec.backbone)
        except InputError as error:
            skipped[name] = f"does not fit {spec.backbone}: {error.message}"
            continue
        chosen.append(contender)
    return chosen, skipped


def load_design(source: str, field: str) -> Design:
    """A design to compare: a run's discovered design (a run directory or URI) or a design JSON file."""
    path = StoragePath.parse(source, field)
    try:
        if (path / STATE_FILE).is_file():
            found = read_json(path / STATE_FILE).get("discovered")
            if not found:
                raise InputError(field, f"{source} has no discovered design yet (no decided stage)")
            return Design.from_dict(found["design"])
        if path.is_file():
            return Design.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(field, f"{source}: not a design JSON file or a run ({error})") from None
    raise InputError(field, f"{source}: no such run directory or design file")


def final_row(spec: SearchSpec, final: FinalSpec, contender: Contender, task: str, seed: int,
              learning_rate: float | None, phase: str, keep_weights: bool = False) -> TrialRow:
    """One run of the final evaluation as a trial row: a tuning trial (phase `tune`: trains on the
    training data less the held-back slice and is scored on it; its learning rate is set per sample)
    or a seeded final run (phase `final`, scored on dev)."""
    holdout = final.tuning.holdout_fraction if phase == "tune" else None
    config = trial_config(spec, task, seed, design=contender.design, preset=contender.preset,
                          fidelity=final.fidelity, learning_rate=learning_rate, holdout_fraction=holdout,
                          workers=spec.final_resources.workers)
    design = config.design_obj
    fields = {"phase": phase, "contender": contender.name, "task": task, "seed": seed, "learning_rate": config.base_learning_rate,
              "design_id": design.design_id if design is not None else contender.name,
              "design_json": design.to_json() if design is not None else None}
    if phase == "tune":
        record_dir = f"{FINAL_DIR}/tuning/{task_slug(task)}/{contender.name}"
    else:
        record_dir = f"{FINAL_DIR}/runs"
    save_dir = weights_subdir(task) if keep_weights else None
    return TrialRow.create(config, record_dir, fields, save_dir)


# ---- the evaluation ---------------------------------------------------------------------------------


def tune_learning_rate(run_dir: StoragePath, spec: SearchSpec, final: FinalSpec, contender: Contender, task: str, say,
                       start_ray) -> dict:
    """Tune one contender's learning rate on one task; returns best.json's content. `start_ray` is
    called before anything trains."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from peft_search.search.ray_tune import run_experiment

    directory = final_dir(run_dir) / "tuning" / task_slug(task) / contender.name
    best_path = directory / "best.json"
    if best_path.is_file():
        return read_json(best_path)
    start_ray()
    tuning = final.tuning
    # A template: each tuning trial is this row at the learning rate Optuna samples (its own id).
    template = final_row(spec, final, contender, task, final.seeds[0], None, phase="tune")
    # With relative tuning the range is factors of the rate this contender trains at untuned.
    low, high = tuning.learning_rate_range(template.config.base_learning_rate)
    if high > MAX_LEARNING_RATE:
        raise InputError("final.tuning.learning_rate_max",
                         f"{contender.name}'s range would reach a learning rate of {high:g}; at most {MAX_LEARNING_RATE:g} is allowed")
    directory.remove_tree()  # an interrupted tuning restarts: every contender gets the same trials
    directory.mkdir(parents=True)
    # One sampler seed per task, the same for every contender: they start from the same random rates.
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress line says what its study does
    sampler = optuna.samplers.TPESampler(
        seed=derive_seed(spec.seed, "final-tuning", task), n_startup_trials=min(10, max(2, tuning.trials // 2))
    )
    say(f"final: tuning {contender.name} on {task} ({tuning.trials} TPE trials, lr in "
        f"[{low:.3g}, {high:.3g}], {tuning.holdout_fraction:g} of train held back)")

    def tuned() -> list[dict]:  # this tuning's records, for the progress line and the pick below
        return [r for r in read_final_records(run_dir)
                if r["phase"] == "tune" and r["task"] == task and r["contender"] == contender.name]

    run_experiment(final_dir(run_dir) / "tune", f"tune-{task_slug(task)}-{contender.name}-{int(time.time())}",
                   resources=trial_resources(spec.final_resources), max_concurrent=spec.final_max_concurrent_trials,
                   retries=spec.retries, progress=RecordProgress(f"final: tuning {contender.name} on {task}", tuned, tuning.trials),
                   run_dir=run_dir, template=template, param_space={"learning_rate": tune.loguniform(low, high)},
                   searcher=OptunaSearch(sampler=sampler, metric="score", mode="max"), num_samples=tuning.trials)
    interrupt.check()  # an interrupted tuning picks no rate: it restarts on resume
    records = tuned()
    scored = [r for r in records if r["status"] == "finished" and r["score"] is not None and math.isfinite(r["score"])]
    if scored:
        top = max(scored, key=lambda r: (r["score"], -r["learning_rate"]))
        collapsed = sum(bool(r.get("collapsed")) for r in scored)
        best = {"learning_rate": top["learning_rate"], "holdout_score": top["score"], "trials": len(records),
                "finished": len(scored), "collapsed": collapsed}
        say(f"final: {contender.name} on {task}: lr {top['learning_rate']:.3g} (held-back score {top['score']:.4f}, "
            f"{len(scored)}/{len(records)} trials finished, {collapsed} collapsed to one class)")
    else:
        errors = sorted({(r.get("error") or r["status"]).splitlines()[0] for r in records})[:2]
        best = {"learning_rate": None, "holdout_score": None, "trials": len(records), "finished": 0,
                "error": f"no tuning trial finished ({'; '.join(errors)})"}
        say(f"final: {contender.name} on {task}: {best['error']}")
    write_json_atomic(best_path, best)
    return best


def evaluate_run(path: str | Path, final: FinalSpec | None = None, address: str | None = None, say=print,
                 tracker=None) -> StoragePath:
    """Run (or finish) the final evaluation of a run; returns the path of final.parquet. `tracker`
    (search/tracking.py): its seeded runs are tracked under a `final` run, which ends with one run
    per contender (its mean dev score per task and over the tasks)."""
    from peft_search.search.preflight import check_local_resources, say_checkpoint_heads
    from peft_search.search.ray_tune import run_experiment, start_ray as start_ray_once

    run_dir, spec, final, discovered = open_final(path, final)
    if address is None:
        # Before anything is written: final runs reserving more than this machine has would wait forever.
        check_local_resources(spec)

    chosen, skipped = contenders(spec, final, discovered)
    directory = final_dir(run_dir)
    directory.mkdir(exist_ok=True)
    (directory / FINAL_DONE_FILE).unlink(missing_ok=True)
    write_json_atomic(directory / FINAL_SUMMARY_FILE, final.model_dump(mode="json"))

    def start_ray() -> None:
        # Only when something trains: evaluating a finished evaluation again (to record another final
        # file, or rewrite final.parquet and the report) reads records and starts no Ray.
        start_ray_once(address, say)

    tasks = list(final.tasks or spec.tasks)
    say_checkpoint_heads(spec.backbone, tasks, say, spec.objective)
    say(f"final evaluation of {run_dir}: {', '.join(c.name for c in chosen)} on {', '.join(tasks)}, "
        f"seeds {final.seeds}" + (f" (left out: {', '.join(skipped)})" if skipped else ""))
    rows = []
    for task in tasks:
        for contender in chosen:
            best = tune_learning_rate(run_dir, spec, final, contender, final.tuning.task or task, say, start_ray)
            if best["learning_rate"] is None:
                skipped[f"{contender.name} on {task}"] = best["error"]
                continue
            for seed in final.seeds:
                keep = contender.name == DISCOVERED and seed == final.seeds[0]
                rows.append(final_row(spec, final, contender, task, seed, best["learning_rate"], phase="final", keep_weights=keep))
    write_json_atomic(directory / "skipped.json", skipped)
    pending = [row for row in rows if not row.record_path(run_dir).is_file()]
    if pending:
        say(f"final: {len(pending)} seeded runs at the tuned learning rates ({len(rows) - len(pending)} already done)")
        start_ray()
        progress = RecordProgress("final: seeded runs", lambda: [read_json(row.record_path(run_dir)) for row in rows
                                                                 if row.record_path(run_dir).is_file()], len(rows))
        tracked = tracker.stage_started("final", "final evaluation", [c.name for c in chosen], kind="final") if tracker else None
        run_experiment(directory / "tune", f"runs-{int(time.time())}", resources=trial_resources(spec.final_resources),
                       max_concurrent=spec.final_max_concurrent_trials, retries=spec.retries, progress=progress,
                       run_dir=run_dir, rows=pending, callbacks=[tracker.callback(run_dir, tracked)] if tracker else None)
        interrupt.check()
        if tracker:
            tracker.contenders_compared(tracked, [read_json(row.record_path(run_dir)) for row in rows
                                                  if row.record_path(run_dir).is_file()])
    path = write_final(run_dir)
    write_json_atomic(directory / FINAL_DONE_FILE, {"finished_at": utc_now(), "runs": len(rows), "skipped": skipped})
    say(f"final evaluation: {path}")
    return path


__all__ = [
    "DISCOVERED",
    "Contender",
    "contenders",
    "evaluate_run",
    "evaluated_final",
    "final_row",
    "open_final",
    "weights_subdir",
]
