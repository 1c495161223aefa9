"""Command-line interface: `peft-search space | train | run | resume | status | report | evaluate |
export | fidelity | simulate | schema | submit`.

Parses arguments, calls the layers below, prints. Bad input (an `InputError` anywhere below) is
reported as `peft-search: error: FIELD: what is allowed` with exit status 2. Longer than 400 lines
on purpose: every command's arguments and help live in this one file, so that `--help` and the code
read the same and no logic hides here (each handler is a few lines over the layers below).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from peft_search.errors import InputError

DEFAULT_BUDGET = 0.005


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction strictly between 0 and 1 (e.g. 0.005), got {text}")
    return value


def _space_from_args(args):
    from peft_search.space import PAPER_STRATEGIES, DesignSpace
    from peft_search.space.components import parse_strategy_set

    names = parse_strategy_set(args.strategies, "--strategies") if args.strategies else PAPER_STRATEGIES
    space = DesignSpace(num_groups=args.num_groups, strategy_names=names)
    for fix in args.fix or ():
        component, sep, choice = fix.partition("=")
        if not sep:
            raise InputError("--fix", f"write COMPONENT=CHOICE, e.g. grouping=spindle; got {fix!r}")
        component = component.strip()
        if component not in space.components():
            raise InputError("--fix", f"unknown component {component!r}; allowed: {', '.join(space.components())}")
        space = space.clamp(component, space.parse_choice(component, choice.strip()))
    return space


def _add_space_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-groups", type=int, default=4, help="number of layer groups G (default 4)")
    parser.add_argument("--strategies", metavar="A+B+...",
                        help="the strategies free groups draw from, e.g. lora+dora+ia3 (default: the paper's four, "
                        "adapter+prefix+bitfit+lora; the job spec's `strategies`)")
    parser.add_argument(
        "--fix",
        action="append",
        metavar="COMPONENT=CHOICE",
        help="fix a component, e.g. grouping=spindle, allocation=uniform, tunable_groups=G1+G2, "
        "strategy.G1=adapter+lora (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def cmd_space_show(args) -> int:
    space = _space_from_args(args)
    if args.json:
        candidates = {c: [space.format_choice(c, x) for x in space.candidates(c)] for c in space.free_components()}
        print(json.dumps({"space": space.to_dict(), "size": space.size(), "candidates": candidates}, indent=2))
    else:
        print(space.describe())
    return 0


def _counting_backbone(model: str):
    """A weightless (meta-device) model, enough to plan, inject and count parameters: with the
    checkpoint's own classification head when it has one (said on stderr), else a 2-label head."""
    from peft_search.peft import load_backbone
    from peft_search.peft.backbones import head_name

    backbone = load_backbone(model, num_labels=None, meta=True)  # the checkpoint's own head size
    if backbone.checkpoint_head["head"] == "kept":
        print(f"the checkpoint's {head_name(backbone.config.num_labels)} is counted as the head here; a task with "
              "another number of labels trains a new head in its place", file=sys.stderr)
    return backbone


def cmd_space_sample(args) -> int:
    import copy

    from peft_search.peft import describe_shares, inject, plan_budget, profile_backbone, strategy_params

    space = _space_from_args(args)
    model = _counting_backbone(args.model)
    profile = profile_backbone(model)
    result = space.sample(
        args.samples, args.seed, profile.num_blocks, lambda d: plan_budget(profile, d, args.budget).feasible
    )
    reports = [inject(copy.deepcopy(model), design, args.budget) for design in result.designs]
    if args.json:
        print(json.dumps([report.to_dict() for report in reports], indent=2))
        return 0
    print(
        f"{args.model}: {profile.model_type}, {profile.num_blocks} blocks, {profile.backbone_params:,} backbone "
        f"parameters; budget {args.budget:g} = {reports[0].target_params:,} parameters"
    )
    print(f"{len(reports)} designs (seed {args.seed}), {result.redraws} infeasible draws redrawn\n")
    print(f"{'design_id':<12}  {'realised':>9}  {'error':>7}  design  [each strategy's share of its parameters]")
    for report in reports:
        print(
            f"{report.design.design_id:<12}  {report.realised_params:>9,}  {report.relative_error:>+7.2%}  "
            f"{report.design.summary()}  [{describe_shares(strategy_params(profile, report.plan))}]"
        )
    return 0


