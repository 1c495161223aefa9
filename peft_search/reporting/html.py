"""The HTML report: one self-contained page (inline CSS, no script, no network) with its PNG figures
beside it, referenced by relative paths, so the directory opens from disk or can be copied anywhere.

    <out>/index.html
    <out>/edf-stage<i>.png      one per stage with a decision
    <out>/final-comparison.png  when the run has a final evaluation

The decisions table's cells are formatted by the same function as `peft-search status`
(`peft_search.search.status.choice_cells`), and every number carries its exact value in a
`data-value` attribute, so tools (and tests) can read the page without parsing formatted text.
"""

from __future__ import annotations

import datetime
import json
from html import escape
from pathlib import Path

from peft_search.reporting.plots import comparison_plot, edf_plot
from peft_search.reporting.tables import (
    RunView,
    StageView,
    comparison,
    compute_rows,
    format_interval,
    format_mean_std,
    load_run,
    paired_differences,
    space_path,
)
from peft_search.search.stage.decide import decision_outcome, kept_as, outcome_counts
from peft_search.search.status import choice_cells, collapse_warning, decision_summary
from peft_search.search.storage.paths import LocalStaging, StoragePath
from peft_search.space import Design

REPORT_DIR = "report"
INDEX = "index.html"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.kept td { font-weight: bold; background: #eef7ee; }
tr.failed td { background: #fbeaea; }
tr.group th { background: #f2f2f2; }
code, pre { font-size: 0.85em; } pre { white-space: pre-wrap; margin: 0; max-width: 50em; }
.note { color: #555; font-size: 0.9em; }
.warning { color: #a40; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> StoragePath:
    """Write the report of a run (finished or still going) and return the path of its index.html
    (on an object store when the run or `out` is one: written locally, then uploaded).

    InputError (the CLI's exit status 2) for a directory that is not a run, or a run without any
    finished trial."""
    run = load_run(run_dir)
    target = StoragePath.parse(out, "--out") if out is not None else run.run_dir / REPORT_DIR
    with LocalStaging(target) as out_dir:
        _write_pages(run, out_dir)
    return target / INDEX


def _write_pages(run: RunView, out_dir: Path) -> None:
    parts = [_header(run), _path_section(run)]
    for view in run.stages:
        parts.append(_stage_section(run, view, out_dir))
    parts.append(_final_section(run, out_dir))
    parts.append(_compute_section(run))
    parts.append(_trials_section(run))
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>peft-search report: {escape(run.name)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(p for p in parts if p)
        + "\n</body></html>\n"
    )
    index = out_dir / INDEX
    temporary = index.with_suffix(".html.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(index)


# ---- sections ---------------------------------------------------------------------------------------


def _num(value, text: str | None = None) -> str:
    """A numeric cell: formatted text, exact value in data-value."""
    if value is None:
        return '<td class="num">-</td>'
    return f'<td class="num" data-value="{escape(repr(value))}">{escape(text if text is not None else str(value))}</td>'


def _table(headers: list[str], rows: list[str], cls: str = "", attrs: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f'<table class="{cls}"{attrs}><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(rows) + "\n</tbody></table>"


def _header(run: RunView) -> str:
    spec = run.spec
    lines = [
        f"<h1>peft-search report: {escape(run.name)}</h1>",
        f'<p>Run <code>{escape(str(run.run_dir))}</code>: <b>{escape(run.state["status"])}</b>, '
        f"{escape(outcome_counts([s.status for s in run.stages]))}. Backbone <code>{escape(spec.backbone)}</code>, "
        f"objective {escape(spec.objective)}; "
        f"tasks {escape(', '.join(spec.tasks))}; budget {spec.budget_fraction:g} of the backbone's parameters; "
        f"{spec.designs_per_choice} designs per choice; training seeds {spec.seeds}; "
        f"fidelity {escape(_fidelity_text(spec.fidelity))}.</p>",
        f'<p class="note">Written {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}. '
        "A design's score is the mean over tasks of each task's main metric. The interval is a Student-t 95% "
        "interval of the mean. A raced stage ends by its selection procedure (KN++ or KN with a stop for ties; docs/design.md, "
        "Outcomes): selected (a claim at its confidence), tie within delta (one of the tied kept), or undecided "
        "(the best mean kept, no claim); it shows no P(best). A stage without one keeps the best mean and claims "
        "nothing; its P(best) is each choice's "
        "posterior probability of being the best: for paired designs (blocks) from the randomized complete block "
        "model, for independent designs from each choice's own t posterior (docs/design.md, Decisions); "
        "'-' where too few blocks or designs leave the noise unknown.</p>",
    ]
    found = run.state.get("discovered")
    if found:
        design = Design.from_dict(found["design"])
        lines.append(
            f"<p>Discovered design <code>{escape(found['design_id'])}</code> (score {found['score']:.4f}, from stage "
            f"{found['stage']}): {escape(design.summary())}</p><pre>{escape(design.to_json())}</pre>"
        )
    return "\n".join(lines)


def _fidelity_text(fidelity) -> str:
    parts = [f"{fidelity.max_steps} steps" if fidelity.max_steps is not None else f"{fidelity.epochs:g} epochs"]
    if fidelity.max_train_examples:
        parts.append(f"at most {fidelity.max_train_examples} training examples")
    if fidelity.max_eval_examples:
        parts.append(f"at most {fidelity.max_eval_examples} dev examples")
    return ", ".join(parts)


def _path_section(run: RunView) -> str:
    rows = [
        f"<tr><td>{escape(r['step'])}</td><td>{escape(r['component'])}</td><td>{escape(r['fixed'])}</td>"
        f"<td>{escape(r['space'])}</td></tr>"
        for r in space_path(run)
    ]
    return "<h2>Path S0 &rarr; S_final</h2>\n" + _table(["space", "component", "fixed to", "the space after it"], rows, "path")


def _stage_section(run: RunView, view: StageView, out_dir: Path) -> str:
    title = f"Stage {view.stage + 1}: {view.component}"
    parts = [f'<section class="stage" data-stage="{view.stage}" data-status="{escape(view.status)}">',
             f"<h2>{escape(title)} <small>({escape(view.status)})</small></h2>"]
    if view.skipped:
        parts.append(f"<p>Skipped: {escape(view.skipped)}</p></section>")
        return "\n".join(parts)
    notes = []
    if any(view.redraws.values()):
        notes.append("infeasible draws redrawn: " + ", ".join(f"{c} {n}" for c, n in view.redraws.items() if n))
    if any(view.duplicates.values()):
        notes.append("identical draws planned once: " + ", ".join(f"{c} {n}" for c, n in view.duplicates.items() if n))
    if view.reseeded_blocks:
        notes.append(f"{view.reseeded_blocks} block(s) repeat an earlier block's designs (nothing else is free): they "
                     "train them with training seeds of their own, so they measure training noise")
    for choice, why in view.infeasible.items():
        notes.append(f"{choice}: no feasible design ({why})")
    if notes:
        parts.append('<p class="note">' + escape("; ".join(notes)) + "</p>")
    decision = view.decision
    if decision is None:
        parts.append(f"<p>Not decided yet: {len(view.records)} of {view.planned or '?'} trials recorded "
                     f"({view.failed} failed).</p></section>")
        return "\n".join(parts)
    image = f"edf-stage{view.stage}.png"
    edf_plot(decision, f"{title}: EDF of design scores per choice", out_dir / image)
    parts.append(f'<p><b>Decision ({escape(decision_outcome(decision))}): {escape(decision_summary(decision))}</b></p>')
    parts.append(f'<img class="edf" src="{image}" alt="EDF of design scores per choice, stage {view.stage + 1}">')
    rows = []
    for stats in decision.choices:
        cells = choice_cells(stats)
        kept = stats.choice == decision.winner
        rows.append(
            f'<tr class="{"kept" if kept else ""}" data-choice="{escape(stats.choice)}">'
            f'<td>{escape(stats.choice)}{f" <small>({escape(kept_as(decision))})</small>" if kept else ""}</td>'
            + _num(stats.mean, cells["mean"]).replace("<td", '<td data-field="mean"', 1)
            + _num(stats.median, cells["median"]).replace("<td", '<td data-field="median"', 1)
            + _num(stats.ci_low, cells["ci"].split(",")[0].lstrip("[") if stats.scored else None).replace("<td", '<td data-field="ci_low"', 1)
            + _num(stats.ci_high, cells["ci"].split(", ")[1].rstrip("]") if stats.scored else None).replace("<td", '<td data-field="ci_high"', 1)
            + _num(stats.n_finished).replace("<td", '<td data-field="n_finished"', 1)
            + _num(stats.n_failed).replace("<td", '<td data-field="n_failed"', 1)
            + _num(stats.n_failed_trials).replace("<td", '<td data-field="n_failed_trials"', 1)
            + _num(stats.n_collapsed_trials).replace("<td", '<td data-field="n_collapsed_trials"', 1)
            + _num(stats.p_best, cells["p_best"]).replace("<td", '<td data-field="p_best"', 1)
            + f'<td data-field="diff">{escape(cells["diff"])}</td><td data-field="dropped">{escape(cells["dropped"])}</td>'
            + "</tr>"
        )
    parts.append(_table(
        ["choice", "mean", "median", "95% CI low", "95% CI high", "designs scored", "designs failed", "trials failed",
         "trials collapsed", "P(best)", "difference to the best [95% CI]", "dropped by the race"],
        rows, "decisions", f' data-stage="{view.stage}"',
    ))
    warning = collapse_warning(sum(1 for r in view.records if r.get("collapsed")), len(view.records))
    if warning:
        parts.append(f'<p class="warning">Warning: {escape(warning)}</p>')
    probability = decision.win_probability
    evidence = (f"{decision.method} comparison over {decision.blocks} complete blocks" if decision.method == "blocked"
                else f"{decision.method} comparison")
    race = (f" Race: {decision.rounds} rounds, {escape(decision.race_reason or '')}; {decision.trials_run} of "
            f"{decision.trials_planned} planned trials trained." if decision.rounds is not None else "")
    if decision.outcome is not None:  # decided by the selection procedure: its verdict is the claim
        claim = (f"Selection procedure ({(decision.procedure or 'kn').upper()}, delta {decision.delta:g}, confidence {decision.selection_confidence:g}): "
                 f"{escape(decision.outcome)}" + (f", tied: {escape(', '.join(decision.tied))}" if decision.tied else "")
                 + f"; the kept choice: {escape(decision.winner or '-')} ({escape(kept_as(decision))}); no P(best) is "
                 "claimed (docs/design.md, Outcomes).")
    elif probability is not None:
        claim = (f"No selection procedure: {escape(kept_as(decision))}. P(best) of {escape(decision.winner)}: "
                 f"{probability:.2f} ({evidence}, {decision.resamples} Monte Carlo draws, seed {decision.seed}).")
    else:
        claim = (f"No selection procedure: {escape(kept_as(decision))}. P(best) unknown: {evidence} with too few "
                 "blocks or designs to estimate the noise.")
    parts.append(
        f'<p class="decision" data-kept="{escape(decision.winner or "")}" data-runner-up="{escape(decision.runner_up or "")}"'
        + (f' data-win-probability="{probability!r}"' if probability is not None else "")
        + (f' data-outcome="{escape(decision.outcome)}"' if decision.outcome is not None else "")
        + ">" + claim + race + "</p></section>"
    )
    return "\n".join(parts)


def _final_section(run: RunView, out_dir: Path) -> str:
    if not run.final_rows:
        if run.final is not None:
            return "<h2>Final evaluation</h2><p>Not run yet (peft-search evaluate RUN).</p>"
        return ""
    # In the spec's order; tasks of a `peft-search evaluate --final FILE` with other tasks after them.
    evaluated = {row["task"] for row in run.final_rows}
    final = run.final
    tasks = [t for t in dict.fromkeys([*(final.tasks or run.spec.tasks if final else []), *sorted(evaluated)]) if t in evaluated]
    table = comparison(run.final_rows, tasks)
    intro = (
        "<h2>Final evaluation</h2>"
        "<p>The discovered design against baseline presets at the same budget (full fine-tuning trains every "
        "parameter). Each contender's learning rate was tuned the same way: Optuna's TPE sampler through Ray Tune's "
        f"OptunaSearch, {final.tuning.trials if final else '?'} trials per contender "
        f"{'and task' if final.tuning.task is None else 'on ' + escape(final.tuning.task) + ' (its rate used on every task)'} over "
        f"{escape(final.tuning.range_text())} (log scale), validated on "
        f"{final.tuning.holdout_fraction:g} of the training data held back (never the dev set). Then each contender "
        f"trained with seeds {final.seeds} at the tuned rate; dev score mean &plusmn; std over seeds. Fidelity: "
        f"{escape(_fidelity_text(final.fidelity))}.</p>" if final else "<h2>Final evaluation</h2>"
    )
    headers = ["contender"] + [f"{t}: dev score" for t in tasks] + [f"{t}: tuned lr" for t in tasks] + ["average", "realised params"]
    rows = []
    for row in table:
        cells = [f'<td>{escape(row["contender"])}</td>']
        for task in tasks:
            cell = row["tasks"][task]
            cells.append(_num(cell["mean"], format_mean_std(cell)).replace("<td", f'<td data-task="{escape(task)}" data-std="{cell["std"]!r}"', 1))
        for task in tasks:
            lr = row["tasks"][task]["learning_rate"]
            cells.append(_num(lr, f"{lr:.2e}" if lr is not None else None))
        cells.append(_num(row["average"], f"{row['average']:.4f}" if row["average"] is not None else None))
        params = next((row["tasks"][t]["realised_params"] for t in tasks if row["tasks"][t]["realised_params"] is not None), None)
        cells.append(_num(params, f"{params:,}" if params is not None else None))
        rows.append(f'<tr data-contender="{escape(row["contender"])}">' + "".join(cells) + "</tr>")
    if not run.final_done:
        recorded = sum(1 for r in run.final_rows if r["phase"] == "final")
        intro += (f'<p class="note">Not finished: {recorded} seeded runs recorded so far, so some cells are missing '
                  "or rest on fewer seeds (peft-search evaluate RUN goes on where it stopped).</p>")
    skipped_path = run.run_dir / "final" / "skipped.json"
    skipped = json.loads(skipped_path.read_text()) if skipped_path.is_file() else {}
    notes = "".join(f"<p class=\"note\">{escape(name)} not compared: {escape(why)}</p>" for name, why in skipped.items())
    image = "final-comparison.png"
    comparison_plot(table, tasks, out_dir / image)
    return (intro + "\n" + _table(headers, rows, "comparison") + notes + _paired_section(run.final_rows, tasks)
            + f'\n<img class="comparison" src="{image}" alt="final comparison">')


def _paired_section(final_rows, tasks: list[str]) -> str:
    """The discovered design minus each other contender, paired by seed, with 95% t intervals."""
    if not any(r["contender"] == "discovered" and r["phase"] == "final" for r in final_rows):
        return ""
    table = paired_differences(final_rows, tasks, reference="discovered")
    if not table:
        return ""
    headers = ["discovered minus"] + list(tasks) + ["average over tasks"]
    rows = []
    for row in table:
        cells = [f'<td>{escape(row["contender"])}</td>']
        for cell in [*(row["tasks"][t] for t in tasks), row["average"]]:
            cells.append(_num(cell["mean"], format_interval(cell)))
        rows.append(f'<tr data-contender="{escape(row["contender"])}">' + "".join(cells) + "</tr>")
    return ("\n<h3>Discovered design minus each contender, paired by seed</h3>"
            "<p>Mean difference of dev scores over the seeds both trained with (positive: the discovered design "
            "is better) and its 95% Student-t interval (degrees of freedom: seeds - 1). The average pairs, per "
            "seed, the two contenders' means over the tasks. An interval that contains 0 shows no difference.</p>\n"
            + _table(headers, rows, "paired"))


def _compute_section(run: RunView) -> str:
    rows = [
        f"<tr><td>{escape(r['stage'])}</td><td>{escape(r['component'])}</td><td>{escape(r['status'])}</td>"
        f'<td class="num">{r["trials"]}</td><td class="num">{r["failed"]}</td><td class="num">{r["trial_hours"]}</td>'
        f'<td class="num">{escape(r["wall_time"])}</td></tr>'
        for r in compute_rows(run)
    ]
    return ("<h2>Compute</h2>\n" + _table(["stage", "component", "status", "trials (done/planned)", "failed",
                                          "trial-hours", "wall time"], rows, "compute")
            + '<p class="note">Trial-hours: the sum of the trials\' own wall times; wall time: the stage from its '
              "first trial to its decision.</p>")


def _trials_section(run: RunView) -> str:
    headers = ["trial", "design", "task", "seed", "status", "score", "trainable params", "wall s", "design / error"]
    rows = []
    for view in run.stages:
        if not view.records:
            continue
        current = None
        for r in view.records:
            if r["choice"] != current:
                current = r["choice"]
                rows.append(f'<tr class="group"><th colspan="{len(headers)}">stage {view.stage + 1} ({escape(view.component)}) '
                            f"&middot; {escape(current)}</th></tr>")
            failed = r["status"] != "finished"
            detail = (f"<pre>{escape(r.get('error') or 'no error message')}</pre>" if failed
                      else f"<code>{escape(r['grouping'])} | {escape(r['allocation'])} | {escape(r['tunable_groups'])} | "
                           f"{escape(r['strategies'])}</code>")
            rows.append(
                f'<tr class="{"failed" if failed else ""}" data-trial="{escape(r["trial_id"])}" data-status="{escape(r["status"])}">'
                f"<td><code>{escape(r['trial_id'])}</code></td><td><code>{escape(r['design_id'])}</code></td>"
                f"<td>{escape(r['task'])}</td>{_num(r['seed'])}<td>{escape(r['status'])}</td>"
                + _num(r["score"], f"{r['score']:.4f}" if r["score"] is not None else None)
                + _num(r.get("realised_params"), f"{r['realised_params']:,}" if r.get("realised_params") is not None else None)
                + _num(r.get("wall_time_s"), f"{r['wall_time_s']:.1f}" if r.get("wall_time_s") is not None else None)
                + f"<td>{detail}</td></tr>"
            )
    failed = sum(v.failed for v in run.stages)
    return (f"<h2>Trials</h2>\n<p>{sum(len(v.records) for v in run.stages)} trials recorded, {failed} failed "
            "(grouped by stage and choice; failures in red with their error).</p>\n" + _table(headers, rows, "trials"))
