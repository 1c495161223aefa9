"""The tables of docs/study.md, computed from the study's committed data under docs/study/:

    .venv/bin/python docs/study/tables.py            # every table, as Markdown
    .venv/bin/python docs/study/tables.py pilot      # one section: pilot | staged | plots | tasks | patterns | joint | random | searches | marginals | final
    .venv/bin/python docs/study/tables.py --write    # refresh docs/study.md's generated blocks

Reads only what is committed: `fidelity-pilot/` (the pilot's trial records), `staged/`, `joint/` and
`random/` (the runs' resumable subsets: spec, state, plans, trial records; `peft-search report`
renders them too) and the staged run's final evaluation (its records, so the part of it that has run
counts). A section whose data is not there yet says so.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

from peft_search.reporting.tables import collapsed_note, comparison, format_interval, load_run, paired_differences
from peft_search.search.fidelity import spearman
from peft_search.search.stage.confidence import compare_independent
from peft_search.space import DesignSpace
from peft_search.space.components import strategy_group
from peft_search.train.presets import preset_design

STUDY = Path(__file__).resolve().parent
PAGE = STUDY.parent / "study.md"
BLOCK = re.compile(r"(<!-- BEGIN tables.py (\w+) -->\n)(.*?)(<!-- END tables.py \2 -->)", re.S)


def pilot() -> str:
    """Per task and length: collapsed trials, mean score, Spearman with the longest length, s/trial."""
    records = [json.loads(p.read_text()) for p in sorted((STUDY / "fidelity-pilot" / "fidelity").glob("steps-*/*.json"))]
    if not records:
        return "(no pilot records)"
    tasks = list(dict.fromkeys(r["task"] for r in records))
    lengths = sorted({r["steps"] for r in records})
    longest = lengths[-1]
    score = {(r["task"], r["steps"], r["sample"]): r["score"] for r in records}
    samples = sorted({r["sample"] for r in records})
    lines = ["| task | steps | collapsed | mean score | range | Spearman vs " + f"{longest} | s/trial |", "|---|---|---|---|---|---|---|"]
    for task in tasks:
        for steps in lengths:
            mine = [r for r in records if r["task"] == task and r["steps"] == steps]
            scores = [r["score"] for r in mine]
            rho = None if steps == longest else spearman([score[(task, steps, s)] for s in samples],
                                                          [score[(task, longest, s)] for s in samples])
            lines.append(f"| {task} | {steps} | {sum(r['collapsed'] for r in mine)}/{len(mine)} | {statistics.fmean(scores):.3f} | "
                         f"{min(scores):.3f} to {max(scores):.3f} | {'-' if rho is None else f'{rho:.2f}'} | "
                         f"{statistics.fmean(r['wall_time_s'] for r in mine):.0f} |")
    return "\n".join(lines)


def _p(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value >= 0.995:
        return ">0.99"
    return "<0.01" if value < 0.005 else f"{value:.2f}"


def busy_hours(records) -> float:
    """Hours with at least one trial running: the union of the records' [started_at, finished_at]
    spans. Unlike a stage's recorded wall time it counts every piece of a run that was killed and
    resumed across sessions, and none of the time between them."""
    spans = sorted((datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"]))
                   for r in records if r.get("started_at") and r.get("finished_at"))
    total, end = 0.0, None
    for start, finish in spans:
        if end is None or start > end:
            total += (finish - start).total_seconds()
            end = finish
        elif finish > end:
            total += (finish - end).total_seconds()
            end = finish
    return total / 3600


def staged(name: str = "staged") -> str:
    """Per stage: choices, trials run against fixed N, rounds, the decision with P(best), and per
    choice its mean design score and paired difference to the best with its 95% interval."""
    directory = STUDY / name
    if not (directory / "state.json").is_file():
        return f"(no {name} run committed yet)"
    run = load_run(directory)
    lines = ["| stage | component | trials run / fixed N | rounds | decision | P(best) | choices: mean score, difference to the best [95% interval], P(best) | collapsed trials | time with trials running |",
             "|---|---|---|---|---|---|---|---|---|"]
    for view in run.stages:
        decision = view.decision
        if decision is None:
            lines.append(f"| {view.stage + 1} | {view.component} | {view.finished}/{view.planned or '?'} | - | "
                         f"{view.status} | - | - | - | - |")
            continue
        cells = []
        if decision.method == "joint":  # one choice, the sampler: its designs' mean, and the best design
            best = max(d.score for d in decision.designs if d.score is not None)
            cells.append(f"{decision.winner}: designs' mean {decision.choices[0].mean:.4f}, best design {best:.4f} "
                         f"(P(best) not estimated: one training per design)")
        for stats in (() if decision.method == "joint" else decision.choices):
            difference = "best" if stats.choice == decision.winner else format_interval(
                {"mean": stats.diff_mean, "low": stats.diff_low, "high": stats.diff_high})
            dropped = f", dropped after round {stats.eliminated_round + 1}" if stats.eliminated_round is not None else ""
            mean = "-" if stats.mean is None else f"{stats.mean:.4f}"
            cells.append(f"{stats.choice}: {mean}, {difference}, {_p(stats.p_best)} ({stats.blocks} blocks{dropped})")
        wall = f"{busy_hours(view.records) * 60:.0f} min"
        lines.append(f"| {view.stage + 1} | {view.component} | {decision.trials_run}/{decision.trials_planned} | "
                     f"{decision.rounds if decision.rounds is not None else '-'} | {decision.winner} | "
                     f"{_p(decision.win_probability)} | {'<br>'.join(cells)} | {decision.collapsed_trials} | {wall} |")
    found = run.state.get("discovered")
    if found:
        label = "Discovered design" if run.state.get("status") == "finished" else "Best design so far (the last decided stage's)"
        lines += ["", f"{label}: `{json.dumps(found['design'], sort_keys=True)}`"]
    trials = sum(len(view.records) for view in run.stages)
    hours = sum(view.trial_hours for view in run.stages)
    lines += ["", f"Trials recorded: {trials}, {hours:.2f} trial-hours."]
    return "\n".join(lines)


def plots(name: str = "staged") -> str:
    """The report's EDF plot of each decided stage (docs/study/reports/NAME/edf-stageK.png), as images."""
    directory = STUDY / name
    if not (directory / "state.json").is_file():
        return f"(no {name} run committed yet)"
    lines = [f"![EDF of stage {view.stage + 1}, {view.component}](study/reports/{name}/edf-stage{view.stage}.png)"
             for view in load_run(directory).stages
             if view.decision is not None and (STUDY / "reports" / name / f"edf-stage{view.stage}.png").is_file()]
    return "\n".join(lines) or "(no stage decided yet)"


