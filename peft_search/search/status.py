"""`peft-search status RUN`: where a run stands, from its state and trial records (no Ray needed)."""

from __future__ import annotations

import json
from pathlib import Path

from peft_search.search.decide import Decision
from peft_search.search.results import read_records
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
        planned = stage.get("trials")
        stages.append(
            {
                "stage": stage["stage"],
                "component": stage["component"],
                "status": stage["status"],
                "planned": planned,
                "done": done,
                "failed": failed,
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
        "mean_trial_s": mean_trial_s,
        # Planned stages only: later stages are planned once their predecessors decide.
        "remaining_trials_planned": remaining,
        "estimated_remaining_s": round(remaining * mean_trial_s, 1) if mean_trial_s else None,
        "discovered": state.get("discovered"),
        "space": state["space"],
    }
    status["text"] = format_status(status)
    return status


def format_status(status: dict) -> str:
    lines = [f"run {status['run_dir']}: {status['status']}"]
    lines.append(
        f"trials: {status['trials_done']} done, {status['trials_failed']} failed"
        + (f", {status['remaining_trials_planned']} planned and not done" if status["remaining_trials_planned"] else "")
        + (f"; about {status['estimated_remaining_s'] / 60:.1f} min left in planned stages" if status["estimated_remaining_s"] else "")
    )
    lines.append("")
    lines.append(f"{'stage':<6} {'component':<15} {'status':<9} {'trials':>9} {'failed':>6}  decision")
    for stage in status["stages"]:
        planned = stage["planned"] if stage["planned"] is not None else "-"
        decision = ""
        if stage["decision"]:
            d = Decision.from_dict(stage["decision"])
            w = d.stats(d.winner)
            decision = f"{d.winner}: mean {w.mean:.4f} [{w.ci_low:.4f}, {w.ci_high:.4f}]"
            if d.runner_up:
                decision += f", P(beats {d.runner_up}) = {d.win_probability:.2f}"
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
        lines.append(f"  {'choice':<22} {'designs':>7} {'failed':>6} {'mean':>7} {'median':>7}  95% CI")
        for c in d.choices:
            if c.scored:
                lines.append(
                    f"  {c.choice:<22} {c.n_finished:>7} {c.n_failed:>6} {c.mean:>7.4f} {c.median:>7.4f}  [{c.ci_low:.4f}, {c.ci_high:.4f}]"
                )
            else:
                lines.append(f"  {c.choice:<22} {0:>7} {c.n_failed:>6} {'-':>7} {'-':>7}  no finished design")
    if status["discovered"]:
        found = status["discovered"]
        lines.append(f"\nbest design so far: {found['design_id']} (score {found['score']:.4f}, stage {found['stage']})")
        lines.append(json.dumps(found["design"], sort_keys=True))
    return "\n".join(lines)
