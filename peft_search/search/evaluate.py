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
  fails or diverges counts as failed for Optuna (reported as NaN);
- then each contender trains once per seed of `final.seeds` at its tuned rate on the whole training
  data and is scored on the dev set, at the final fidelity and the spec's budget (full fine-tuning
  trains every parameter; BitFit's size is fixed).
A preset that cannot realise the budget on this backbone (the paper's `s4-t5` on a backbone with too
few blocks, say) is left out, and why is written to `final/skipped.json`.

Layout under the run directory:

    final/tuning/<task>/<contender>/<run_id>.json   one record per tuning trial
    final/tuning/<task>/<contender>/best.json       the tuned rate, once the contender's tuning ended
    final/runs/<run_id>.json                        one record per seeded final run
    final/weights/<task>/                           the discovered design's trained PEFT state (seed final.seeds[0])
    final/skipped.json                              contenders (or contender x task) not compared, and why
    final/done.json                                 written when everything finished
    final/tune/                                     the Ray Tune experiments
    final.parquet                                   every tuning trial and final run (column `phase`)

Resumable like the stages: a run with a record is never trained again; a contender's tuning that was
interrupted before its `best.json` restarts from scratch (its partial records are removed), so that
every contender gets exactly the same number of tuning trials. Ray is imported only to run.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import platform
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from peft_search.errors import InputError
from peft_search.search.decide import derive_seed
from peft_search.search.plan import trial_config
from peft_search.search.run_dir import STATE_FILE, require_run, write_atomic, write_json_atomic
from peft_search.search.spec import FinalSpec, SearchSpec, load_spec
from peft_search.space import Design

FINAL_DIR = "final"
FINAL_FILE = "final.parquet"
DISCOVERED = "discovered"
FIXED_SIZE_PRESETS = ("bitfit", "full")  # allowed to miss the budget: BitFit's size is fixed, full has none

FINAL_COLUMNS = [
    ("run_id", pa.string()),
    ("phase", pa.string()),  # tune (scored on the held-back training slice) | final (scored on dev)
    ("contender", pa.string()),
    ("task", pa.string()),
    ("seed", pa.int64()),
    ("learning_rate", pa.float64()),
    ("status", pa.string()),
    ("score", pa.float64()),
    ("metrics_json", pa.string()),
    ("design_id", pa.string()),
    ("design_json", pa.string()),
    ("realised_params", pa.int64()),
    ("target_params", pa.int64()),
    ("head_params", pa.int64()),
    ("wall_time_s", pa.float64()),
    ("error", pa.string()),
    ("weights", pa.string()),  # relative to the run directory; the discovered design's kept state
    ("config_json", pa.string()),  # the TrialConfig fields that trained it
    ("node", pa.string()),
    ("finished_at", pa.string()),
]
FINAL_SCHEMA = pa.schema(FINAL_COLUMNS)


@dataclass(frozen=True)
class Contender:
    name: str  # "discovered" or a preset name
    preset: str | None
    design: Design | None  # the discovered design; None for presets


