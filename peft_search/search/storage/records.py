"""Trial records, `results.parquet` (one row per finished trial of every stage) and the final
evaluation's records with `final.parquet`.

Each trial writes its own record (`stages/<i>/trials/<trial_id>.json`, by `search.trials.run_row`)
the moment it finishes; the records are the source of truth, so a killed driver loses nothing and a
resumed stage skips every trial that has one. `results.parquet` is rebuilt from them (atomically) after each stage.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from peft_search.search.storage.paths import StoragePath
from peft_search.search.storage.run_dir import RESULTS_FILE, read_json

RESULT_COLUMNS = [
    ("trial_id", pa.string()),
    ("stage", pa.int32()),
    ("component", pa.string()),
    ("choice", pa.string()),
    ("sample", pa.int32()),
    ("block", pa.int32()),  # paired sampling; null for independent designs (and runs before 0.2)
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
    ("baseline_score", pa.float64()),  # the constant prediction's score on the same examples
    ("collapsed", pa.bool_()),  # the trial ended at that baseline (learned nothing)
    ("metrics_json", pa.string()),
    ("learning_rate", pa.float64()),  # the base rate it trained at (null for runs before 0.4)
    ("learning_rates_json", pa.string()),  # each strategy's rate, {"lora": ..., "head": ...}
    ("realised_params", pa.int64()),
    ("target_params", pa.int64()),
    ("head_params", pa.int64()),
    ("wall_time_s", pa.float64()),
    ("train_samples_per_s", pa.float64()),
    ("peak_memory_mb", pa.float64()),
    ("error", pa.string()),
    ("node", pa.string()),  # host name
    ("node_id", pa.string()),  # the Ray node (null for runs before 0.3)
    ("started_at", pa.string()),
    ("finished_at", pa.string()),
]
RESULT_SCHEMA = pa.schema(RESULT_COLUMNS)


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


def write_results(run_dir: StoragePath) -> StoragePath:
    records = read_records(run_dir)
    columns = {name: [r.get(name) for r in records] for name, _ in RESULT_COLUMNS}
    return write_parquet(run_dir / RESULTS_FILE, pa.Table.from_pydict(columns, schema=RESULT_SCHEMA))


# ---- the final evaluation's records -----------------------------------------------------------------

FINAL_DIR = "final"
FINAL_DONE_FILE = "done.json"  # written when the final evaluation ran to its end
FINAL_RECORDS_FILE = "final.parquet"
FINAL_COLUMNS = [
    ("trial_id", pa.string()),
    ("phase", pa.string()),  # tune (scored on the held-back training slice) | final (scored on dev)
    ("contender", pa.string()),
    ("task", pa.string()),
    ("seed", pa.int64()),
    ("learning_rate", pa.float64()),
    ("status", pa.string()),
    ("score", pa.float64()),
    ("metrics_json", pa.string()),
    ("design_id", pa.string()),
    ("design_json", pa.string()),
    ("realised_params", pa.int64()),
    ("target_params", pa.int64()),
    ("head_params", pa.int64()),
    ("wall_time_s", pa.float64()),
    ("error", pa.string()),
    ("weights", pa.string()),  # relative to the run directory; the discovered design's kept state
    ("config_json", pa.string()),  # the TrialConfig that trained it
    ("node", pa.string()),
    ("started_at", pa.string()),
    ("finished_at", pa.string()),
    ("baseline_score", pa.float64()),  # the dev score of predicting the majority class (or the mean)
    ("collapsed", pa.bool_()),  # the run ended at that baseline (learned nothing); None in older runs
    ("learning_rates_json", pa.string()),  # each strategy's rate (the base x its scale); None in older runs
]
FINAL_SCHEMA = pa.schema(FINAL_COLUMNS)


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
    return [{name: record.get(name) for name, _ in FINAL_COLUMNS} for record in records]


def write_final(run_dir: StoragePath) -> StoragePath:
    """`final.parquet`, rebuilt (atomically) from the final evaluation's records."""
    records = read_final_records(run_dir)
    table = pa.Table.from_pydict({name: [r.get(name) for r in records] for name, _ in FINAL_COLUMNS}, schema=FINAL_SCHEMA)
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