def read_design_file(name: str):
    """The Design in a `--design` JSON file; InputError naming the file for a missing or bad one."""
    from pathlib import Path

    from peft_search.space import Design

    path = Path(name)
    if not path.is_file():
        raise InputError("--design", f"no such file: {path}")
    try:
        return Design.from_json(path.read_text())
    except InputError as error:
        raise error.in_file(path) from None


def cmd_space_plan(args) -> int:
    from peft_search.peft import describe_shares, inject, profile_backbone, strategy_params
    from peft_search.peft.strategies import STRATEGY_REGISTRY

    design = read_design_file(args.design)
    model = _counting_backbone(args.model)
    profile = profile_backbone(model)  # before injection: the backbone's own blocks
    report = inject(model, design, args.budget)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"design {design.design_id}: {design.summary()}")
    print(
        f"target {report.target_params:,} parameters ({args.budget:g} of {report.backbone_params:,}); "
        f"realised {report.realised_params:,} ({report.relative_error:+.2%}); head {report.head_params:,}"
    )
    params = strategy_params(profile, report.plan)
    print(f"each strategy's share: {describe_shares(params)} ({', '.join(f'{n} {c:,}' for n, c in params.items())})")
    # One column per strategy the design uses: its size in each block (rank, bottleneck, prefix positions;
    # a fixed-size strategy's parameters).
    used = [name for name in STRATEGY_REGISTRY if name in params]
    fields = [STRATEGY_REGISTRY[name].size_field for name in used]
    print(f"\n{'block':<11} {'group':>5} " + " ".join(f"{field:>{max(7, len(field))}}" for field in fields)
          + f" {'params':>8}  strategies")
    for block in report.plan.blocks:
        sizes = " ".join(f"{getattr(block, field):>{max(7, len(field))}}" for field in fields)
        print(f"{block.name:<11} {'G' + str(block.group):>5} {sizes} {block.params:>8,}  {'+'.join(block.strategies)}")
    if not report.plan.feasible:
        print(f"\nwarning: this design misses the budget by {report.relative_error:+.2%}; the sampler would redraw it")
    return 0


def cmd_train(args) -> int:
    """Train one design or preset on one task and print its result (progress goes to stderr)."""
    from peft_search.train import TrialConfig, run_trial

    design = read_design_file(args.design) if args.design is not None else None
    config = TrialConfig(
        model=args.model,
        task=args.task,
        data_dir=args.data_dir,
        design=design,
        preset=args.preset,
        budget_fraction=args.budget,
        seed=args.seed,
        epochs=None if args.max_steps is not None else args.epochs,
        max_steps=args.max_steps,
        max_train_examples=args.max_train_examples,
        max_eval_examples=args.max_eval_examples,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        workers=args.workers,
        cache_dir=args.cache_dir,
        gradient_checkpointing=args.gradient_checkpointing,
        precision=args.precision,
        backbone_dtype=args.backbone_dtype,
        objective=args.objective,
    )
    progress = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    result = run_trial(config, save_dir=args.save, log=progress)
    if args.json:
        print(json.dumps({"config": config.to_dict(), "result": result.to_dict()}, indent=2))
    else:
        print(f"{config.task} | {config.preset or config.design_id} | seed {config.seed} | lr {config.base_learning_rate:g}: {result.status}")
        if result.status == "finished":
            extra = "  ".join(f"{name} {value:.4f}" for name, value in result.metrics.items())
            print(f"score {result.score:.4f}  ({extra})")
        else:
            print(f"error: {result.error}")
        head = "its own frozen language-modelling head" if result.head == "lm" else f"{result.head_params or 0:,} head"
        print(
            f"trainable {result.realised_params:,} backbone + {head} (budget {result.target_params:,}); "
            f"{result.train_samples_per_s} train samples/s; {result.wall_time_s:.1f}s; peak memory {result.peak_memory_mb} MB"
            if result.realised_params is not None
            else f"{result.wall_time_s:.1f}s"
        )
        if args.save and result.status == "finished":
            print(f"saved to {args.save}")
    return 0 if result.status == "finished" else 1


