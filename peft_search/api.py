"""The Python API (docs/design.md, "Python API"): what the CLI does, as functions that return
objects, for notebooks and scripts.

    import peft_search

    run = peft_search.run("jobs/quickstart.yaml", storage="runs")   # or a dict, or a SearchSpec
    for stage in run.stages:
        print(stage.component, stage.outcome, stage.kept, [(c.choice, c.mean) for c in stage.choices])
    run.discovered                                                   # a Design
    peft_search.export(run, "my-method/")

`run` and `resume` train in this process's Ray (or join `address`), like `peft-search run`; their
lines (run directory, each stage's progress and outcome) go to the `peft_search` logger, or to
tqdm bars with `progress="tqdm"`, or to stdout with `progress="print"`; Tune prints no tables.
Bad input raises `InputError` (its `field` names the key) before anything is created; a stage that
cannot decide raises `SearchFailed`; Ctrl+C leaves the run `interrupted` for `resume`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from peft_search.space import Design

logger = logging.getLogger("peft_search")
Progress = Literal["log", "tqdm", "print"]


@dataclass(frozen=True)
class ChoiceResult:
    """One choice of a decided stage: its mean design score and 95% t interval, the paired difference
    to the kept choice, its P(best) where the stage claims one, the round the race dropped it in."""

    choice: str
    designs: int  # designs with a score
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    diff_to_best: float | None
    p_best: float | None
    dropped_in_round: int | None  # 1-based; None: not dropped


@dataclass(frozen=True)
class StageResult:
    stage: int
    component: str
    outcome: str  # pending | running | interrupted | failed | skipped | selected | tie | undecided (docs/design.md, "Outcomes")
    kept: str | None  # the choice the stage fixed, once decided
    choices: tuple[ChoiceResult, ...]  # empty until decided
    trials_done: int
    trials_planned: int | None
    trials_failed: int
    time_left_s: float | None  # 0 once decided; None before any trial was timed
    summary: str  # the one-line decision, as `peft-search status` prints it
    kept_as: str | None = None  # once decided: "selected", "tie (kept)" or "kept: best mean, no claim"

    @property
    def decided(self) -> bool:
        return self.kept_as is not None


@dataclass(frozen=True)
class RunResult:
    """Where a run stands (`peft-search status RUN` as an object); `str()` is status's text."""

    run_dir: str
    status: str  # running | finished | interrupted | failed
    stages: tuple[StageResult, ...]
    discovered: Design | None  # the best design so far
    discovered_score: float | None
    trials_done: int
    trials_failed: int
    time_left_s: float | None  # every stage not decided; see time_left_at_most
    time_left_at_most: bool  # racing: stages may stop earlier
    final_path: str | None  # final.parquet, once the final evaluation ran to its end
    text: str

    def __str__(self) -> str:
        return self.text

    def stage(self, component: str) -> StageResult:
        for stage in self.stages:
            if stage.component == component:
                return stage
        raise KeyError(f"{component!r}: the run's stages are {', '.join(s.component for s in self.stages)}")


def status(run: str | Path | RunResult) -> RunResult:
    """Where a run stands, read from its directory (local or object store); no Ray needed."""
    from peft_search.search.stage.decide import Decision, kept_as
    from peft_search.search.status import decision_summary, run_status

    data = run_status(_run_dir(run))
    stages = []
    for stage in data["stages"]:
        decision = Decision.from_dict(stage["decision"]) if stage["decision"] else None
        choices = tuple(
            ChoiceResult(c.choice, c.n_finished, c.mean, c.ci_low, c.ci_high, c.diff_mean, c.p_best,
                         None if c.eliminated_round is None else c.eliminated_round + 1)
            for c in (decision.choices if decision is not None else ())
        )
        summary = decision_summary(decision) if decision is not None else (stage["skipped"] or "")
        stages.append(StageResult(stage["stage"], stage["component"], stage["status"], stage["winner"], choices,
                                  stage["done"], stage["planned"], stage["failed"], stage["time_left_s"], summary,
                                  kept_as(decision) if decision is not None else None))
    found = data["discovered"]
    return RunResult(
        run_dir=data["run_dir"], status=data["status"], stages=tuple(stages),
        discovered=Design.from_dict(found["design"]) if found else None, discovered_score=found["score"] if found else None,
        trials_done=data["trials_done"], trials_failed=data["trials_failed"], time_left_s=data["estimated_remaining_s"],
        time_left_at_most=data["time_left_at_most"], text=data["text"],
        final_path=f"{data['run_dir']}/final.parquet" if data["final"] and data["final"]["done"] else None,
    )


def run(job, *, storage: str | None = None, address: str | None = None, data_dir: str | None = None,
        progress: Progress = "log", report: bool = True) -> RunResult:
    """Run a search: `job` is a job file's path, its mapping, or a `SearchSpec`. Checks it completely
    first (InputError naming the field; nothing created), then runs every stage (and the final
    evaluation when the spec has one) and writes the HTML report. Returns the finished run's status."""
    from peft_search.search.controller import Controller
    from peft_search.search.preflight import preflight

    _check_progress(progress)
    checked = preflight(job, storage=storage, data_dir=data_dir, address=address)
    controller = Controller.create(checked.spec, first_plan=checked.first_plan,
                                   job_path=job if isinstance(job, (str, Path)) else "search")
    return _drive(controller, address, progress, report)


