"""Trial records and `results.parquet`: one row per finished trial of every stage.

Each trial writes its own record (`stages/<i>/trials/<trial_id>.json`) the moment it finishes; the
records are the source of truth, so a killed driver loses nothing and a resumed stage skips every
trial that has one. `results.parquet` is rebuilt from them (atomically) after each stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from peft_search.search.decide import TrialScore
from peft_search.search.plan import PlanRow
from peft_search.search.run_dir import RESULTS_FILE, trials_dir, write_atomic
from peft_search.space import Design

RESULT_COLUMNS = [
    ("trial_id", pa.string()),
    ("stage", pa.int32()),
    ("component", pa.string()),
    ("choice", pa.string()),
    ("sample", pa.int32()),
    ("design_id", pa.string()),
    ("design_json", pa.string()),
    ("grouping", pa.string()),
    ("allocation", pa.string()),
    ("tunable_groups", pa.string()),
    ("strategies", pa.string()),
    ("task", pa.string()),
    ("seed", pa.int64()),
    ("status", pa.string()),
    ("score", pa.float64()),
    ("metrics_json", pa.string()),
    ("realised_params", pa.int64()),
    ("target_params", pa.int64()),
    ("head_params", pa.int64()),
    ("wall_time_s", pa.float64()),
    ("train_samples_per_s", pa.float64()),
    ("peak_memory_mb", pa.float64()),
    ("error", pa.string()),
    ("node", pa.string()),
    ("started_at", pa.string()),
    ("finished_at", pa.string()),
]
RESULT_SCHEMA = pa.schema(RESULT_COLUMNS)


def trial_record(row: PlanRow, result: dict, node: str, started_at: str, finished_at: str) -> dict:
    """The flat record of one trial: its plan row, its result, where and when it ran."""
    design = Design.from_json(row.design_json)
    return {
        "trial_id": row.trial_id,
        "stage": row.stage,
        "component": row.component,
        "choice": row.choice,
        "sample": row.sample,
        "design_id": row.design_id,
        "design_json": row.design_json,
        "grouping": design.grouping if isinstance(design.grouping, str) else json.dumps(list(design.grouping)),
        "allocation": design.allocation if isinstance(design.allocation, str) else "free",
        "tunable_groups": "+".join(f"G{g}" for g in design.tunable_groups),
        "strategies": " ".join(f"G{g}:{'+'.join(s) or '-'}" for g, s in enumerate(design.strategies, start=1)),
        "task": row.task,
        "seed": row.seed,
        "status": result["status"],
        "score": result.get("score"),
        "metrics_json": json.dumps(result.get("metrics") or {}, sort_keys=True),
        "realised_params": result.get("realised_params"),
        "target_params": result.get("target_params"),
        "head_params": result.get("head_params"),
        "wall_time_s": result.get("wall_time_s"),
        "train_samples_per_s": result.get("train_samples_per_s"),
        "peak_memory_mb": result.get("peak_memory_mb"),
        "error": result.get("error"),
        "node": node,
        "started_at": started_at,
        "finished_at": finished_at,
    }


def record_path(run_dir: Path, stage: int, trial_id: str) -> Path:
    return trials_dir(run_dir, stage) / f"{trial_id}.json"


def started_path(run_dir: Path, stage: int, trial_id: str) -> Path:
    """A trial's marker while it runs: written when it starts, removed once its record exists."""
    return trials_dir(run_dir, stage) / f"{trial_id}.started"


def started_trials(run_dir: Path, stage: int | None = None) -> list[str]:
    """Trials that started and have no record yet: running now, or interrupted with their driver."""
    pattern = f"stages/{stage}/trials/*.started" if stage is not None else "stages/*/trials/*.started"
    return sorted(p.stem for p in run_dir.glob(pattern) if not p.with_suffix(".json").is_file())


def read_records(run_dir: Path, stage: int | None = None) -> list[dict]:
    """Every trial record of one stage (or of all stages), in a stable order."""
    pattern = f"stages/{stage}/trials/*.json" if stage is not None else "stages/*/trials/*.json"
    records = [json.loads(path.read_text()) for path in run_dir.glob(pattern)]
    return sorted(records, key=lambda r: (r["stage"], r["choice"], r["sample"], r["task"], r["seed"], r["trial_id"]))


def write_results(run_dir: Path) -> Path:
    records = read_records(run_dir)
    columns = {name: [r.get(name) for r in records] for name, _ in RESULT_COLUMNS}
    table = pa.Table.from_pydict(columns, schema=RESULT_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path = run_dir / RESULTS_FILE
    write_atomic(path, sink.getvalue().to_pybytes())
    return path


def trial_scores(records: list[dict]) -> list[TrialScore]:
    return [
        TrialScore(
            choice=r["choice"],
            design_id=r["design_id"],
            task=r["task"],
            seed=r["seed"],
            score=r["score"] if r["status"] == "finished" else None,
        )
        for r in records
    ]
