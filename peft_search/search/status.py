"""`peft-search status RUN`: where a run stands, from its state and trial records (no Ray needed)."""

from __future__ import annotations

import json
from pathlib import Path

from peft_search.search.final.evaluate import FINAL_SUMMARY_FILE, evaluated_final
from peft_search.search.spec import load_run_spec
from peft_search.search.stage.decide import ChoiceStats, Decision, is_done, outcome_counts, stage_outcome
from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.records import FINAL_DIR, final_done, read_final_records, read_records, started_trials
from peft_search.search.storage.run_dir import STATE_FILE, read_json, require_run
from peft_search.search.time_left import (TRIAL_START_S, describe_time_left, list_schedule_s, rows_left, run_start_cost_s,
                                          task_durations, unplanned_stage_tasks)


def run_status(path: str | Path) -> dict:
    run_dir = require_run(path)
    state = read_json(run_dir / STATE_FILE)
    records = read_records(run_dir)
    spec = load_run_spec(run_dir / "spec.yaml")
    left = time_left(run_dir, spec, state, records)
    stages = []
    for stage in state["stages"]:
        mine = [r for r in records if r["stage"] == stage["stage"]]
        done = len(mine)
        failed = sum(1 for r in mine if r["status"] != "finished")
        collapsed = sum(1 for r in mine if r.get("collapsed"))
        running = len(started_trials(run_dir, stage["stage"]))
        planned = stage.get("trials")
        stages.append(
            {
                "stage": stage["stage"],
                "component": stage["component"],
                "status": stage_outcome(stage),  # docs/design.md, "Outcomes"
                "planned": planned,
                "done": done,
                "failed": failed,
                "collapsed": collapsed,
                "collapse_warning": collapse_warning(collapsed, done),
                "running": running,
                # A decided stage needs nothing more (a race stops before its planned maximum).
                "remaining": 0 if is_done(stage) else (planned - done) if planned is not None else None,
                "winner": stage.get("winner"),
                "decision": stage.get("decision"),
                "skipped": stage.get("skipped"),
                "time_left_s": left[stage["stage"]],  # None: nothing measured yet
            }
        )
    walls = [r["wall_time_s"] for r in records if r.get("wall_time_s")]
    mean_trial_s = sum(walls) / len(walls) if walls else None
    remaining = sum(s["remaining"] or 0 for s in stages)
    stage_times = [s["time_left_s"] for s in stages]
    status = {
        "run_dir": str(run_dir),
        "status": state["status"],
        "stages": stages,
        "trials_done": len(records),
        "trials_failed": sum(1 for r in records if r["status"] != "finished"),
        # Started without a record: running now, or interrupted with their driver (resume reruns them).
        "trials_running": sum(s["running"] for s in stages),
        "mean_trial_s": mean_trial_s,
        # Planned stages only: later stages are planned once their predecessors decide.
        "remaining_trials_planned": remaining,
        # Every stage not decided, planned or not (search/time_left.py); "at most" under racing.
        "estimated_remaining_s": None if None in stage_times else round(sum(stage_times), 1),
        "time_left_at_most": spec.racing is not None and spec.joint is None,
        "discovered": state.get("discovered"),
        "space": state["space"],
        "final": final_status(run_dir),
    }
    status["text"] = format_status(status)
    return status


def time_left(run_dir: StoragePath, spec, state: dict, records: list[dict]) -> dict[int, float | None]:
    """stage -> the seconds it may still take (search/time_left.py): 0 once decided or skipped; the
    rows its race may still need for a planned stage; every block for one not planned yet; each start
    at the cost the run's ended stages measured. None before any trial of the run has a wall time."""
    from peft_search.search.seeds import derive_seed
    from peft_search.search.stage.plan import plan_path, read_plan
    from peft_search.search.stage.racing import race_state

    durations = task_durations(records)
    # The driver's cost per trial as the run's ended stages measured it (before any: the assumed figure).
    measured = run_start_cost_s(state["stages"], records)
    start_s = TRIAL_START_S if measured is None else measured
    # The trials the cluster ran at once, as the latest stage saw it (a run before 0.4: the spec's cap, or 1).
    slots = next((s["slots"] for s in reversed(state["stages"]) if s.get("slots")), spec.max_concurrent_trials or 1)
    left: dict[int, float | None] = {}
    for stage in state["stages"]:
        index = stage["stage"]
        mine = [r for r in records if r["stage"] == index]
        if is_done(stage):
            tasks = []
        elif spec.joint is not None:  # designs in any order: each remaining trial at the mean duration
            tasks = ["*"] * max(0, (stage.get("trials") or 0) - len(mine))
        elif plan_path(run_dir, index).is_file():
            plan = read_plan(plan_path(run_dir, index))
            race = race_state(plan, mine, spec.racing, spec.tasks, derive_seed(spec.seed, index)) if spec.racing else None
            tasks = [] if race is not None and race.done else [
                row.task for row in rows_left(plan, mine, race.survivors if race is not None else None)]
        else:
            tasks = unplanned_stage_tasks(spec, index)
        # A stage packs short rows into trials as its dispatch does (a joint search trains one per trial).
        left[index] = list_schedule_s(tasks, durations, slots, start_s,
                                      rows_per_trial=spec.rows_per_trial if spec.joint is None else 1)
    return left