def per_task(name: str = "staged") -> str:
    """Per decided stage and choice: each task's mean score over the choice's finished trials, and
    how many of them collapsed (which task a decision rests on)."""
    directory = STUDY / name
    if not (directory / "state.json").is_file():
        return f"(no {name} run committed yet)"
    run = load_run(directory)
    tasks = list(run.spec.tasks)
    lines = ["| stage | choice | " + " | ".join(f"{t} (mean, collapsed)" for t in tasks) + " |", "|---" * (len(tasks) + 2) + "|"]
    for view in run.stages:
        if view.decision is None:
            continue
        for choice in view.choices:
            cells = []
            for task in tasks:
                mine = [r for r in view.records if r["choice"] == choice and r["task"] == task and r["status"] == "finished"]
                cells.append(f"{statistics.fmean(r['score'] for r in mine):.3f}, {sum(bool(r.get('collapsed')) for r in mine)}/{len(mine)}"
                             if mine else "-")
            mark = " (chosen)" if choice == view.decision.winner else ""
            lines.append(f"| {view.stage + 1} {view.component} | {choice}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PATTERNS = {"grouping": "1. spindle grouping", "allocation": "2. uniform allocation",
            "tunable_groups": "3. tune all groups"}


def paper_pick(component: str) -> str:
    """The paper's choice for a component, as its S4 design on T5 has it (our `s4-t5` preset)."""
    paper, space = preset_design("s4-t5"), DesignSpace(num_groups=4)
    if component in ("grouping", "allocation"):
        return getattr(paper, component)
    if component == "tunable_groups":
        return space.format_choice(component, paper.tunable_groups)
    return space.format_choice(component, paper.strategies[strategy_group(component, 4) - 1])