def _add_train_parser(commands) -> None:
    from peft_search.train.presets import PRESETS

    train = commands.add_parser(
        "train", help="fine-tune one design or preset on one task (one trial)",
        description="Train one design or preset on one task and evaluate it on the validation split. "
        "Exit status 0 when the trial finished, 1 when it diverged, ran out of memory or failed, 2 for bad input.",
    )
    train.add_argument("--model", required=True, help="Hub id, local directory, or the alias minilm")
    train.add_argument("--task", required=True, help="cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli, tweets, "
                       "the SuperGLUE tasks boolq, cb, copa, wic, wsc, multirc, record (text_to_text), "
                       "or file:text=FIELD[,pair=FIELD][,label=FIELD][,regression] (text_to_text also "
                       "file:prompt=FIELD,target=FIELD or file:messages=FIELD)")
    train.add_argument("--data-dir", help="GLUE TSV directory (the GLUE root or the task's own), SuperGLUE's JSONL "
                       "directory (its root or the task's own), a directory with train/validation CSV, JSONL or Parquet "
                       "files, one such file, or hub:DATASET; default: the Hub")
    train.add_argument("--objective", default="classification", choices=("classification", "text_to_text"),
                       help="classification: a task head on the backbone (default); text_to_text: the task as text, "
                       "trained through the backbone's own language-modelling head (t5, bart, decoder-only)")
    what = train.add_mutually_exclusive_group(required=True)
    what.add_argument("--design", help="design JSON file")
    what.add_argument("--preset", choices=PRESETS, help="a baseline at the same budget")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=1.0, help="passes over the training set (default 1)")
    length.add_argument("--max-steps", type=int, help="optimizer steps instead of epochs")
    train.add_argument("--max-train-examples", type=int, help="seeded, stratified subsample of the training set")
    train.add_argument("--max-eval-examples", type=int, help="fixed subsample of the validation set")
    train.add_argument("--lr", type=float, help="learning rate (default: the preset's own; 5e-3 for a design)")
    train.add_argument("--batch-size", type=int, default=32, help="global batch size (default 32)")
    train.add_argument("--max-length", type=int, default=128, help="tokens per example (default 128)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--precision", default="auto", help="auto (bf16 on a GPU, fp32 on a CPU), fp32, bf16 or fp16 (GPU)")
    train.add_argument("--backbone-dtype", default="float32",
                       help="the frozen backbone's weights: float32, bfloat16 (with --precision bf16) or float16 (fp16)")
    train.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute activations in the backward pass (less memory, about a third more time)")
    train.add_argument("--workers", type=int, default=1, help="Ray Train workers (default 1: train in this process)")
    train.add_argument("--budget", type=_budget, default=DEFAULT_BUDGET, help="fraction of backbone parameters (default 0.005)")
    train.add_argument("--save", help="directory to save the trained PEFT state in")
    train.add_argument("--cache-dir", help="tokenisation cache (default ~/.cache/peft-search/tokens)")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument("--json", action="store_true", help="print the trial's config and result as JSON")
    train.set_defaults(handler=cmd_train)


# ---- search: run, resume, status, schema, submit ------------------------------------------------------


