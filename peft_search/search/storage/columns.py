"""Every column a plan, a trial record, `results.parquet` or `final.parquet` can have, declared once:
its Arrow type and what it holds. The plan, results and final schemas are lists of these names
(`schema`), so a column means the same thing, with the same type, wherever it appears."""

from __future__ import annotations

import pyarrow as pa

COLUMNS: dict[str, pa.DataType] = {
    # what the trial is
    "trial_id": pa.string(),  # a hash of its row: the same row always has the same id
    "stage": pa.int32(),
    "component": pa.string(),  # the component the stage refines (`joint` for a joint search)
    "choice": pa.string(),
    "choice_index": pa.int32(),
    "sample": pa.int32(),
    "block": pa.int32(),  # paired sampling; null for independent designs (and runs before 0.2)
    "phase": pa.string(),  # final evaluation: tune (scored on the held-back training slice) | final (on dev)
    "contender": pa.string(),  # final evaluation: discovered, a preset, or a named design
    "design_id": pa.string(),
    "design_json": pa.string(),  # Design.to_json()
    "grouping": pa.string(),
    "allocation": pa.string(),
    "tunable_groups": pa.string(),
    "strategies": pa.string(),
    "task": pa.string(),
    "seed": pa.int64(),
    "planned_params": pa.int64(),
    "config_json": pa.string(),  # the TrialConfig that trains it; JSON, so nullable mixed-type fields stay exact
    # what it did
    "status": pa.string(),  # finished | diverged | oom | failed
    "score": pa.float64(),
    "baseline_score": pa.float64(),  # the constant prediction's score on the same examples
    "collapsed": pa.bool_(),  # the trial ended at that baseline (learned nothing); None in older runs
    "metrics_json": pa.string(),  # every metric of the task, eval loss included
    "learning_rate": pa.float64(),  # the base rate it trained at (null in stage records before 0.4)
    "learning_rates_json": pa.string(),  # each strategy's rate, {"lora": ..., "head": ...}; None before 0.4
    "realised_params": pa.int64(),
    "target_params": pa.int64(),
    "head_params": pa.int64(),
    "head": pa.string(),  # the head it trained: new | kept (the checkpoint's own) | replaced (a new one for it) | lm (text_to_text: the backbone's own LM head, frozen); null before 0.4
    "checkpoint_head_labels": pa.int64(),  # the outputs of the checkpoint's own head; null: it had none
    "wall_time_s": pa.float64(),
    "train_samples_per_s": pa.float64(),
    "peak_memory_mb": pa.float64(),
    "error": pa.string(),
    "weights": pa.string(),  # relative to the run directory; the discovered design's kept state
    "node": pa.string(),  # host name
    "node_id": pa.string(),  # the Ray node (null for runs before 0.3)
    "started_at": pa.string(),
    "finished_at": pa.string(),
}


def schema(names) -> pa.Schema:
    """An Arrow schema of these columns, in this order."""
    return pa.schema([(name, COLUMNS[name]) for name in names])


__all__ = ["COLUMNS", "schema"]