def patterns() -> str:
    """Per stage of the staged search: the paper's pick, the search's, and whether they agree."""
    directory = STUDY / "staged"
    if not (directory / "state.json").is_file():
        return "(no staged run committed yet)"
    space = DesignSpace(num_groups=4)
    lines = ["| the paper's pattern | stage | the paper's pick | the search's pick | P(best) | the paper's pick: mean, difference to the best [95% interval] | reproduced? |",
             "|---|---|---|---|---|---|---|"]
    for view in load_run(directory).stages:
        pattern = PATTERNS.get(view.component) or f"4. a strategy mix per group ({view.component.removeprefix('strategy.')})"
        paper = paper_pick(view.component)
        decision = view.decision
        if decision is None:
            verdict = f"not tested: {view.skipped}" if view.skipped else view.status
            lines.append(f"| {pattern} | {view.stage + 1} | {paper} | - | - | - | {verdict} |")
            continue
        winner = space.format_choice(view.component, space.parse_choice(view.component, decision.winner))
        stats = next((c for c in decision.choices
                      if space.format_choice(view.component, space.parse_choice(view.component, c.choice)) == paper), None)
        if stats is None:
            cell = "not a candidate"
        elif winner == paper:
            cell = f"{stats.mean:.4f}, best"
        else:
            cell = f"{stats.mean:.4f}, " + format_interval({"mean": stats.diff_mean, "low": stats.diff_low, "high": stats.diff_high})
        # Within noise: some other choice's paired difference to the best has an interval that covers 0.
        close = any(c.diff_low is not None and c.diff_low <= 0 <= c.diff_high
                    for c in decision.choices if c.choice != decision.winner)
        verdict = ("yes" if winner == paper else "no") + (" (within noise: a 95% interval of a difference covers 0)" if close else "")
        lines.append(f"| {pattern} | {view.stage + 1} | {paper} | {winner} | {_p(decision.win_probability)} | {cell} | {verdict} |")
    return "\n".join(lines)


def trainings(name: str) -> list[list[dict]]:
    """A search's trained designs in the order they finished, each as the finished records of one
    training on every task of the spec (a design trained again with other seeds, as a reseeded block
    is, counts again). Trainings with a task unfinished are left out."""
    run = load_run(STUDY / name)
    tasks = set(run.spec.tasks)
    by_training: dict[tuple, list[dict]] = {}
    for view in run.stages:
        for record in view.records:
            if record["status"] == "finished" and record["score"] is not None:
                by_training.setdefault((view.stage, record["design_id"], record["seed"], record["block"]), []).append(record)
    done = [records for records in by_training.values() if {r["task"] for r in records} == tasks]
    return sorted(done, key=lambda records: max(r["finished_at"] for r in records))


def design_score(records: list[dict]) -> float:
    """A training's design score: the mean over its tasks (one seed each in the study's searches)."""
    return statistics.fmean(r["score"] for r in records)


SEARCHES = ("staged", "joint", "random")