def final_status(run_dir: StoragePath) -> dict | None:
    """The final evaluation's progress (None before it starts): seeded runs recorded against those its
    final section plans, tuning trials, and whether it ran to its end."""
    if not (run_dir / FINAL_DIR / FINAL_SUMMARY_FILE).is_file():
        return None
    final = evaluated_final(run_dir, load_run_spec(run_dir / "spec.yaml"))
    records = read_final_records(run_dir)
    runs = [r for r in records if r["phase"] == "final"]
    skipped_path = run_dir / FINAL_DIR / "skipped.json"
    skipped = read_json(skipped_path) if skipped_path.is_file() else {}
    compared = [c for c in final.contenders if c not in skipped]  # a contender that does not fit is left out
    tasks = final.tasks or load_run_spec(run_dir / "spec.yaml").tasks
    return {
        "runs_done": len(runs),
        "runs_failed": sum(1 for r in runs if r["status"] != "finished"),
        "runs_planned": len(compared) * len(tasks) * len(final.seeds),
        "tuning_trials": len(records) - len(runs),
        "done": final_done(run_dir),
    }


def fmt_score(value: float | None) -> str:
    """A score or statistic as the status text and the HTML report both show it."""
    return "-" if value is None else f"{value:.4f}"


def fmt_probability(p: float | None, digits: int = 2) -> str:
    """P(best) as shown: an estimate from finitely many blocks is never certainty, so a value that
    would round to 1 reads `>0.99` (`>0.999` with 3 digits)."""
    if p is None:
        return "-"
    ceiling = 1 - 0.5 * 10**-digits
    return f">{1 - 10**-digits:.{digits}f}" if p >= ceiling else f"{p:.{digits}f}"


def choice_cells(stats: ChoiceStats) -> dict[str, str]:
    """One choice's row of a decisions table, formatted (status text and HTML report alike)."""
    return {
        "choice": stats.choice,
        "designs": str(stats.n_finished),
        "failed": str(stats.n_failed),
        "failed_trials": str(stats.n_failed_trials),
        "mean": fmt_score(stats.mean),
        "median": fmt_score(stats.median),
        "ci": f"[{fmt_score(stats.ci_low)}, {fmt_score(stats.ci_high)}]" if stats.scored else "no finished design",
        "collapsed": str(stats.n_collapsed_trials),
        "blocks": str(stats.blocks),
        "p_best": fmt_probability(stats.p_best, 3),
        "diff": "-" if stats.diff_mean is None else (
            f"{stats.diff_mean:+.4f}" + (f" [{stats.diff_low:+.4f}, {stats.diff_high:+.4f}]" if stats.diff_low is not None else "")
        ),
        "dropped": "-" if stats.eliminated_round is None else f"round {stats.eliminated_round + 1}",
    }


COLLAPSE_WARNING = 0.2  # share of a stage's trials that collapsed above which status and report warn


def collapse_warning(collapsed: int, trials: int) -> str | None:
    """A warning when more than COLLAPSE_WARNING of a stage's trials learned nothing."""
    if not trials or collapsed / trials <= COLLAPSE_WARNING:
        return None
    return (f"{collapsed} of {trials} trials ({collapsed / trials:.0%}) collapsed to the constant prediction (majority "
            "class, Matthews 0): the fidelity is too low to tell designs apart; train longer (fidelity.max_steps or "
            "epochs) or raise the learning rate (peft-search fidelity SPEC checks the length)")