def slug(task: str) -> str:
    """A directory name for a task (file tasks are spelled `file:text=a,label=b`)."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", task):
        return task
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)[:40] + "-" + hashlib.sha256(task.encode()).hexdigest()[:8]


def final_dir(run_dir: Path) -> Path:
    return run_dir / FINAL_DIR


def weights_dir(run_dir: Path, task: str) -> Path:
    return final_dir(run_dir) / "weights" / slug(task)


# ---- what is compared -------------------------------------------------------------------------------


def open_final(path: str | Path, final: FinalSpec | None = None) -> tuple[Path, SearchSpec, FinalSpec, dict]:
    """The run, its spec, the final section to evaluate (the spec's, unless `final` is given) and the
    discovered design; InputError when there is no final section or nothing discovered yet."""
    run_dir = require_run(path)
    spec = load_spec(run_dir / "spec.yaml")
    final = final or spec.final
    if final is None:
        raise InputError(
            "final",
            f"{run_dir / 'spec.yaml'} has no final section; give one with --final FILE (a YAML mapping of the "
            "spec's final keys: contenders, seeds, fidelity, tuning; see peft-search schema)",
        )
    state = json.loads((run_dir / STATE_FILE).read_text())
    if not state.get("discovered"):
        raise InputError("RUN", f"{run_dir} has no decided stage yet, so no discovered design to evaluate")
    return run_dir, spec, final, state["discovered"]


def contenders(spec: SearchSpec, final: FinalSpec, discovered: dict) -> tuple[list[Contender], dict[str, str]]:
    """The contenders that fit the budget on this backbone, and why the others are left out."""
    from peft_search.peft import load_backbone, plan_budget, profile_backbone
    from peft_search.train.presets import preset_design

    profile = profile_backbone(load_backbone(spec.backbone, meta=True))
    chosen, skipped = [], {}
    for name in final.contenders:
        if name == DISCOVERED:
            contender = Contender(name, None, Design.from_dict(discovered["design"]))
        else:
            contender = Contender(name, name, None)
        design = contender.design if contender.design is not None else preset_design(name)
        if design is not None:
            try:
                plan = plan_budget(profile, design, spec.budget_fraction)
            except InputError as error:
                skipped[name] = f"does not fit {spec.backbone}: {error.message}"
                continue
            if not plan.feasible and name not in FIXED_SIZE_PRESETS:
                skipped[name] = (f"realises {plan.planned_params:,} parameters for a budget of {plan.target_params:,} "
                                 f"({plan.relative_error:+.1%}) on {spec.backbone}")
                continue
        chosen.append(contender)
    return chosen, skipped


def run_config(spec: SearchSpec, final: FinalSpec, contender: Contender, task: str, seed: int,
               learning_rate: float | None, holdout_fraction: float | None = None) -> dict:
    """The TrialConfig fields of one tuning trial (with holdout_fraction) or final run."""
    config = trial_config(spec, task, seed, design=contender.design, preset=contender.preset,
                          fidelity=final.fidelity, learning_rate=learning_rate)
    if holdout_fraction is not None:
        config["holdout_fraction"] = holdout_fraction
    return config


def run_id(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


# ---- one run (a Ray Tune function trainable) --------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def train_and_record(config: dict, meta: dict, record_path: Path, save_dir: Path | None = None) -> dict:
    """Train one config (TrialConfig fields) unless it has a record already; write its record."""
    from peft_search.train.trial import TrialConfig, run_trial

    if record_path.is_file():
        return json.loads(record_path.read_text())
    try:
        trial = TrialConfig.from_dict(config)
        result = run_trial(trial, save_dir=str(save_dir) if save_dir is not None else None).to_dict()
        design = trial.design_obj
    except Exception as error:  # bad input surfacing only now: a failed run, not a crash of the evaluation
        result, design = {"status": "failed", "score": None, "error": f"{type(error).__name__}: {error}"}, None
    finished = result["status"] == "finished"
    record = {
        "run_id": run_id(config),
        **meta,
        "learning_rate": config["learning_rate"],
        "status": result["status"],
        "score": result.get("score"),
        "metrics_json": json.dumps(result.get("metrics") or {}, sort_keys=True),
        "design_id": design.design_id if design is not None else meta["contender"],
        "design_json": design.to_json() if design is not None else None,
        "realised_params": result.get("realised_params"),
        "target_params": result.get("target_params"),
        "head_params": result.get("head_params"),
        "wall_time_s": result.get("wall_time_s"),
        "error": result.get("error"),
        "weights": str(save_dir.relative_to(record_path.parents[2])) if (save_dir is not None and finished) else None,
        "config_json": json.dumps(config, sort_keys=True),
        "node": platform.node(),
        "finished_at": _now(),
    }
    write_json_atomic(record_path, record)
    return record


def _tune_trainable(config: dict, run_dir: str, base: dict, meta: dict, directory: str) -> None:
    from ray import tune

    trial_config_ = {**base, "learning_rate": config["learning_rate"]}
    record = train_and_record(trial_config_, meta, Path(directory) / f"{run_id(trial_config_)}.json")
    score = record["score"] if record["status"] == "finished" and record["score"] is not None else float("nan")
    tune.report({"score": score, "status": record["status"]})


def _final_trainable(config: dict) -> None:
    from ray import tune

    row = config["row"]
    save_dir = Path(row["save_dir"]) if row["save_dir"] else None
    record = train_and_record(row["config"], row["meta"], Path(row["record"]), save_dir)
    tune.report({"score": record["score"] if record["score"] is not None else float("nan"), "status": record["status"]})


# ---- the evaluation ---------------------------------------------------------------------------------


def _resources(spec: SearchSpec) -> dict:
    if spec.resources.workers > 1:
        return {"cpu": 0.1}  # the trial only drives its TorchTrainer, whose workers reserve their own
    return {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}


def tune_learning_rate(run_dir: Path, spec: SearchSpec, final: FinalSpec, contender: Contender, task: str, say) -> dict:
    """Tune one contender's learning rate on one task; returns best.json's content."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    directory = final_dir(run_dir) / "tuning" / slug(task) / contender.name
    best_path = directory / "best.json"
    if best_path.is_file():
        return json.loads(best_path.read_text())
    if directory.exists():
        shutil.rmtree(directory)  # an interrupted tuning restarts: every contender gets the same trials
    directory.mkdir(parents=True)
    tuning = final.tuning
    seed = final.seeds[0]
    base = run_config(spec, final, contender, task, seed, None, tuning.holdout_fraction)
    meta = {"phase": "tune", "contender": contender.name, "task": task, "seed": seed}
    # One sampler seed per task, the same for every contender: they start from the same random rates.
    sampler = optuna.samplers.TPESampler(
        seed=derive_seed(spec.seed, "final-tuning", task), n_startup_trials=min(10, max(2, tuning.trials // 2))
    )
    say(f"final: tuning {contender.name} on {task} ({tuning.trials} TPE trials, lr in "
        f"[{tuning.learning_rate_min:g}, {tuning.learning_rate_max:g}], {tuning.holdout_fraction:g} of train held back)")
    trainable = tune.with_resources(
        tune.with_parameters(_tune_trainable, run_dir=str(run_dir), base=base, meta=meta, directory=str(directory)),
        _resources(spec),
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"learning_rate": tune.loguniform(tuning.learning_rate_min, tuning.learning_rate_max)},
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(sampler=sampler, metric="score", mode="max"),
            num_samples=tuning.trials,
            max_concurrent_trials=spec.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=f"tune-{slug(task)}-{contender.name}-{int(time.time())}",
            storage_path=str(final_dir(run_dir) / "tune"),
            verbose=0,
        ),
    )
    tuner.fit()
    records = [json.loads(p.read_text()) for p in directory.glob("*.json") if p.name != "best.json"]
    scored = [r for r in records if r["status"] == "finished" and r["score"] is not None and math.isfinite(r["score"])]
    if scored:
        top = max(scored, key=lambda r: (r["score"], -r["learning_rate"]))
        best = {"learning_rate": top["learning_rate"], "holdout_score": top["score"], "trials": len(records),
                "finished": len(scored)}
        say(f"final: {contender.name} on {task}: lr {top['learning_rate']:.3g} (held-back score {top['score']:.4f}, "
            f"{len(scored)}/{len(records)} trials finished)")
    else:
        errors = sorted({(r.get("error") or r["status"]).splitlines()[0] for r in records})[:2]
        best = {"learning_rate": None, "holdout_score": None, "trials": len(records), "finished": 0,
                "error": f"no tuning trial finished ({'; '.join(errors)})"}
        say(f"final: {contender.name} on {task}: {best['error']}")
    write_json_atomic(best_path, best)
    return best


def evaluate_run(path: str | Path, final: FinalSpec | None = None, address: str | None = None, say=print) -> Path:
    """Run (or finish) the final evaluation of a run; returns the path of final.parquet."""
    from ray import tune

    from peft_search.search.tune_stage import init_ray

    run_dir, spec, final, discovered = open_final(path, final)
    chosen, skipped = contenders(spec, final, discovered)
    directory = final_dir(run_dir)
    directory.mkdir(exist_ok=True)
    (directory / "done.json").unlink(missing_ok=True)
    dashboard = init_ray(address)
    if dashboard:
        say(f"Ray dashboard: {dashboard} (local only, 127.0.0.1)")
    say(f"final evaluation of {run_dir}: {', '.join(c.name for c in chosen)} on {', '.join(spec.tasks)}, "
        f"seeds {final.seeds}" + (f" (left out: {', '.join(skipped)})" if skipped else ""))
    rows = []
    for task in spec.tasks:
        for contender in chosen:
            best = tune_learning_rate(run_dir, spec, final, contender, task, say)
            if best["learning_rate"] is None:
                skipped[f"{contender.name} on {task}"] = best["error"]
                continue
            for seed in final.seeds:
                config = run_config(spec, final, contender, task, seed, best["learning_rate"])
                keep = contender.name == DISCOVERED and seed == final.seeds[0]
                rows.append({
                    "config": config,
                    "meta": {"phase": "final", "contender": contender.name, "task": task, "seed": seed},
                    "record": str(directory / "runs" / f"{run_id(config)}.json"),
                    "save_dir": str(weights_dir(run_dir, task)) if keep else None,
                })
    write_json_atomic(directory / "skipped.json", skipped)
    pending = [row for row in rows if not Path(row["record"]).is_file()]
    if pending:
        say(f"final: {len(pending)} seeded runs at the tuned learning rates ({len(rows) - len(pending)} already done)")
        tuner = tune.Tuner(
            tune.with_resources(_final_trainable, _resources(spec)),
            param_space={"row": tune.grid_search(pending)},
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent_trials),
            run_config=tune.RunConfig(name=f"runs-{int(time.time())}", storage_path=str(directory / "tune"), verbose=0),
        )
        tuner.fit()
    path = write_final(run_dir)
    write_json_atomic(directory / "done.json", {"finished_at": _now(), "runs": len(rows), "skipped": skipped})
    say(f"final evaluation: {path}")
    return path


