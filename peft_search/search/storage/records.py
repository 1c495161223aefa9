"""Trial records, `results.parquet` (one row per finished trial of every stage) and the final
evaluation's records with `final.parquet`.

Each trial writes its own record (`stages/<i>/trials/<trial_id>.json`, by `search.trials.run_row`)
the moment it finishes; the records are the source of truth, so a killed driver loses nothing and a
resumed stage skips every trial that has one. `results.parquet` is rebuilt from them (atomically) after each stage.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from peft_search.search.storage.columns import schema
from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.run_dir import RESULTS_FILE, read_json

RESULT_COLUMNS = (  # one row per stage trial record; storage.columns says what each holds
    "trial_id", "stage", "component", "choice", "sample", "block", "design_id", "design_json", "grouping",
    "allocation", "tunable_groups", "strategies", "task", "seed", "status", "score", "baseline_score",
    "collapsed", "metrics_json", "learning_rate", "learning_rates_json", "realised_params", "target_params",
    "head_params", "head", "checkpoint_head_labels", "wall_time_s", "train_samples_per_s", "peak_memory_mb", "error",
    "node", "node_id", "started_at", "finished_at",
)
RESULT_SCHEMA = schema(RESULT_COLUMNS)


def started_trials(run_dir: StoragePath, stage: int | None = None) -> list[str]:
    """Trials that started and have no record yet: running now, or interrupted with their driver."""
    files = run_dir.glob(f"stages/{stage if stage is not None else '*'}/trials/*")
    recorded = {p.stem for p in files if p.suffix == ".json"}
    return sorted(p.stem for p in files if p.suffix == ".started" and p.stem not in recorded)


def read_records(run_dir: StoragePath, stage: int | None = None, finished: dict[str, dict] | None = None) -> list[dict]:
    """Every trial record of one stage (or of all stages), in a stable order. `finished`, a cache
    kept by a caller that reads the same stage again and again (the stage searcher, after every
    trial): a finished trial's record is never rewritten, so it is read once (one GET on an object
    store) and then taken from the cache; other records are read every time."""
    pattern = f"stages/{stage}/trials/*.json" if stage is not None else "stages/*/trials/*.json"
    records = []
    for path in run_dir.glob(pattern):
        record = finished.get(str(path)) if finished is not None else None
        if record is None:
            record = read_json(path)
            if finished is not None and record["status"] == "finished":
                finished[str(path)] = record
        records.append(record)
    return sorted(records, key=lambda r: (r["stage"], r["choice"], r["sample"], r["task"], r["seed"], r["trial_id"]))


def write_parquet(path: StoragePath, table: pa.Table) -> StoragePath:
    """One Parquet file, written atomically (serialised in memory, then one write)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path.write_bytes(sink.getvalue().to_pybytes())
    return path


def read_parquet(path: StoragePath) -> pa.Table:
    return pq.read_table(pa.BufferReader(path.read_bytes()))


def read_results(run_dir: StoragePath, columns: list[str] | None = None) -> list[dict]:
    """The rows of `results.parquet` (every stage record as of the last decision; one read, where the
    records are one read each); empty before the first stage decides."""
    path = run_dir / RESULTS_FILE
    return read_parquet(path).select(columns or list(RESULT_COLUMNS)).to_pylist() if path.is_file() else []


def write_results(run_dir: StoragePath) -> StoragePath:
    records = read_records(run_dir)
    columns = {name: [r.get(name) for r in records] for name in RESULT_COLUMNS}
    return write_parquet(run_dir / RESULTS_FILE, pa.Table.from_pydict(columns, schema=RESULT_SCHEMA))


# ---- the final evaluation's records -----------------------------------------------------------------

FINAL_DIR = "final"
FINAL_DONE_FILE = "done.json"  # written when the final evaluation ran to its end
FINAL_RECORDS_FILE = "final.parquet"
FINAL_COLUMNS = (  # one row per final-evaluation record
    "trial_id", "phase", "contender", "task", "seed", "learning_rate", "status", "score", "metrics_json",
    "design_id", "design_json", "realised_params", "target_params", "head_params", "wall_time_s", "error",
    "weights", "config_json", "node", "started_at", "finished_at", "baseline_score", "collapsed",
    "learning_rates_json", "head", "checkpoint_head_labels",
)
FINAL_SCHEMA = schema(FINAL_COLUMNS)


def read_final_records(run_dir: StoragePath) -> list[dict]:
    """Every tuning trial and seeded run of the final evaluation, in a stable order."""
    directory = run_dir / FINAL_DIR
    paths = [p for p in directory.glob("tuning/*/*/*.json") if p.name != "best.json"] + list(directory.glob("runs/*.json"))
    records = []
    for path in paths:
        record = read_json(path)
        if "run_id" in record:  # written before version 0.2, when final runs had an id of their own
            record["trial_id"] = record.pop("run_id")
        records.append(record)
    return sorted(records, key=lambda r: (r["task"], r["phase"] != "tune", r["contender"], r["seed"], r["learning_rate"], r["trial_id"]))


def final_done(run_dir: StoragePath) -> bool:
    """Whether the run's final evaluation ran to its end (`evaluate_run` writes final/done.json last)."""
    return (run_dir / FINAL_DIR / FINAL_DONE_FILE).is_file()


def final_rows(run_dir: StoragePath) -> list[dict]:
    """The final evaluation's rows as final.parquet holds them, built from its records: they are the
    source of truth, so the finished runs of an evaluation still going (or interrupted) count too.
    final.parquet's rows for a run whose records are not there."""
    records = read_final_records(run_dir)
    if not records:
        return read_final(run_dir)
    return [{name: record.get(name) for name in FINAL_COLUMNS} for record in records]


def write_final(run_dir: StoragePath) -> StoragePath:
    """`final.parquet`, rebuilt (atomically) from the final evaluation's records."""
    records = read_final_records(run_dir)
    table = pa.Table.from_pydict({name: [r.get(name) for r in records] for name in FINAL_COLUMNS}, schema=FINAL_SCHEMA)
    return write_parquet(run_dir / FINAL_RECORDS_FILE, table)


def read_final(run_dir: StoragePath) -> list[dict]:
    """The rows of `final.parquet`; empty when the run has no final evaluation yet."""
    path = run_dir / FINAL_RECORDS_FILE
    if not path.is_file():
        return []
    rows = read_parquet(path).to_pylist()
    for row in rows:
        if "run_id" in row:  # final.parquet written before version 0.2
            row["trial_id"] = row.pop("run_id")
    return rows