def cmd_run(args) -> int:
    from peft_search import api
    from peft_search.search.preflight import preflight
    from peft_search.search.stage.estimate import estimate_search

    if not args.dry_run:
        return _searched(lambda: api.run(args.job, storage=args.storage, data_dir=args.data_dir, address=args.address,
                                         progress="print", report=False))
    # The run's checks, offline; the dry run lists what needs the network.
    checked = preflight(args.job, storage=args.storage, data_dir=args.data_dir, address=args.address, offline=True)
    spec = checked.spec
    print(spec.initial_space().describe())
    print()
    print(estimate_search(spec).describe())
    if checked.first_plan is not None:
        plan = checked.first_plan
        redraws = sum(plan.redraws.values())
        print(f"stage 0 planned: {plan.num_trials:,} trials, {redraws} infeasible draws redrawn"
              + (f"; no feasible design for {', '.join(plan.infeasible)}" if plan.infeasible else ""))
        if checked.strategy_params:
            from peft_search.peft import describe_shares

            print(f"stage 0's designs: each strategy's share of their trainable parameters: "
                  f"{describe_shares(checked.strategy_params)}")
    if checked.memory is not None:
        hyper = spec.hyperparameters
        print(f"memory: {checked.memory.describe()} (batch {hyper.batch_size // spec.resources.workers} per worker, "
              f"length {hyper.max_length}, backbone in {hyper.backbone_dtype}; an estimate: docs/design.md, "
              "\"Memory per trial\")")
    if checked.full_memory is not None:
        print(f"memory of the final evaluation's full fine-tuning: {checked.full_memory.describe()}")
    for note in checked.head_notes:
        print(note)
    if checked.unchecked:
        print("\nnot checked offline (the run checks these first):\n  " + "\n  ".join(checked.unchecked))
    passed = "every other check of `run` passed" if checked.unchecked else "every check of `run` passed"
    print(f"\n(dry run: {passed}; nothing was created)")
    return 0


def cmd_resume(args) -> int:
    from peft_search import api
    from peft_search.search.preflight import prepare_spec

    new_spec = prepare_spec(args.spec, address=args.address) if args.spec else None
    if api.status(args.run).status == "finished":
        print(f"{args.run} is already finished; nothing to resume")
        return 0
    return _searched(lambda: api.resume(args.run, address=args.address, progress="print", report=False,
                                        spec=new_spec, force=args.force))


def _searched(search) -> int:
    """Run `search()` (api.run or api.resume) and print where everything landed."""
    from peft_search import api
    from peft_search.search.controller import SearchFailed

    def continue_with(stop) -> str:
        # A finished search stays finished; what was cut short then is its final evaluation.
        return f"peft-search {'evaluate' if getattr(stop, 'search_finished', False) else 'resume'} {getattr(stop, 'run_dir', 'RUN')}"

    try:
        with interrupted_exits(continue_with):
            result = search()
    except SearchFailed as error:
        print(f"peft-search: search failed: {error}", file=sys.stderr)
        return 1
    print(f"\nsearch finished: {result.run_dir}")
    if result.discovered is not None:
        design = result.discovered
        print(f"discovered design {design.design_id} (score {result.discovered_score:.4f}): {design.summary()}")
        print(f"design JSON: {design.to_json()}")
    print(f"results: {result.run_dir}/results.parquet")
    if result.final_path is not None:
        print(f"final:   {result.final_path}")
    print(f"report:  {api.report(result)}")
    print(f"status:  peft-search status {result.run_dir}")
    return 0


def cmd_status(args) -> int:
    from peft_search import api
    from peft_search.search.status import run_status

    print(json.dumps(run_status(args.run), indent=2) if args.json else api.status(args.run).text)
    return 0


def cmd_report(args) -> int:
    from peft_search import api

    print(f"report: {api.report(args.run, args.out)}")
    return 0


class Interrupted(SystemExit):
    """A command stopped by SIGINT or SIGTERM: its exit status is the shell's 128 + the signal."""


