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
- `default` and `kn ...`: the blocks in a random order, raced exactly as a stage races
  (`racing.judge`: the selection procedure, KN with a tie stop, after every block from the first
  stage on, until it selects, declares a tie, or `max_blocks` blocks ran): `default` with the
  spec's defaults (`Racing()`), then every setting of the grid below.
Blocks are drawn without replacement (a block drawn twice would fake agreement). Per method:
`agreement` (share of resamples whose kept choice is the reference's full-data winner),
`trials_fraction` (mean trials used / the reference's trials), `confident` (share of resamples
making a claim: P(best) >= 0.9 for the fixed-N methods; a selection or a tie for the procedure),
`calibration` (share of those claims that are right: the chosen choice is the reference winner for
P(best); for the procedure, a selection's choice is within delta of the reference best's mean
(KN's guarantee is about that: a correct selection when one choice is delta better, a good one
otherwise) and a tie's choices all are; null when no claim), `ties` (share declaring a tie; its
claims are in `calibration` too) and `regret` (mean over resamples of the reference mean of the
reference winner minus that of the chosen choice).
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
from peft_search.search.stage.racing import judge

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "data" / "decisions-reference.parquet"
JOB = ROOT / "jobs" / "decisions-reference.yaml"
KEEP = ["trial_id", "choice", "block", "design_id", "task", "seed", "status", "score", "baseline_score", "collapsed",
        "wall_time_s", "grouping", "allocation", "tunable_groups", "strategies", "metrics_json"]  # every metric, eval loss too
CONFIDENT = 0.9
# Racing settings replayed besides the defaults: (min_blocks, max_blocks, delta, confidence, procedure).
GRID = [(2, 3, 0.05, 0.9, "kn"), (2, 4, 0.05, 0.9, "kn"), (3, 6, 0.05, 0.9, "kn"), (5, 6, 0.05, 0.9, "kn"),
        (3, 16, 0.05, 0.9, "kn"), (3, 16, 0.03, 0.9, "kn"), (3, 16, 0.02, 0.9, "kn"), (8, 16, 0.05, 0.9, "kn"),
        (8, 16, 0.03, 0.9, "kn"), (8, 16, 0.05, 0.95, "kn"),
        (8, 16, 0.05, 0.95, "kn++"), (8, 16, 0.05, 0.9, "kn++"), (8, 16, 0.03, 0.95, "kn++")]


# ---- record -----------------------------------------------------------------------------------------


def record(job: Path, out: Path, data_dir: str, storage: str, run: Path | None = None) -> None:
    """Run the reference job (or take the finished run `run`: a long one is run, and resumed, with
    `peft-search run/resume` and kept from here) and keep its trial records."""
    if run is None:
        command = [sys.executable, "-m", "peft_search.cli", "run", str(job), "--data-dir", data_dir, "--storage", storage]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
        runs = sorted((p for p in Path(storage).iterdir() if (p / "results.parquet").is_file()), key=lambda p: p.stat().st_mtime)
        run = runs[-1]
    table = pq.read_table(run / "results.parquet")
    table = table.select([name for name in KEEP if name in table.column_names])
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    print(f"{table.num_rows} trial records -> {out} ({out.stat().st_size / 1e6:.2f} MB)")


# ---- replay -----------------------------------------------------------------------------------------


def score_table(path: Path) -> tuple[list[str], list[int], np.ndarray, int]:
    """(choices, blocks, scores[choice, block] with NaN for a failed design, reference trials). A
    design's score is the service's (`racing.block_scores`: the mean over tasks of each task's mean
    over seeds)."""
    from peft_search.search.stage.racing import block_scores

    rows = pq.read_table(path).to_pylist()
    tasks = sorted({r["task"] for r in rows})
    table = block_scores(rows, tasks)
    choices = sorted(table)
    blocks = sorted({r["block"] for r in rows})
    scores = np.full((len(choices), len(blocks)), np.nan)
    for i, choice in enumerate(choices):
        for block, score in table[choice].items():
            if score is not None:
                scores[i, blocks.index(block)] = score
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


def procedure(choices, scores, racing: Racing, max_blocks: int, rng):
    """One resample raced under the selection procedure: (kept choice, claim or None, trials)."""
    order = [int(b) for b in rng.permutation(scores.shape[1])[:max_blocks]]
    table = as_blocks(choices, scores, order)
    first = min(racing.min_blocks, len(order))
    for count in range(first, len(order) + 1):
        verdict = judge(table, choices, order[:count], racing, len(order))
        if verdict.done:
            break
    trials = sum(verdict.dropped[c].blocks if c in verdict.dropped else verdict.blocks for c in choices)
    if verdict.outcome == "tie":
        from peft_search.search.stage.racing import kept_on_tie

        return kept_on_tie(verdict, racing.on_tie, "replay"), ("tie", verdict.tied), trials
    claim = ("selected", verdict.survivors) if verdict.outcome == "selected" else None
    return verdict.leader, claim, trials


def replay(path: Path, resamples: int, fixed_n: int, seed: int) -> dict:
    choices, blocks, scores, reference_trials = score_table(path)
    rows_per_design = reference_trials / (len(choices) * len(blocks))  # tasks x seeds (1 for a one-task reference)
    full = compare_blocks(as_blocks(choices, scores, range(len(blocks))), seed=seed)
    reference_means = {c: float(np.nanmean(scores[i])) for i, c in enumerate(choices)}
    reference_winner = max(reference_means, key=lambda c: (reference_means[c], -choices.index(c)))
    best_mean = reference_means[reference_winner]

    def fixed(method):
        def run(rng, s):
            winner, p, trials = method(choices, scores, fixed_n, rng, s)
            claim = ("p_best", (winner,)) if p is not None and p >= CONFIDENT else None
            return winner, claim, trials, None
        return run

    def raced(racing: Racing, max_blocks: int):
        def run(rng, s):
            kept, claim, trials = procedure(choices, scores, racing, max_blocks, rng)
            return kept, claim, trials, racing.delta
        return run

    methods = {"independent_fixed": fixed(independent_fixed), "paired_fixed": fixed(paired_fixed),
               "default": raced(Racing(), len(blocks))}
    settings = {"default": {**Racing().model_dump(), "max_blocks": len(blocks)}}
    for min_blocks, max_blocks, delta, confidence, name_of_procedure in GRID:
        racing = Racing(min_blocks=min_blocks, delta=delta, confidence=confidence, procedure=name_of_procedure)
        name = f"{name_of_procedure} min_blocks={min_blocks} max_blocks={max_blocks} delta={delta:g} confidence={confidence:g}"
        methods[name] = raced(racing, min(max_blocks, len(blocks)))
        settings[name] = {**racing.model_dump(), "max_blocks": min(max_blocks, len(blocks))}

    def right(claim, delta) -> bool:
        kind, named = claim
        if kind == "p_best":
            return named[0] == reference_winner
        return all(reference_means[c] >= best_mean - delta for c in named)

    results = {}
    for name, method in methods.items():
        rng = np.random.RandomState(seed)
        outcomes = [method(rng, seed + 1 + r) for r in range(resamples)]
        claims = [right(claim, delta) for _, claim, _, delta in outcomes if claim is not None]
        results[name] = {
            "agreement": float(np.mean([kept == reference_winner for kept, _, _, _ in outcomes])),
            # A method counts designs (choice x block); each design is one trial per task and seed.
            "trials_fraction": float(np.mean([t for _, _, t, _ in outcomes]) * rows_per_design / reference_trials),
            "calibration": float(np.mean(claims)) if claims else None,
            "confident": len(claims) / resamples,
            "ties": sum(claim is not None and claim[0] == "tie" for _, claim, _, _ in outcomes) / resamples,
            "regret": float(np.mean([best_mean - reference_means[kept] for kept, _, _, _ in outcomes])),
            "resamples": resamples,
            **({"settings": settings[name]} if name in settings else {}),
        }
    return {
        "reference": {"path": str(path), "trials": reference_trials, "blocks": len(blocks), "choices": choices,
                      "winner": reference_winner, "p_best": full.p_best, "means": reference_means,
                      "collapsed": int(pq.read_table(path).column("collapsed").to_numpy(zero_copy_only=False).sum())},
        "settings": {"fixed_n": fixed_n, "confident_at": CONFIDENT, "seed": seed},
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
    rec.add_argument("--from-run", type=Path, help="keep the records of this finished run instead of running the job")
    rep = commands.add_parser("replay", help="resample the reference under cheaper protocols")
    rep.add_argument("reference", nargs="?", default=str(REFERENCE))
    rep.add_argument("--json", dest="out", help="write the result here")
    rep.add_argument("--resamples", type=int, default=400)
    rep.add_argument("--fixed-n", type=int, default=4, help="designs (blocks) per choice of the fixed-N protocols")
    rep.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "record":
        record(Path(args.job), Path(args.out), args.data_dir, args.storage, run=args.from_run)
        return 0
    result = replay(Path(args.reference), args.resamples, args.fixed_n, args.seed)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
