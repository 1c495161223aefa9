"""Command-line interface: `peft-search space | train | run | resume | status | report | submit`.

Parses arguments, calls the layers below, prints. Bad input (an `InputError` anywhere below) is
reported as `peft-search: error: FIELD: what is allowed` with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

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
    from peft_search.space import DesignSpace

    space = DesignSpace(num_groups=args.num_groups)
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


def cmd_space_sample(args) -> int:
    import copy

    from peft_search.peft import inject, load_backbone, plan_budget, profile_backbone

    space = _space_from_args(args)
    # A weightless (meta-device) model is enough to plan, inject and count parameters.
    model = load_backbone(args.model, meta=True)
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
    print(f"{'design_id':<12}  {'realised':>9}  {'error':>7}  design")
    for report in reports:
        print(
            f"{report.design.design_id:<12}  {report.realised_params:>9,}  {report.relative_error:>+7.2%}  "
            f"{report.design.summary()}"
        )
    return 0


def cmd_space_plan(args) -> int:
    from pathlib import Path

    from peft_search.peft import inject, load_backbone
    from peft_search.space import Design

    path = Path(args.design)
    if not path.is_file():
        raise InputError("--design", f"no such file: {path}")
    try:
        design = Design.from_json(path.read_text())
    except InputError as error:
        raise error.in_file(path) from None
    report = inject(load_backbone(args.model, meta=True), design, args.budget)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"design {design.design_id}: {design.summary()}")
    print(
        f"target {report.target_params:,} parameters ({args.budget:g} of {report.backbone_params:,}); "
        f"realised {report.realised_params:,} ({report.relative_error:+.2%}); head {report.head_params:,}"
    )
    print(f"\n{'block':<11} {'group':>5} {'adapter':>7} {'prefix':>6} {'lora':>4} {'bitfit':>6} {'params':>8}  strategies")
    for block in report.plan.blocks:
        print(
            f"{block.name:<11} {'G' + str(block.group):>5} {block.adapter_size:>7} {block.prefix_length:>6} "
            f"{block.lora_rank:>4} {block.bitfit_params:>6} {block.params:>8,}  {'+'.join(block.strategies)}"
        )
    if not report.plan.feasible:
        print(f"\nwarning: this design misses the budget by {report.relative_error:+.2%}; the sampler would redraw it")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-search", description="Discover PEFT methods by searching design spaces, on Ray."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except InputError as error:
        print(f"peft-search: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