def decision_summary(decision: Decision) -> str:
    """`winner: mean m [lo, hi], P(best) p over K blocks, ...`, the one-line form of a decision; its
    outcome (selected, tie, undecided) stands beside it, in the run's line and status's column."""
    if decision.winner is None:
        return "no choice has a finished design"
    w = decision.stats(decision.winner)
    text = f"{decision.winner}: mean {fmt_score(w.mean)} [{fmt_score(w.ci_low)}, {fmt_score(w.ci_high)}]"
    if decision.method == "joint":
        best = decision.best_design(decision.winner)
        return (f"best of {w.n_finished} designs ({decision.winner}): {best.design_id}, score {fmt_score(best.score)}; "
                f"designs' mean {fmt_score(w.mean)} [{fmt_score(w.ci_low)}, {fmt_score(w.ci_high)}]; P(best) not estimated "
                f"(one draw per design); {decision.trials_run}/{decision.trials_planned} trials")
    if decision.method == "bootstrap":  # decided before 0.2
        if decision.runner_up:
            text += f", P(beats {decision.runner_up}) = {decision.win_probability:.2f} (bootstrap)"
        return text
    evidence = f"{decision.blocks} blocks" if decision.method == "blocked" else f"{w.n_finished} designs each"
    if decision.outcome is not None:  # decided by the selection procedure (selection.py)
        text += {
            "selected": f", by KN over {w.blocks} blocks (confidence {decision.selection_confidence:g} if at least "
                        f"{decision.delta:g} better than the rest)",
            "tie": f", within {decision.delta:g} of {', '.join(decision.tied)} over {w.blocks} blocks",
            "undecided": f", the best mean after {w.blocks} blocks (no guarantee at delta {decision.delta:g})",
        }[decision.outcome]
    elif decision.win_probability is None:
        text += f", P(best) unknown ({evidence}: too few to estimate the noise)"
    else:
        text += f", P(best) {fmt_probability(decision.win_probability)} over {evidence}"
    if decision.rounds is not None:
        dropped = [c.choice for c in decision.choices if c.eliminated_round is not None]
        text += f"; race: {decision.rounds} round{'s' if decision.rounds != 1 else ''}"
        text += f", dropped {', '.join(dropped)}" if dropped else ""
        text += f", {decision.trials_run}/{decision.trials_planned} trials of fixed N"
    return text


def format_status(status: dict) -> str:
    lines = [f"run {status['run_dir']}: {status['status']}"
             + (f" (continue with: peft-search resume {status['run_dir']})" if status["status"] in ("interrupted", "failed") else "")]
    lines.append(outcome_counts([s["status"] for s in status["stages"]]))
    lines.append(
        f"trials: {status['trials_done']} done, {status['trials_failed']} failed"
        + (f", {status['trials_running']} running (or interrupted, if the driver is gone: resume reruns them)"
           if status["trials_running"] else "")
        + (f", {status['remaining_trials_planned']} planned and not done" if status["remaining_trials_planned"] else "")
        + (f"; {describe_time_left(status['estimated_remaining_s'], status['time_left_at_most'])} in the search's stages"
           if status["estimated_remaining_s"] else "")
    )
    lines.append("")
    lines.append(f"{'stage':<6} {'component':<15} {'status':<11} {'trials':>9} {'failed':>6} {'collapsed':>9}  decision")
    for stage in status["stages"]:
        planned = stage["planned"] if stage["planned"] is not None else "-"
        decision = ""
        if stage["decision"]:
            decision = decision_summary(Decision.from_dict(stage["decision"]))
        elif stage["skipped"]:
            decision = f"skipped: {stage['skipped']}"
        elif stage["time_left_s"] is not None:
            decision = describe_time_left(stage["time_left_s"], status["time_left_at_most"])
        lines.append(
            f"{stage['stage']:<6} {stage['component']:<15} {stage['status']:<11} {str(stage['done']) + '/' + str(planned):>9} "
            f"{stage['failed']:>6} {stage['collapsed']:>9}  {decision}"
        )
    for stage in status["stages"]:
        if not stage["decision"]:
            continue
        d = Decision.from_dict(stage["decision"])
        lines.append(f"\nstage {stage['stage']} ({stage['component']}): per choice")
        lines.append(
            f"  {'choice':<22} {'designs':>7} {'failed':>6} {'collapsed':>9} {'mean':>7} {'P(best)':>7} {'dropped':>8}"
            f"  {'95% CI of the mean':<20}  difference to the best [95% CI]"
        )
        for c in d.choices:
            cells = choice_cells(c)
            lines.append(
                f"  {c.choice:<22} {cells['designs']:>7} {cells['failed']:>6} {cells['collapsed']:>9} {cells['mean']:>7} "
                f"{cells['p_best']:>7} {cells['dropped']:>8}  {cells['ci']:<20}  {cells['diff']}"
            )
        if d.race_reason:
            lines.append(f"  race: {d.race_reason}; {d.trials_run} of {d.trials_planned} planned trials trained "
                         f"({1 - d.trials_run / d.trials_planned:.0%} saved)" if d.trials_planned else "")
    for stage in status["stages"]:
        if stage["collapse_warning"]:
            lines.append(f"\nwarning: stage {stage['stage']} ({stage['component']}): {stage['collapse_warning']}")
    final = status.get("final")
    if final:
        lines.append(
            f"\nfinal evaluation: {final['runs_done']} of {final['runs_planned']} seeded runs recorded "
            f"({final['runs_failed']} failed), {final['tuning_trials']} tuning trials; "
            + ("done" if final["done"] else "not finished (peft-search evaluate RUN goes on where it stopped)")
        )
    if status["discovered"]:
        found = status["discovered"]
        lines.append(f"\nbest design so far: {found['design_id']} (score {found['score']:.4f}, stage {found['stage']})")
        lines.append(json.dumps(found["design"], sort_keys=True))
    return "\n".join(lines)