def resume(run: str | Path | RunResult, *, address: str | None = None, progress: Progress = "log",
           report: bool = True, spec=None, force: bool = False) -> RunResult:
    """Continue an interrupted run where it stopped (a finished trial is never trained again).
    `spec` (a checked `SearchSpec`): refused when it differs from the run's, unless `force` (decided
    stages stay as they are)."""
    from peft_search.search.controller import Controller
    from peft_search.search.preflight import check_local_resources

    _check_progress(progress)
    controller = Controller.open(_run_dir(run), new_spec=spec, force=force)
    if controller.state["status"] != "finished":
        if address is None:
            check_local_resources(controller.spec)
        return _drive(controller, address, progress, report)
    return status(controller.run_dir)


def report(run: str | Path | RunResult, out: str | Path | None = None) -> Path | str:
    """Write the run's HTML report; returns where its index.html is (a URI for an object store)."""
    from peft_search.reporting import write_report

    return _location(write_report(_run_dir(run), out))


def evaluate(run: str | Path | RunResult, *, final=None, address: str | None = None, progress: Progress = "log") -> Path | str:
    """Run (or finish) the final evaluation: the discovered design against the presets, learning
    rates tuned alike. `final`: a final section (mapping) when the spec has none or another is
    wanted. Returns the path of final.parquet."""
    from peft_search.search.controller import open_tracker
    from peft_search.search.final.evaluate import evaluate_run
    from peft_search.search.spec import load_run_spec
    from peft_search.search.storage.run_dir import require_run

    run_dir = require_run(_run_dir(run))
    spec = load_run_spec(run_dir / "spec.yaml")
    if final is not None and not hasattr(final, "contenders"):
        final = spec.with_final(final).final
    with _progress(progress) as say:
        # The run's trackers log its seeded runs and contenders, as when the search ran it.
        return _location(evaluate_run(run_dir, final=final, address=address, say=say,
                                      tracker=open_tracker(spec, run_dir.name)))


def export(run: str | Path | RunResult, out: str | Path) -> Path | str:
    """Export the discovered design, its trained weights per task and a model card; `load_peft`
    loads them onto a backbone. Returns the export directory."""
    from peft_search.search.final.export import export_run

    return _location(export_run(_run_dir(run), out))


def load_peft(model, path: str | Path):
    """Inject an exported design's modules into `model` and load their trained weights (see export)."""
    from peft_search.peft import load_peft as load

    return load(model, path)


def load_backbone(name: str, objective: str = "classification", **kwargs):
    """A backbone by Hub id, local directory or alias (`minilm`): with a task head (`num_labels=`) for
    the classification objective, or with its own language-modelling head for `text_to_text` (then
    `model.generate` answers with the loaded method)."""
    from peft_search.peft import load_backbone as load
    from peft_search.train.objectives import get_objective

    return load(name, language_model=get_objective(objective).language_model, **kwargs)


# ---- driving a run ------------------------------------------------------------------------------------


def _check_progress(kind: Progress) -> None:
    if kind not in ("log", "tqdm", "print"):
        from peft_search.errors import InputError

        raise InputError("progress", f"give log, tqdm or print; got {kind!r}")


def _location(path) -> Path | str:
    """A local path as a Path; an object-store location (s3://, gs://) as its URI."""
    text = str(path)
    return text if "://" in text else Path(text)


def _run_dir(run: str | Path | RunResult) -> str:
    return run.run_dir if isinstance(run, RunResult) else str(run)


def _drive(controller, address: str | None, progress: Progress, write_report: bool) -> RunResult:
    from peft_search.search import interrupt

    with _progress(progress) as say:
        controller.say = say
        try:
            controller.run(address=address)  # SIGINT / SIGTERM: RunInterrupted, the run left `interrupted`
        except (interrupt.RunInterrupted, KeyboardInterrupt) as stop:
            # What the caller needs to go on: the run, and whether only its final evaluation was cut short.
            stop.run_dir, stop.search_finished = str(controller.run_dir), controller.state["status"] == "finished"
            if progress != "print":
                logger.warning("interrupted; nothing unfinished was decided. Continue with peft_search.%s(%r)",
                               "evaluate" if stop.search_finished else "resume", stop.run_dir)
            raise
    if write_report:
        report(controller.run_dir)
    return status(controller.run_dir)


class _LogLines(io.TextIOBase):
    """A text stream whose lines go to the `peft_search` logger (what the search prints)."""

    def __init__(self):
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                logger.info(line)
        return len(text)


@contextlib.contextmanager
def _progress(kind: Progress):
    """The search's lines to the logger (`log`), stdout (`print`), or tqdm bars per stage (`tqdm`; other
    lines to the logger). Yields the `say` the controller uses."""
    _check_progress(kind)
    if kind == "print":
        yield lambda line: print(line, flush=True)
        return
    from peft_search.search.progress import listening

    bars: dict[str, object] = {}

    def to_bar(prefix: str, done: int, line: str) -> None:
        from tqdm.auto import tqdm

        bar = bars.get(prefix)
        if bar is None:
            bar = bars[prefix] = tqdm(desc=prefix, unit="trial")
        bar.update(done - bar.n)
        bar.set_postfix_str(line.split(": ", 1)[-1], refresh=True)

    stream = _LogLines()
    with contextlib.ExitStack() as stack:
        if kind == "tqdm":
            stack.enter_context(listening(to_bar))
        stack.enter_context(contextlib.redirect_stdout(stream))
        try:
            yield logger.info
        finally:
            for bar in bars.values():
                bar.close()


__all__ = ["ChoiceResult", "Design", "RunResult", "StageResult", "evaluate", "export", "load_backbone", "load_peft",
           "report", "resume", "run", "status"]
