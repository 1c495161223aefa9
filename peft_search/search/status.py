"""`peft-search status RUN`: where a run stands, from its state and trial records (no Ray needed)."""

from __future__ import annotations

import json
from pathlib import Path

from peft_search.search.decide import ChoiceStats, Decision
from peft_search.search.results import read_records, started_trials
from peft_search.search.run_dir import STATE_FILE, require_run


def run_status(path: str | Path) -> dict:
    run_dir = require_run(path)
    state = json.loads((run_dir / STATE_FILE).read_text())
    records = read_records(run_dir)
    stages = []
    for stage in state["stages"]:
        mine = [r for r in records if r["stage"] == stage["stage"]]
        done = len(mine)
        failed = sum(1 for r in mine if r["status"] != "finished")
        running = len(started_trials(run_dir, stage["stage"]))
        planned = stage.get("trials")
        stages.append(
            {
                "stage": stage["stage"],
                "component": stage["component"],
                "status": stage["status"],
                "planned": planned,
                "done": done,
                "failed": failed,
                "running": running,
                "remaining": (planned - done) if planned is not None else None,
                "winner": stage.get("winner"),
                "decision": stage.get("decision"),
                "skipped": stage.get("skipped"),
            }
        )
    walls = [r["wall_time_s"] for r in records if r.get("wall_time_s")]
    mean_trial_s = sum(walls) / len(walls) if walls else None
    remaining = sum(s["remaining"] or 0 for s in stages)
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
        "estimated_remaining_s": round(remaining * mean_trial_s, 1) if mean_trial_s else None,
        "discovered": state.get("discovered"),
        "space": state["space"],
    }
    status["text"] = format_status(status)
    return status


def fmt_score(value: float | None) -> str:
    """A score or statistic as the status text and the HTML report both show it."""
    return "-" if value is None else f"{value:.4f}"


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
    }


def decision_summary(decision: Decision) -> str:
    """`winner: mean m [lo, hi], P(beats runner-up) = p`, the one-line form of a decision."""
    if decision.winner is None:
        return "no choice has a finished design"
    w = decision.stats(decision.winner)
    text = f"{decision.winner}: mean {fmt_score(w.mean)} [{fmt_score(w.ci_low)}, {fmt_score(w.ci_high)}]"
    if decision.runner_up:
        text += f", P(beats {decision.runner_up}) = {decision.win_probability:.2f}"
    return text


def format_status(status: dict) -> str:
    lines = [f"run {status['run_dir']}: {status['status']}"]
    lines.append(
        f"trials: {status['trials_done']} done, {status['trials_failed']} failed"
        + (f", {status['trials_running']} running (or interrupted, if the driver is gone: resume reruns them)"
           if status["trials_running"] else "")
        + (f", {status['remaining_trials_planned']} planned and not done" if status["remaining_trials_planned"] else "")
        + (f"; about {status['estimated_remaining_s'] / 60:.1f} min left in planned stages" if status["estimated_remaining_s"] else "")
    )
    lines.append("")
    lines.append(f"{'stage':<6} {'component':<15} {'status':<9} {'trials':>9} {'failed':>6}  decision")
    for stage in status["stages"]:
        planned = stage["planned"] if stage["planned"] is not None else "-"
        decision = ""
        if stage["decision"]:
            decision = decision_summary(Decision.from_dict(stage["decision"]))
        elif stage["skipped"]:
            decision = f"skipped: {stage['skipped']}"
        lines.append(
            f"{stage['stage']:<6} {stage['component']:<15} {stage['status']:<9} {str(stage['done']) + '/' + str(planned):>9} "
            f"{stage['failed']:>6}  {decision}"
        )
    for stage in status["stages"]:
        if not stage["decision"]:
            continue
        d = Decision.from_dict(stage["decision"])
        lines.append(f"\nstage {stage['stage']} ({stage['component']}): per choice")
        lines.append(
            f"  {'choice':<22} {'designs':>7} {'failed':>6} {'trials failed':>13} {'mean':>7} {'median':>7}  95% CI"
        )
        for c in d.choices:
            cells = choice_cells(c)
            lines.append(
                f"  {c.choice:<22} {cells['designs']:>7} {cells['failed']:>6} {cells['failed_trials']:>13} "
                f"{cells['mean']:>7} {cells['median']:>7}  {cells['ci']}"
            )
    if status["discovered"]:
        found = status["discovered"]
        lines.append(f"\nbest design so far: {found['design_id']} (score {found['score']:.4f}, stage {found['stage']})")
        lines.append(json.dumps(found["design"], sort_keys=True))
    return "\n".join(lines)
