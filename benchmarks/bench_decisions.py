"""Does a stage decide right, and for how much? Replay a reference stage under cheaper protocols.

    python benchmarks/bench_decisions.py record [--job JOB] [--out PARQUET] [--data-dir ../shared/data/glue] [--storage DIR]
    python benchmarks/bench_decisions.py replay benchmarks/data/decisions-reference.parquet --json OUT.json

`record` runs the reference stage once through the service (`peft-search run
jobs/decisions-reference.yaml`: layer grouping, all five patterns, SST-2, MiniLM, 16 paired blocks,
every block trained) and keeps its trial records as benchmarks/data/decisions-reference.parquet.

`replay` trains nothing. From the reference's per-block design scores it draws `--resamples`
cheaper stages and decides each with:
- `independent_fixed`: today's old protocol: N designs per choice, each choice's N blocks drawn on
  its own (so its designs share nothing with the other choices'), Behrens-Fisher P(best);
- `paired_fixed`: N blocks drawn once and shared by every choice, blocked P(best);
- `paired_racing`: the blocks in a random order, raced exactly as a stage races (`judge_round`,
  `stop_reason`: min_blocks, then one block per round, dropping choices below 1 - confidence,
  stopping at confidence or when the reference's blocks run out).
Blocks are drawn without replacement (a block drawn twice would fake agreement). Per method:
`agreement` (share of resamples whose winner is the reference's full-data winner), `trials_fraction`
(mean trials used / the reference's trials), `calibration` (among resamples reporting P(best) >= 0.9,
the share that agree; null when none do), `regret` (mean over resamples of the reference mean of
the reference winner minus that of the chosen choice), and `confident` (share reporting >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from peft_search.search.spec import Racing
from peft_search.search.stage.confidence import compare_blocks, compare_independent
from peft_search.search.stage.racing import judge_round, stop_reason

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "data" / "decisions-reference.parquet"
JOB = ROOT / "jobs" / "decisions-reference.yaml"
KEEP = ["trial_id", "choice", "block", "design_id", "task", "seed", "status", "score", "baseline_score", "collapsed",
        "wall_time_s", "grouping", "allocation", "tunable_groups", "strategies"]
CONFIDENT = 0.9


# ---- record -----------------------------------------------------------------------------------------


def record(job: Path, out: Path, data_dir: str, storage: str) -> None:
    command = [sys.executable, "-m", "peft_search.cli", "run", str(job), "--data-dir", data_dir, "--storage", storage]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    runs = sorted((p for p in Path(storage).iterdir() if (p / "results.parquet").is_file()), key=lambda p: p.stat().st_mtime)
    table = pq.read_table(runs[-1] / "results.parquet").select(KEEP)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    print(f"{table.num_rows} trial records -> {out} ({out.stat().st_size / 1e6:.2f} MB)")


# ---- replay -----------------------------------------------------------------------------------------


def score_table(path: Path) -> tuple[list[str], list[int], np.ndarray, int]:
    """(choices, blocks, scores[choice, block] with NaN for a failed design, reference trials)."""
    rows = pq.read_table(path).to_pylist()
    choices = sorted({r["choice"] for r in rows})
    blocks = sorted({r["block"] for r in rows})
    scores = np.full((len(choices), len(blocks)), np.nan)
    for r in rows:  # one task and one seed: a design's score is its trial's
        if r["status"] == "finished" and r["score"] is not None:
            scores[choices.index(r["choice"]), blocks.index(r["block"])] = r["score"]
    return choices, blocks, scores, len(rows)


def as_blocks(choices, scores: np.ndarray, columns) -> dict[str, dict[int, float | None]]:
    return {c: {int(k): (None if np.isnan(scores[i, k]) else float(scores[i, k])) for k in columns} for i, c in enumerate(choices)}


def winner_of(comparison, choices, scores, columns_by_choice) -> str:
    """The best mean (the paper's rule) among the comparison's contenders, ties to the first listed."""
    means = {c: np.nanmean(scores[i, columns_by_choice[c]]) for i, c in enumerate(choices) if c in comparison.contenders}
    return max(means, key=lambda c: (means[c], -choices.index(c)))


def independent_fixed(choices, scores, n, rng, seed):
    columns = {c: rng.choice(scores.shape[1], n, replace=False) for c in choices}
    lists = {c: [None if np.isnan(v) else float(v) for v in scores[i, columns[c]]] for i, c in enumerate(choices)}
    comparison = compare_independent(lists, seed=seed)
    winner = winner_of(comparison, choices, scores, columns)
    return winner, comparison.p_best.get(winner), n * len(choices)


def paired_fixed(choices, scores, n, rng, seed):
    columns = rng.choice(scores.shape[1], n, replace=False)
    comparison = compare_blocks(as_blocks(choices, scores, columns), seed=seed)
    winner = winner_of(comparison, choices, scores, {c: columns for c in choices})
    return winner, comparison.p_best.get(winner), n * len(choices)


def paired_racing(choices, scores, racing: Racing, rng, seed):
    order = rng.permutation(scores.shape[1])
    table = as_blocks(choices, scores, order)
    survivors, trials, count, round_index = list(choices), 0, min(racing.min_blocks, len(order)), 0
    trials = count * len(choices)
    while True:
        in_round = [int(b) for b in order[:count]]
        survivors, _, winner = judge_round(table, survivors, in_round, racing, round_index, seed)
        if stop_reason(winner, survivors, count, len(order), racing) is not None:
            break
        added = min(count + racing.blocks_per_round, len(order)) - count
        trials += added * len(survivors)
        count += added
        round_index += 1
    ran = [int(k) for k in order[:count]]
    comparison = compare_blocks({c: {k: table[c][k] for k in ran} for c in survivors}, seed=seed + 10_000)
    columns = {c: order[:count] for c in choices}
    winner = winner_of(comparison, choices, scores, columns)
    return winner, comparison.p_best.get(winner), trials


def replay(path: Path, resamples: int, fixed_n: int, racing: Racing, seed: int) -> dict:
    choices, blocks, scores, reference_trials = score_table(path)
    full = compare_blocks(as_blocks(choices, scores, range(len(blocks))), seed=seed)
    reference_means = {c: float(np.nanmean(scores[i])) for i, c in enumerate(choices)}
    reference_winner = max(reference_means, key=lambda c: (reference_means[c], -choices.index(c)))
    methods = {
        "independent_fixed": lambda rng, s: independent_fixed(choices, scores, fixed_n, rng, s),
        "paired_fixed": lambda rng, s: paired_fixed(choices, scores, fixed_n, rng, s),
        "paired_racing": lambda rng, s: paired_racing(choices, scores, racing, rng, s),
    }
    results = {}
    for name, method in methods.items():
        rng = np.random.RandomState(seed)
        outcomes = [method(rng, seed + 1 + r) for r in range(resamples)]
        agree = [w == reference_winner for w, _, _ in outcomes]
        confident = [a for (w, p, _), a in zip(outcomes, agree) if p is not None and p >= CONFIDENT]
        results[name] = {
            "agreement": float(np.mean(agree)),
            "trials_fraction": float(np.mean([t for _, _, t in outcomes]) / reference_trials),
            "calibration": float(np.mean(confident)) if confident else None,
            "confident": len(confident) / resamples,
            "regret": float(np.mean([reference_means[reference_winner] - reference_means[w] for w, _, _ in outcomes])),
            "resamples": resamples,
        }
    return {
        "reference": {"path": str(path), "trials": reference_trials, "blocks": len(blocks), "choices": choices,
                      "winner": reference_winner, "p_best": full.p_best, "means": reference_means,
                      "collapsed": int(pq.read_table(path).column("collapsed").to_numpy(zero_copy_only=False).sum())},
        "settings": {"fixed_n": fixed_n, "racing": racing.model_dump(), "confident_at": CONFIDENT, "seed": seed},
        **results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="run the reference stage and keep its records")
    rec.add_argument("--job", default=str(JOB), help="the reference job (default jobs/decisions-reference.yaml)")
    rec.add_argument("--out", default=str(REFERENCE), help="where its records go")
    rec.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    rec.add_argument("--storage", default="/tmp/peft-search-bench-decisions")
    rep = commands.add_parser("replay", help="resample the reference under cheaper protocols")
    rep.add_argument("reference", nargs="?", default=str(REFERENCE))
    rep.add_argument("--json", dest="out", help="write the result here")
    rep.add_argument("--resamples", type=int, default=400)
    rep.add_argument("--fixed-n", type=int, default=4, help="designs (blocks) per choice of the fixed-N protocols")
    rep.add_argument("--min-blocks", type=int, default=3)
    rep.add_argument("--confidence", type=float, default=0.95)
    rep.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "record":
        record(Path(args.job), Path(args.out), args.data_dir, args.storage)
        return 0
    result = replay(Path(args.reference), args.resamples, args.fixed_n, Racing(min_blocks=args.min_blocks, confidence=args.confidence), args.seed)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