def final_records(run_dir: Path) -> list[dict]:
    directory = final_dir(run_dir)
    paths = [p for p in directory.glob("tuning/*/*/*.json") if p.name != "best.json"] + list(directory.glob("runs/*.json"))
    records = [json.loads(p.read_text()) for p in paths]
    return sorted(records, key=lambda r: (r["task"], r["phase"] != "tune", r["contender"], r["seed"], r["learning_rate"], r["run_id"]))


def write_final(run_dir: Path) -> Path:
    records = final_records(run_dir)
    table = pa.Table.from_pydict({name: [r.get(name) for r in records] for name, _ in FINAL_COLUMNS}, schema=FINAL_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path = run_dir / FINAL_FILE
    write_atomic(path, sink.getvalue().to_pybytes())
    return path


def parse_final_file(path: str | Path, spec: SearchSpec) -> FinalSpec:
    """A `--final FILE` (YAML of the final section), validated with field paths like the job spec."""
    import yaml

    from peft_search.search.spec import SpecError, _Loader

    source = str(path)
    try:
        data = yaml.load(Path(path).read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except OSError as error:
        raise InputError(source, f"cannot read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise InputError(source, f"not valid YAML: {error}") from None
    try:
        return SearchSpec.from_dict({**spec.to_dict(), "final": data}).final
    except SpecError as error:
        raise SpecError(error.path, error.message, source) from None


__all__ = [
    "DISCOVERED",
    "FINAL_DIR",
    "FINAL_FILE",
    "FINAL_SCHEMA",
    "Contender",
    "contenders",
    "evaluate_run",
    "final_records",
    "open_final",
    "parse_final_file",
    "run_config",
    "weights_dir",
    "write_final",
]
