"""Re-run seeded runs of the study's final evaluation with today's training code and compare them with
what was recorded (issue 23: does anything the study concluded depend on how PEFT was trained?).

    .venv/bin/python docs/study/recheck_training.py --data-dir ../shared/data/glue [--tasks stsb] [--contenders ...]

Each run is the recorded row's own config (`config_json` in docs/study/staged/final.parquet: the
contender, its tuned learning rate, seed, data sizes), trained by `run_trial` exactly as a stage or
final run trains, and kept as docs/study/recheck-issue23/<trial_id>.json the moment it ends (running
again skips what is there); one thread, as the study's runs (run two at once on a 2-core machine,
each with its own --contenders). The table: per contender and task, the recorded and the re-run scores
over the seeds, how many runs learned (a score above LEARNED: STS-B runs either reach 0.66 or more,
or stay below 0.2, section 4), and the re-run minus the recorded score, paired by seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pyarrow.parquet as pq

from peft_search.train import TrialConfig, run_trial

STUDY = Path(__file__).resolve().parent
FINAL = STUDY / "staged" / "final.parquet"
OUT = STUDY / "recheck-issue23"
LEARNED = 0.3


def recorded_rows(tasks, contenders) -> list[dict]:
    rows = [r for r in pq.read_table(FINAL).to_pylist() if r["phase"] == "final" and r["status"] == "finished"]
    return [r for r in rows if r["task"] in tasks and (not contenders or r["contender"] in contenders)]


def rerun(row: dict, data_dir: str) -> dict:
    path = OUT / f"{row['trial_id']}.json"
    if path.is_file():
        return json.loads(path.read_text())
    config = TrialConfig.from_dict({**json.loads(row["config_json"]), "data_dir": data_dir, "cache_dir": None})
    result = run_trial(config)
    record = {"trial_id": row["trial_id"], "contender": row["contender"], "task": row["task"], "seed": row["seed"],
              "recorded_score": row["score"], "status": result.status, "score": result.score,
              "collapsed": result.collapsed, "wall_time_s": result.wall_time_s}
    OUT.mkdir(exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def table(records: list[dict]) -> str:
    lines = ["| contender | task | recorded: mean (learned) | re-run: mean (learned) | re-run - recorded, per seed |",
             "|---|---|---:|---:|---|"]
    for key in dict.fromkeys((r["contender"], r["task"]) for r in records):
        mine = sorted((r for r in records if (r["contender"], r["task"]) == key), key=lambda r: r["seed"])
        old = [r["recorded_score"] for r in mine]
        new = [r["score"] for r in mine]
        learned = lambda scores: sum(s > LEARNED for s in scores)  # noqa: E731
        lines.append(f"| {key[0]} | {key[1]} | {statistics.mean(old):.3f} ({learned(old)} of {len(old)}) | "
                     f"{statistics.mean(new):.3f} ({learned(new)} of {len(new)}) | "
                     + ", ".join(f"{b - a:+.3f}" for a, b in zip(old, new)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--tasks", nargs="+", default=["stsb"])
    parser.add_argument("--contenders", nargs="*", default=[])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # as the study's runs (1-CPU Ray trials): the same arithmetic, where the code is the same
    records = []
    for row in recorded_rows(args.tasks, args.contenders):
        record = rerun(row, args.data_dir)
        records.append(record)
        print(f"{record['contender']:<10} {record['task']} seed {record['seed']}: recorded {record['recorded_score']:.4f}, "
              f"re-run {record['score']:.4f}", flush=True)
    print()
    print(table(records))


if __name__ == "__main__":
    main()