@contextlib.contextmanager
def interrupted_exits(continue_with):
    """SIGINT / SIGTERM end the block's work undecided (search/interrupt.py) and the command with
    the shell's status and how to continue (`continue_with`: a command, or a function of the
    interruption giving it)."""
    from peft_search.search import interrupt

    with interrupt.interruptible():
        try:
            yield
        except (interrupt.RunInterrupted, KeyboardInterrupt) as stop:
            name = stop.signal_name if isinstance(stop, interrupt.RunInterrupted) else "a second signal"
            print(f"\npeft-search: interrupted by {name}; nothing unfinished was decided, and every finished trial "
                  f"is kept.\ncontinue with: {continue_with(stop) if callable(continue_with) else continue_with}",
                  file=sys.stderr, flush=True)
            raise Interrupted(stop.exit_code if isinstance(stop, interrupt.RunInterrupted) else 130) from None


def cmd_evaluate(args) -> int:
    from peft_search import api
    from peft_search.search.storage.run_dir import require_run
    from peft_search.search.spec import load_final_file, load_run_spec

    final = None
    if args.final:
        final = load_final_file(args.final, load_run_spec(require_run(args.run) / "spec.yaml"))
    with interrupted_exits(f"peft-search evaluate {args.run}"):
        path = api.evaluate(args.run, final=final, address=args.address, progress="print")
    print(f"final:  {path}")
    print(f"report: {api.report(args.run)}")
    return 0


def cmd_export(args) -> int:
    from peft_search import api

    out = api.export(args.run, args.out)
    print(f"exported to {out} (model card: {out}/README.md)")
    return 0


def cmd_fidelity(args) -> int:
    from peft_search.search.fidelity import run_fidelity
    from peft_search.search.preflight import prepare_spec

    lengths = None
    if args.steps:
        try:
            lengths = [int(x) for x in args.steps.split(",") if x.strip()]
        except ValueError:
            raise InputError("--steps", f"comma-separated whole numbers of steps, e.g. 25,50,100; got {args.steps!r}") from None
    spec = prepare_spec(args.job, storage=args.storage, data_dir=args.data_dir, address=args.address)
    with interrupted_exits(f"peft-search fidelity {args.job} --resume (with the same options)"):
        run_fidelity(spec, args.job, lengths=lengths, designs=args.designs, resume=args.resume, address=args.address)
    return 0


def cmd_simulate(args) -> int:
    from peft_search.search.simulate import simulate_job

    result, step_source = simulate_job(args.job, args.gpus, step_time_s=args.step_time, step_time_from=args.step_time_from,
                                       start_s=args.trial_start, scores=args.scores, seed=args.seed, backbone=args.backbone,
                                       data_dir=args.data_dir, start_from=args.start_from)
    if args.json:
        print(json.dumps({**result.to_dict(), "step_time_source": step_source}, indent=2))
    else:
        print(result.describe())
        print(f"step time: {step_source}")
    return 0


def cmd_schema(args) -> int:
    from peft_search.search.spec import schema_text

    print(schema_text())
    return 0


def cmd_submit(args) -> int:
    from peft_search.search.cluster.submit import submit_job

    job = submit_job(args.job, args.address, working_dir=args.working_dir, storage=args.storage)
    print(f"submitted job {job.job_id}")
    print(f"dashboard: {job.dashboard_url}")
    print(f"follow its logs: {job.follow_command}")
    return 0


