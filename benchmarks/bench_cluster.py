"""A search on a GPU cluster, simulated: today's dispatch against every row released at once (the
paper's fixed-N protocol) and the barrier-free dispatch, for a job on 8, 64 and 256 GPUs, with
decisive and tied score streams (peft_search/search/simulate.py: the project's own planner,
dispatch and race; trial lengths from the Hub's train sizes x a step time; scores replayed from the
recorded reference stages).

    python benchmarks/bench_cluster.py [--job jobs/glue-t5-base.yaml] [--backbone benchmarks/data/backbones/t5-base]
        [--gpus 8,64,256] [--seeds 5] [--step-time 0.1] [--settings today,fixed,default] [--json OUT.json]

Settings (each a change to the job's `racing`):
- `today`: the defaults before issue 31: min_blocks 3, one round at a time (lookahead 0);
- `fixed`: `racing: null`, every planned row released at once, longest first (the paper's protocol);
- `default`: the job's racing with today's spec defaults filled in;
- `mb8-laN`: min_blocks 8, lookahead N (any N; `mb8-all`: every planned block);
- `kn`, `kn++`: the job's racing with that selection procedure (docs/design.md, "Selection procedure");
- `unpacked`: the job with a Tune trial per row (`rows_per_trial: 1`, the dispatch before packed trials).
Per setting and GPU count it prints the means over seeds (score resamples) of: wall-clock (hours,
and in longest-trial lengths), GPU use, GPU-hours trained and wasted, the agreement with the
reference's best (stages keeping it) and the share of claims (selections, ties) that are right.
The backbone's shape comes from `--backbone` (a config.json: planning needs nothing else; the
Hub's ids cannot be fetched here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft_search.peft import load_backbone, profile_backbone  # noqa: E402
from peft_search.search.simulate import TrialModel, simulate_search  # noqa: E402
from peft_search.search.spec import SearchSpec, load_spec  # noqa: E402

TODAY = {"min_blocks": 3, "lookahead": 0}


def setting_job(name: str, job: dict) -> dict:
    """The job's spec under a setting: `unpacked` sets rows_per_trial, every other one the racing."""
    if name == "unpacked":
        return {**job, "rows_per_trial": 1}
    return {**job, "racing": setting_racing(name, job.get("racing") or {})}


def setting_racing(name: str, racing: dict | None) -> dict | None:
    if name == "fixed":
        return None
    if name == "today":
        return {**(racing or {}), **TODAY}
    if name == "default":
        return racing
    if name in ("kn", "kn++"):
        return {**(racing or {}), "procedure": name}
    if name.startswith("mb"):
        min_blocks, _, lookahead = name[2:].partition("-la")
        ahead = {"lookahead": 10_000 if lookahead == "all" else lookahead if lookahead == "auto" else int(lookahead)}
        return {**(racing or {}), "min_blocks": int(min_blocks), **ahead}
    raise SystemExit(f"unknown setting {name!r}")


def summarise(runs) -> dict:
    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else None

    raced = [s for r in runs for s in r.stages if s.best is not None]
    claims = [s.right for s in raced if s.right is not None]
    return {
        "wall_h": mean(r.wall_s / 3600 for r in runs),
        "wall_in_longest_trials": mean(r.wall_s / r.longest_trial_s for r in runs),
        "gpu_use": mean(r.gpu_use for r in runs),
        "gpu_h": mean(r.total("busy_gpu_s") / 3600 for r in runs),
        "wasted_share": mean(r.total("wasted_gpu_s") / r.total("busy_gpu_s") for r in runs),
        "trials": mean(r.total("trials") for r in runs),
        "tune_trials": mean(r.total("tune_trials") for r in runs),
        "work_bound_h": mean(r.total("work_bound_s") / 3600 for r in runs),
        "critical_path_h": mean(r.total("critical_path_s") / 3600 for r in runs),
        "tail_idle_share": mean(r.total("tail_idle_gpu_s") / r.total("gpu_s") for r in runs),
        "agreement": mean(s.kept == s.best for s in raced),
        "claims": len(claims) / len(raced) if raced else None,
        "claims_right": mean(claims) if claims else None,
        "selected": mean(s.outcome == "selected" for s in raced),
        "ties": mean(s.outcome == "tie" for s in raced),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=str(ROOT / "jobs" / "glue-t5-base.yaml"))
    parser.add_argument("--backbone", default=str(ROOT / "benchmarks" / "data" / "backbones" / "t5-base"))
    parser.add_argument("--gpus", default="8,64,256")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--step-time", type=float, default=0.1)
    parser.add_argument("--streams", default="decisive,tied")
    parser.add_argument("--settings", default="today,fixed,default")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    spec = load_spec(args.job)
    base = {**spec.to_dict(), "backbone": args.backbone}
    profile = profile_backbone(load_backbone(args.backbone, meta=True))
    model = TrialModel(args.step_time)
    table = []
    for stream in args.streams.split(","):
        for setting in args.settings.split(","):
            job = SearchSpec.from_dict(setting_job(setting, base))
            for gpus in [float(g) for g in args.gpus.split(",")]:
                started = time.monotonic()
                seeds = 1 if setting == "fixed" and stream != args.streams.split(",")[0] else args.seeds
                runs = [simulate_search(job, profile, gpus, model, stream, seed) for seed in range(seeds)]
                row = {"stream": stream, "setting": setting, "gpus": gpus, "seeds": seeds, **summarise(runs)}
                table.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
                print(f"  ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"job": args.job, "step_time_s": args.step_time, "rows": table}, indent=1))


if __name__ == "__main__":
    main()