def searches() -> str:
    """The three searches side by side: designs trained, compute, the best design score seen after
    so many designs (an anytime curve, equally biased upwards by noise for all three), and the design
    each search decided on."""
    present = [n for n in SEARCHES if (STUDY / n / "state.json").is_file()]
    if not present:
        return "(no search committed yet)"
    budget = max(len(trainings(n)) for n in present)
    marks = sorted({max(1, budget // 4), max(1, budget // 2), budget})
    lines = ["| search | designs trained | trials | trial-hours | hours with trials running | collapsed trials | mean design score | mean per task | "
             + " | ".join(f"best after {k}" for k in marks) + " | decided design |",
             "|---" * (9 + len(marks)) + "|"]
    for name in present:
        run = load_run(STUDY / name)
        designs = [design_score(records) for records in trainings(name)]
        records = [r for view in run.stages for r in view.records]
        hours = sum(view.trial_hours for view in run.stages)
        best = [("-" if len(designs) < k else f"{max(designs[:k]):.4f}") for k in marks]
        found = run.state.get("discovered")
        decided = f"`{json.dumps(found['design'], sort_keys=True)}`" if found and run.state.get("status") == "finished" else "(running)"
        mean = f"{statistics.fmean(designs):.4f}" if designs else "-"
        finished = [r for r in records if r["status"] == "finished" and r["score"] is not None]
        per_task = ", ".join(f"{task} {statistics.fmean(r['score'] for r in finished if r['task'] == task):.3f}"
                             for task in run.spec.tasks if any(r["task"] == task for r in finished))
        lines.append(f"| {name} | {len(designs)} | {len(records)} | {hours:.2f} | {busy_hours(records):.2f} | {sum(bool(r.get('collapsed')) for r in records)} | "
                     f"{mean} | {per_task} | " + " | ".join(best) + f" | {decided} |")
    return "\n".join(lines)


def marginals() -> str:
    """Per component and choice, over the designs a joint or random search trained: how many had that
    choice and their mean design score. The random search's designs are drawn independently, so its
    marginal means estimate each choice's main effect averaged over the other components (a check of
    the staged decisions from other data): for it, each choice's difference to the component's best
    choice with a Welch 95% interval, and P(best), as a stage computes them for independent designs
    (`compare_independent`). TPE draws more where it scored well, so its counts show where it went
    and its means are biased by that: no interval for it."""
    present = [n for n in ("joint", "random") if (STUDY / n / "state.json").is_file()]
    if not present:
        return "(no joint or random run committed yet)"
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for name in present:
        scores: dict[str, dict[str, list[float]]] = {}
        for records in trainings(name):
            for component, choice in records[0]["joint_choices"].items():
                scores.setdefault(component, {}).setdefault(choice, []).append(design_score(records))
        for component, by_choice in scores.items():
            compared = compare_independent(by_choice, seed=0) if name == "random" else None
            for choice, values in by_choice.items():
                cell = f"{len(values)}, {statistics.fmean(values):.4f}"
                if compared is not None:
                    difference = compared.diff_to_best[choice]
                    cell += ", best" if choice == compared.best else (
                        f", {format_interval(dict(difference._asdict()))}" if difference.mean is not None else "")
                    cell += f", {_p(compared.p_best[choice])}"
                cells.setdefault((component, choice), {})[name] = cell
    headers = {"joint": "joint: designs, mean score",
               "random": "random: designs, mean score, difference to the best [95% interval], P(best)"}
    lines = ["| component | choice | " + " | ".join(headers[n] for n in present) + " |",
             "|---" * (2 + len(present)) + "|"]
    for (component, choice) in sorted(cells):
        lines.append(f"| {component} | {choice} | " + " | ".join(cells[(component, choice)].get(n, "-") for n in present) + " |")
    return "\n".join(lines)


def final() -> str:
    """The final comparison (mean and std over seeds) and the paired-by-seed differences to the staged
    search's design, per task and averaged over the searched tasks, the unseen ones and all."""
    directory = STUDY / "staged"
    run = load_run(directory)
    finals = [r for r in run.final_rows if r["phase"] == "final"]
    if not finals:
        return "(no final evaluation committed yet)"
    evaluated = list(run.final.tasks or run.spec.tasks)
    tasks = [t for t in evaluated if any(r["task"] == t for r in finals)]
    # Averages over the tasks the search trained on, over the others (transfer), and over all.
    searched = [t for t in tasks if t in run.spec.tasks]
    groups = {"searched": searched, "unseen": [t for t in tasks if t not in searched], "all": tasks}
    groups = {label: members for label, members in groups.items() if members}
    header = " | ".join(f"{t} ({'searched' if t in searched else 'unseen'})" for t in tasks)
    header += "".join(f" | average, {label}" for label in groups)
    lines = []
    if not run.final_done:
        planned = len(run.final.contenders) * len(evaluated) * len(run.final.seeds)
        lines += [f"Not finished: {len(finals)} of {planned} seeded runs recorded so far; a missing cell has no run yet.", ""]
    averages = {label: {row["contender"]: row["average"] for row in comparison(run.final_rows, members)}
                for label, members in groups.items()}
    # The final section's order: the searches' designs, then the presets.
    order = [c for c in run.final.contenders if c == "discovered"] + list(run.final.designs) + [
        c for c in run.final.contenders if c != "discovered"]

    def ordered(rows: list[dict]) -> list[dict]:
        return sorted(rows, key=lambda row: order.index(row["contender"]) if row["contender"] in order else len(order))

    lines += [f"| contender | tuned learning rate | {header} |", "|---" * (len(tasks) + len(groups) + 2) + "|"]
    for row in ordered(comparison(run.final_rows, tasks)):
        rates = sorted({row["tasks"][t]["learning_rate"] for t in tasks} - {None})
        cells = [", ".join(f"{rate:.2e}" for rate in rates) or "-"]
        cells += [("-" if row["tasks"][t]["mean"] is None
                   else f"{row['tasks'][t]['mean']:.3f} ± {row['tasks'][t]['std']:.3f}{collapsed_note(row['tasks'][t])}")
                  for t in tasks]
        cells += ["-" if averages[label][row["contender"]] is None else f"{averages[label][row['contender']]:.3f}"
                  for label in groups]
        lines.append(f"| {row['contender']} | " + " | ".join(cells) + " |")
    paired = {label: {row["contender"]: row["average"] for row in paired_differences(run.final_rows, members)}
              for label, members in groups.items()}
    lines += ["", f"| discovered (staged) minus | {header} |", "|---" * (len(tasks) + len(groups) + 1) + "|"]
    for row in ordered(paired_differences(run.final_rows, tasks)):
        cells = [format_interval(row["tasks"][t]) for t in tasks]
        cells += [format_interval(paired[label][row["contender"]]) for label in groups]
        lines.append(f"| {row['contender']} | " + " | ".join(cells) + " |")
    tuning = [r for r in run.final_rows if r["phase"] == "tune"]
    trial_hours = sum(r["wall_time_s"] or 0 for r in run.final_rows) / 3600
    lines += ["", f"Recorded: {len(tuning)} tuning trials and {len(finals)} seeded runs, {trial_hours:.1f} trial-hours, "
              f"{busy_hours(run.final_rows):.1f} hours with runs going."]
    return "\n".join(lines)


def redecided(name: str = "staged", deltas=(0.05, 0.02)) -> str:
    """Each stage re-decided from its committed records by today's selection procedure (KN with a
    stop for ties; docs/design.md, "Selection procedure"), at the stage's own racing settings and
    each delta: where its race would stand. The procedure may want blocks the old race never ran
    (it dropped choices after 2 blocks by P(best)); such a stage reads "needs N more trials"."""
    from peft_search.search.stage.plan import plan_path, read_plan
    from peft_search.search.stage.racing import race_state

    directory = STUDY / name
    if not (directory / "state.json").is_file():
        return f"(no {name} run committed yet)"
    run = load_run(directory)
    header = " | ".join(f"delta {delta:g}" for delta in deltas)
    lines = [f"| stage | component | recorded decision (P(best)) | {header} |", "|---|---|---|" + "---|" * len(deltas)]
    for view in run.stages:
        if view.decision is None:
            continue
        plan = read_plan(plan_path(directory, view.stage))
        cells = []
        for delta in deltas:
            racing = run.spec.racing.model_copy(update={"delta": delta})
            race = race_state(plan, list(view.records), racing, run.spec.tasks)
            if not race.done:
                cells.append(f"needs {len(race.pending)} more trials (block {race.blocks}; not recorded)")
            elif race.outcome == "tie":
                cells.append(f"tie of {', '.join(race.tied)} after {race.blocks} blocks: keeps {race.kept}")
            elif race.outcome == "selected":
                cells.append(f"selects {race.kept} after {race.blocks} blocks")
            else:
                leader = max((s for s in view.decision.choices if s.choice in race.survivors and s.mean is not None),
                             key=lambda s: s.mean).choice
                cells.append(f"undecided after {race.blocks} blocks (best mean: {leader})")
        lines.append(f"| {view.stage + 1} | {view.component} | {view.decision.winner} ({_p(view.decision.win_probability)}) | "
                     + " | ".join(cells) + " |")
    lines += ["", f"Racing settings: min_blocks {run.spec.racing.min_blocks}, confidence {run.spec.racing.confidence:g}, "
              f"at most {run.spec.designs_per_choice} blocks; a first stage under 8 blocks lets the procedure stop for a "
              "tie but drop nothing."]
    return "\n".join(lines)


SECTIONS = {"pilot": pilot, "staged": staged, "redecided": redecided, "joint": lambda: staged("joint"), "random": lambda: staged("random"),
            "searches": searches, "marginals": marginals, "plots": plots, "tasks": per_task, "patterns": patterns, "final": final}


def refresh(page: str) -> str:
    """The page with every block between `<!-- BEGIN tables.py NAME -->` and its END replaced by the
    section NAME as computed now."""
    return BLOCK.sub(lambda m: f"{m.group(1)}{SECTIONS[m.group(2)]()}\n{m.group(4)}", page)


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        PAGE.write_text(refresh(PAGE.read_text()))
        print(f"refreshed {PAGE}")
        return 0
    names = argv or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown section {unknown[0]!r}; give any of {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"## {name}\n\n{SECTIONS[name]()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