def _add_search_commands(commands) -> None:
    run = commands.add_parser("run", help="run a search from a job spec (YAML)")
    run.add_argument("job", help="job spec, e.g. jobs/quickstart.yaml")
    run.add_argument("--storage", help="where runs are kept: a directory, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX "
                     "(overrides the spec's storage; credentials from the environment, e.g. AWS_*)")
    run.add_argument("--address", help="Ray cluster address (default: start Ray in this process)")
    run.add_argument("--data-dir", help="local data directory for the spec's tasks (GLUE TSV layout or files)")
    run.add_argument("--dry-run", action="store_true", help="make every check of run offline, print the plan, the "
                     "estimated compute and what could not be checked offline; create nothing")
    run.set_defaults(handler=cmd_run)

    resume = commands.add_parser("resume", help="continue an interrupted run")
    resume.add_argument("run", help="run directory (or its s3:// / gs:// URI)")
    resume.add_argument("--spec", help="a job spec to compare with the run's; differences are refused unless --force")
    resume.add_argument("--force", action="store_true", help="run the changed spec (decided stages stay as they are)")
    resume.add_argument("--address", help="Ray cluster address (default: start Ray in this process)")
    resume.set_defaults(handler=cmd_resume)

    status = commands.add_parser("status", help="stages, decisions with their confidence, trials done / failed")
    status.add_argument("run", help="run directory (or its s3:// / gs:// URI)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)

    report = commands.add_parser("report", help="write the run's HTML report (EDF plots, decisions, trials, compute)")
    report.add_argument("run", help="run directory (finished or still running)")
    report.add_argument("--out", help="directory for index.html and its figures (default: RUN/report)")
    report.set_defaults(handler=cmd_report)

    evaluate = commands.add_parser(
        "evaluate", help="final evaluation: the discovered design against baseline presets, learning rates tuned alike"
    )
    evaluate.add_argument("run", help="run directory with a discovered design")
    evaluate.add_argument("--final", help="YAML of the final section (contenders, seeds, fidelity, tuning) when the "
                          "run's spec has none, or to replace it")
    evaluate.add_argument("--address", help="Ray cluster address (default: start Ray in this process)")
    evaluate.set_defaults(handler=cmd_evaluate)

    export = commands.add_parser("export", help="export the discovered design, its trained weights per task and a model card")
    export.add_argument("run", help="run directory with a discovered design")
    export.add_argument("--out", required=True, help="output directory (outside the run)")
    export.set_defaults(handler=cmd_export)

    fidelity = commands.add_parser(
        "fidelity", help="is the training length long enough? a pilot of designs at 2-3 lengths, rank correlation",
        description="Train the same pilot designs at two or three training lengths; print each length's collapse rate "
        "and the Spearman rank correlation of its design scores with the longest length's, and recommend the cheapest "
        "length with correlation >= 0.8.",
    )
    fidelity.add_argument("job", help="job spec (its backbone, tasks, data, budget and hyperparameters are used)")
    fidelity.add_argument("--steps", help="training lengths in optimiser steps, e.g. 25,50,100 (default: half, once and "
                          "twice the spec's fidelity.max_steps)")
    fidelity.add_argument("--designs", type=int, default=8, help="pilot designs drawn from S0 (default 8)")
    fidelity.add_argument("--storage", help="directory or s3:// / gs:// prefix for the pilot (default: the spec's storage)")
    fidelity.add_argument("--data-dir", help="local data directory for the spec's tasks")
    fidelity.add_argument("--resume", help="a pilot directory to finish (trains only what has no record)")
    fidelity.add_argument("--address", help="Ray cluster address (default: start Ray in this process)")
    fidelity.set_defaults(handler=cmd_fidelity)

    simulate = commands.add_parser(
        "simulate", help="simulate the job's search on a cluster of N GPUs: wall-clock, GPU use, GPU-hours, decisions")
    simulate.add_argument("job", help="job spec, e.g. jobs/glue-t5-base.yaml")
    simulate.add_argument("--gpus", type=float, required=True, help="GPUs in the cluster (a CPU-only job: trials at once)")
    simulate.add_argument("--step-time", type=float, help="seconds per optimiser step on one trial's GPUs (default: "
                          "a measured CPU figure, or --step-time-from)")
    simulate.add_argument("--step-time-from", metavar="RUN", help="take the step time from a run's finished trials")
    start = simulate.add_mutually_exclusive_group()
    start.add_argument("--trial-start", type=float, default=0.45, help="seconds the driver takes to start one trial "
                       "(default 0.45, measured on a 2-core head)")
    start.add_argument("--start-from", metavar="RUN", help="take the start cost from a run: what its stages timed per "
                       "trial start, on new and on reused actors (your driver and cluster, as they ran)")
    simulate.add_argument("--scores", default="decisive", help="the recorded stage whose scores are replayed: decisive, "
                          "tied, or a Parquet file of trial records (default decisive)")
    simulate.add_argument("--seed", type=int, default=0, help="seed of the score resampling (default 0)")
    simulate.add_argument("--backbone", metavar="DIR", help="a local directory whose config.json stands in for the "
                          "job's backbone (planning needs its shape only)")
    simulate.add_argument("--data-dir", help="local data directory for the spec's tasks")
    simulate.add_argument("--json", action="store_true", help="print one JSON document")
    simulate.set_defaults(handler=cmd_simulate)

    schema = commands.add_parser("schema", help="print the job spec's schema (every key, its type and default)")
    schema.set_defaults(handler=cmd_schema)

    submit = commands.add_parser("submit", help="submit a job spec to a Ray cluster as a Ray Job")
    submit.add_argument("job", help="job spec inside the working directory")
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    submit.add_argument("--working-dir", default=".", help="directory shipped to the cluster (default: .)")
    submit.add_argument("--storage", help="run storage every node reaches: an absolute path on a shared volume, "
                        "s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (the nodes' own credentials)")
    submit.set_defaults(handler=cmd_submit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-search", description="Discover PEFT methods by searching design spaces, on Ray."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_search_commands(commands)

    space = commands.add_parser("space", help="show a design space or sample designs from it")
    space_commands = space.add_subparsers(dest="space_command", required=True, metavar="SUBCOMMAND")
    show = space_commands.add_parser("show", help="print a design space, its free components and its size")
    _add_space_arguments(show)
    show.set_defaults(handler=cmd_space_show)
    sample = space_commands.add_parser("sample", help="sample designs and realise them on a backbone")
    sample.add_argument("--model", required=True, help="Hub id, local directory, or the alias minilm")
    sample.add_argument("--samples", type=int, default=10, help="number of designs (default 10)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--budget", type=_budget, default=DEFAULT_BUDGET, help="fraction of backbone parameters (default 0.005)")
    _add_space_arguments(sample)
    sample.set_defaults(handler=cmd_space_sample)
    plan = space_commands.add_parser("plan", help="show how one design (a JSON file) is realised on a backbone")
    plan.add_argument("--model", required=True, help="Hub id, local directory, or the alias minilm")
    plan.add_argument("--design", required=True, help="design JSON file")
    plan.add_argument("--budget", type=_budget, default=DEFAULT_BUDGET, help="fraction of backbone parameters (default 0.005)")
    plan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plan.set_defaults(handler=cmd_space_plan)

    _add_train_parser(commands)

    stand_ins = commands.add_parser(
        "stand-ins", help="write offline stand-ins: tiny random-init language models, SuperGLUE-layout files, a "
        "prompt/target file",
        description="For a machine without the Hugging Face Hub: tiny random-init language models (t5, bart, llama, "
        "qwen2, gpt2, with MiniLM's tokenizer), SuperGLUE task files in the official JSONL layout with synthetic rows, "
        "and a prompt/target JSONL file, to try the text-to-text jobs end to end. They check mechanics only.",
    )
    stand_ins.add_argument("directory", help="where to write them (models/, superglue/, prompt-target/)")
    stand_ins.set_defaults(handler=cmd_stand_ins)

    return parser


def cmd_stand_ins(args) -> int:
    from peft_search.stand_ins import write_stand_ins

    write_stand_ins(Path(args.directory))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except Interrupted as stop:
        return stop.code
    except InputError as error:
        print(f"peft-search: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader left (`peft-search status RUN | head`): no traceback, and none at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
