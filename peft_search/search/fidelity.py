"""The fidelity check (`peft-search fidelity SPEC`): is a stage's training length long enough to tell
designs apart, and how short can it be?

A pilot of `designs` designs drawn from the spec's initial space (S0) is trained on the spec's tasks
and seeds at each of two or three training lengths (optimiser steps), the same designs at every
length. Per length it reports the collapse rate (trials that ended at their task's constant-prediction
baseline) and the Spearman rank correlation of the designs' scores with their scores at the longest
length; the recommendation is the cheapest length whose correlation is at least `min_correlation`
(0.8): a length that ranks designs as the longest one does decides as the longest one would.

Layout: `<storage>/<name>-fidelity-<time>/` with `spec.yaml`, `fidelity/steps-<n>/<trial_id>.json`
(one record per trial, by `search.trials`), `fidelity/tune/` and `fidelity.json` (the summary).
Rerunning on the same directory (`--resume DIR`) trains only what has no record.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peft_search.errors import InputError
from peft_search.search import interrupt
from peft_search.search.preflight import say_checkpoint_heads
from peft_search.search.progress import RecordProgress
from peft_search.search.spec import Fidelity, SearchSpec, load_run_spec
from peft_search.search.seeds import derive_seed
from peft_search.search.stage.plan import trial_config
from peft_search.search.stage.scores import design_scores, trial_scores
from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.run_dir import SPEC_FILE, read_json, storage_root, write_json_atomic
from peft_search.search.trials import TrialRow, trial_resources

MIN_CORRELATION = 0.8
DEFAULT_DESIGNS = 8
SUMMARY_FILE = "fidelity.json"


@dataclass(frozen=True)
class LengthResult:
    steps: int
    trials: int
    finished: int
    collapsed: int
    mean_score: float | None
    spearman: float | None  # with the longest length's design scores; None for the longest itself
    trial_seconds: float | None  # mean wall time of a trial

    @property
    def collapse_rate(self) -> float:
        return self.collapsed / self.trials if self.trials else 0.0


def default_lengths(spec: SearchSpec) -> tuple[int, ...]:
    """Half, once and twice the spec's length in steps (or 25, 50, 100 when it trains epochs)."""
    base = spec.fidelity.max_steps or 50
    return tuple(sorted({max(1, base // 2), base, base * 2}))


def pilot_rows(spec: SearchSpec, lengths, designs: int, profile) -> list[TrialRow]:
    """Every pilot trial: the same `designs` designs of S0 at each length, per task and seed."""
    from peft_search.peft.budget import plan_budget

    space = spec.initial_space()
    drawn = space.sample(designs, derive_seed(spec.seed, "fidelity"), profile.num_blocks,
                         lambda d: plan_budget(profile, d, spec.budget_fraction).feasible).designs
    rows = []
    for steps in lengths:
        fidelity = Fidelity(max_steps=steps, max_train_examples=spec.fidelity.max_train_examples,
                            max_eval_examples=spec.fidelity.max_eval_examples)
        for index, design in enumerate(drawn):
            for task in spec.tasks:
                for seed in spec.seeds:
                    config = trial_config(spec, task, seed, design, fidelity=fidelity)
                    fields = {"steps": steps, "choice": f"steps-{steps}", "sample": index, "design_id": design.design_id,
                              "design_json": design.to_json(), "task": task, "seed": seed}
                    rows.append(TrialRow.create(config, f"fidelity/steps-{steps}", fields))
    return rows


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant."""
    from peft_search.train.metrics import spearman as metric

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(metric(x, y))


def summarize(records: list[dict], lengths, tasks) -> list[LengthResult]:
    """Per length: trials, collapse, and the rank correlation of design scores with the longest length."""
    by_length = {steps: [r for r in records if r["steps"] == steps] for steps in lengths}
    scores = {}
    for steps, mine in by_length.items():
        scores[steps] = {d.design_id: d.score for d in design_scores(trial_scores(mine), tasks)}
    longest = max(lengths)
    results = []
    for steps in lengths:
        mine = by_length[steps]
        common = [d for d in scores[steps] if scores[steps][d] is not None and scores[longest].get(d) is not None]
        rho = None if steps == longest else spearman([scores[steps][d] for d in common], [scores[longest][d] for d in common])
        finished = [r for r in mine if r["status"] == "finished"]
        walls = [r["wall_time_s"] for r in mine if r.get("wall_time_s")]
        valid = [s for s in scores[steps].values() if s is not None]
        results.append(LengthResult(
            steps=steps, trials=len(mine), finished=len(finished), collapsed=sum(1 for r in mine if r.get("collapsed")),
            mean_score=float(np.mean(valid)) if valid else None, spearman=rho,
            trial_seconds=float(np.mean(walls)) if walls else None,
        ))
    return results


def recommend(results: list[LengthResult], min_correlation: float = MIN_CORRELATION) -> tuple[int, str]:
    """The cheapest length whose ranking agrees with the longest (Spearman >= min_correlation)."""
    longest = max(results, key=lambda r: r.steps)
    for result in sorted(results, key=lambda r: r.steps):
        if result.steps != longest.steps and result.spearman is not None and result.spearman >= min_correlation:
            return result.steps, (f"{result.steps} steps rank the pilot designs as {longest.steps} steps do "
                                  f"(Spearman {result.spearman:.2f} >= {min_correlation:g})")
    why = f"no shorter length reaches Spearman {min_correlation:g} with {longest.steps} steps"
    if longest.collapse_rate > 0.2:
        why += f", and {longest.collapse_rate:.0%} of the longest trials collapsed: try longer lengths (--steps)"
    return longest.steps, why


def format_table(results: list[LengthResult]) -> str:
    lines = [f"{'steps':>6} {'trials':>6} {'finished':>8} {'collapsed':>9} {'mean score':>10} {'Spearman vs longest':>20} {'s/trial':>8}"]
    for r in results:
        rho = "(reference)" if r.spearman is None and r.steps == max(x.steps for x in results) else (
            "-" if r.spearman is None else f"{r.spearman:.2f}")
        lines.append(f"{r.steps:>6} {r.trials:>6} {r.finished:>8} {f'{r.collapse_rate:.0%}':>9} "
                     f"{'-' if r.mean_score is None else f'{r.mean_score:.4f}':>10} {rho:>20} "
                     f"{'-' if r.trial_seconds is None else f'{r.trial_seconds:.1f}':>8}")
    return "\n".join(lines)


def run_fidelity(spec: SearchSpec, job_path: str | Path, lengths=None, designs: int = DEFAULT_DESIGNS,
                 resume: str | Path | None = None, address: str | None = None, say=print) -> dict:
    """Train the pilot (or finish it, with `resume`), print and return the summary."""
    from peft_search.peft import load_backbone, profile_backbone
    from peft_search.search.ray_tune import run_experiment, start_ray

    lengths = tuple(sorted(set(lengths or default_lengths(spec))))
    if len(lengths) < 2 or any(steps < 1 for steps in lengths):
        raise InputError("--steps", f"give two or three training lengths in steps, each at least 1, e.g. 25,50,100; got {lengths}")
    if designs < 3:
        raise InputError("--designs", f"a rank correlation needs at least 3 designs, got {designs}")
    if resume is not None:
        run_dir = StoragePath.parse(resume, "--resume")
        if not (run_dir / SPEC_FILE).is_file():
            raise InputError("--resume", f"{resume} is not a fidelity pilot directory (no {SPEC_FILE})")
        spec = load_run_spec(run_dir / SPEC_FILE)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = storage_root(spec.storage) / f"{spec.name or Path(job_path).stem}-fidelity-{stamp}"
    profile = profile_backbone(load_backbone(spec.backbone, meta=True))
    rows = pilot_rows(spec, lengths, designs, profile)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SPEC_FILE).write_text(spec.to_yaml())
    pending = [row for row in rows if not row.record_path(run_dir).is_file()]
    say_checkpoint_heads(spec.backbone, spec.tasks, say, spec.objective)
    say(f"fidelity pilot: {designs} designs x {len(spec.tasks)} task(s) x {len(spec.seeds)} seed(s) at {', '.join(map(str, lengths))} "
        f"steps: {len(rows)} trials ({len(rows) - len(pending)} already done) in {run_dir}")
    if pending:
        start_ray(address, say)
        directory = run_dir / "fidelity"
        progress = RecordProgress("fidelity pilot", lambda: [read_json(row.record_path(run_dir)) for row in rows
                                                             if row.record_path(run_dir).is_file()], len(rows))
        run_experiment(directory, f"tune-{int(datetime.datetime.now().timestamp())}", resources=trial_resources(spec.resources),
                       max_concurrent=spec.max_concurrent_trials, retries=spec.retries, progress=progress,
                       run_dir=run_dir, rows=pending)
        interrupt.check()  # no recommendation from a pilot cut short
    records = [read_json(row.record_path(run_dir)) for row in rows if row.record_path(run_dir).is_file()]
    results = summarize(records, lengths, spec.tasks)
    steps, why = recommend(results)
    summary = {"run_dir": str(run_dir), "lengths": list(lengths), "designs": designs, "recommended_steps": steps,
               "why": why, "results": [{**r.__dict__, "collapse_rate": r.collapse_rate} for r in results]}
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    say(format_table(results))
    say(f"recommended: fidelity.max_steps: {steps} ({why})")
    return summary


__all__ = ["LengthResult", "default_lengths", "format_table", "pilot_rows", "recommend", "run_fidelity", "spearman", "summarize"]
