"""`peft-search export RUN --out DIR`: the discovered design as a usable artefact.

    <out>/design.json          the discovered design (Design JSON; `Design.from_json`)
    <out>/<task>/peft.safetensors, <out>/<task>/design.json
                               its trained PEFT state per task (`save_peft`; load with `load_peft`)
    <out>/export.json          backbone, budget, per task: dev score and metrics, learning rate, seed,
                               parameters, and the exact TrialConfig that trained it
    <out>/README.md            a short model card: backbone, budget, scores, how to load

The weights are those the final evaluation kept (the discovered design, seed `final.seeds[0]`, at
its tuned learning rate); a run without them trains the design now, in this process, at the final
fidelity when the spec has one (else the search's), with the tuned learning rate when there is one
(else the spec's or the trial layer's default). `evaluate_export` reloads an export onto a fresh
backbone and recomputes the dev metrics exactly as the trial did (same examples, same batches).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from peft_search.errors import InputError
from peft_search.search.final.evaluate import DISCOVERED, Contender, evaluated_final, final_row
from peft_search.search.spec import load_run_spec
from peft_search.search.stage.plan import trial_config
from peft_search.search.storage.paths import LocalStaging, StoragePath
from peft_search.search.storage.records import read_final_records
from peft_search.search.storage.run_dir import STATE_FILE, read_json, require_run, task_slug, write_json_atomic
from peft_search.space import Design
from peft_search.train.tasks import TEXT_TO_TEXT, get_task

EXPORT_FILE = "export.json"


def _kept_run(run_dir: StoragePath, task: str, seed: int) -> dict | None:
    for record in read_final_records(run_dir):
        if (record["phase"] == "final" and record["contender"] == DISCOVERED and record["task"] == task
                and record["seed"] == seed and record["status"] == "finished" and record.get("weights")
                and (run_dir / record["weights"] / "peft.safetensors").is_file()):
            return record
    return None


def _tuned_rate(run_dir: StoragePath, task: str) -> float | None:
    path = run_dir / "final" / "tuning" / task_slug(task) / DISCOVERED / "best.json"
    return read_json(path).get("learning_rate") if path.is_file() else None


def export_run(path: str | Path, out: str | Path, say=print) -> StoragePath:
    """Export the discovered design of a run to `out` (a local directory or an object-store prefix);
    returns it. InputError for a run without a discovered design; RuntimeError when training it
    (weights not kept) fails."""
    run_dir = require_run(path)
    spec = load_run_spec(run_dir / "spec.yaml")
    state = read_json(run_dir / STATE_FILE)
    found = state.get("discovered")
    if not found:
        raise InputError("RUN", f"{run_dir} has no decided stage yet, so no discovered design to export")
    target = StoragePath.parse(out, "--out")
    if str(target) == str(run_dir) or str(target).startswith(f"{run_dir}/"):
        raise InputError("--out", f"give a directory outside the run ({run_dir})")
    with LocalStaging(target) as out_dir:  # written locally, then uploaded when `out` is an object store
        _export(run_dir, spec, found, out_dir, say)
    return target


def _export(run_dir: StoragePath, spec, found: dict, out_dir: Path, say) -> None:
    from peft_search.train import TrialConfig, run_trial

    design = Design.from_dict(found["design"])
    final = evaluated_final(run_dir, spec)
    (out_dir / "design.json").write_text(design.to_json() + "\n")
    tasks = {}
    for task in spec.tasks:
        target = out_dir / task_slug(task)
        if target.exists():
            shutil.rmtree(target)
        seed = final.seeds[0] if final else spec.seeds[0]
        kept = _kept_run(run_dir, task, seed)
        if kept is not None:
            (run_dir / kept["weights"]).download(target)
            config = json.loads(kept["config_json"])
            score, metrics = kept["score"], json.loads(kept["metrics_json"])
            realised, head, source = kept["realised_params"], kept["head_params"], "the final evaluation"
            head_fate = {"head": kept.get("head"), "checkpoint_head_labels": kept.get("checkpoint_head_labels")}
        else:
            if final is not None:
                trial = final_row(spec, final, Contender(DISCOVERED, None, design), task, seed,
                                  _tuned_rate(run_dir, final.tuning.task or task), phase="final").config
            else:
                trial = trial_config(spec, task, seed, design)
            say(f"export: training the discovered design on {task} (the final evaluation kept no weights)")
            result = run_trial(trial, save_dir=str(target))
            if result.status != "finished":
                raise RuntimeError(f"training the discovered design on {task} {result.status}: {result.error}")
            config = trial.to_dict()
            score, metrics = result.score, result.metrics
            realised, head, source = result.realised_params, result.head_params, "trained by export"
            head_fate = {"head": result.head, "checkpoint_head_labels": result.checkpoint_head_labels}
        tasks[task] = {
            "directory": task_slug(task),
            "score": score,
            "metrics": metrics,
            "learning_rate": TrialConfig.from_dict(config).base_learning_rate,
            "seed": seed,
            "realised_params": realised,
            "head_params": head,
            # The head it trained, of `num_labels` outputs: new, or the checkpoint's own (kept), or new in
            # place of the checkpoint's head of another size (replaced; docs/design.md, "Backbones").
            "num_labels": None if spec.objective == TEXT_TO_TEXT else get_task(task).num_labels,
            "objective": spec.objective,
            **head_fate,
            "weights_from": source,
            "config": config,
        }
        say(f"export: {task}: dev score {score:.4f} ({source}) -> {target}")
    summary = {
        "format": "peft-search-export/1",
        "run": str(run_dir),
        "backbone": spec.backbone,
        "budget_fraction": spec.budget_fraction,
        "design_id": design.design_id,
        "design": design.to_dict(),
        "search_score": found["score"],
        "tasks": tasks,
    }
    write_json_atomic(out_dir / EXPORT_FILE, summary)
    (out_dir / "README.md").write_text(model_card(summary, design))


def model_card(summary: dict, design: Design) -> str:
    first_task, first = next(iter(summary["tasks"].items()))
    rows = "\n".join(
        f"| {task} | {t['score']:.4f} | {', '.join(f'{k} {v:.4f}' for k, v in t['metrics'].items() if isinstance(v, float))} "
        f"| {t['learning_rate']:.3g} | {t['seed']} | {t['realised_params']:,} + {t['head_params']:,} head |"
        for task, t in summary["tasks"].items()
    )
    target = first["config"]
    return f"""# PEFT design {summary['design_id']} (found by peft-search)

Discovered by the search in `{summary['run']}` (search score {summary['search_score']:.4f}).

- Backbone: `{summary['backbone']}` (frozen; only the PEFT modules and the task head are stored here)
- Budget: {summary['budget_fraction']:g} of the backbone's parameters
- Design: {design.summary()}

```json
{design.to_json()}
```

## Dev scores of the exported weights

| task | score (main metric) | metrics | learning rate | seed | trainable parameters |
|---|---|---|---|---|---|
{rows}

Trained for {target['max_steps'] or target['epochs']} {'steps' if target['max_steps'] else 'epochs'}, batch
{target['batch_size']}, max length {target['max_length']}
{f"on at most {target['max_train_examples']} training examples" if target['max_train_examples'] else ''};
dev scores on {f"a fixed subsample of {target['max_eval_examples']}" if target['max_eval_examples'] else 'all'} dev examples.
`export.json` holds every number above and the exact training configuration per task.

## Load

```python
{_load_snippet(summary['backbone'], first_task, first)}
```

To recompute the dev score of `{first_task}` from these files:

```python
from peft_search.search.final.export import evaluate_export
print(evaluate_export(".", "{first_task}"))
```
"""


def _load_snippet(backbone: str, task: str, entry: dict) -> str:
    """The model card's lines that load the exported method (a classifier, or a language model that
    then answers with `generate`)."""
    if entry.get("objective") == TEXT_TO_TEXT:
        return (f'from peft_search import load_backbone, load_peft\n\n'
                f'model = load_backbone("{backbone}", objective="text_to_text")  # its own language-modelling head\n'
                f'load_peft(model, "{entry["directory"]}")  # injects the saved plan and loads the trained tensors\n'
                f'model.eval()  # then model.generate(...) answers {task} in its text form')
    return (f'from peft_search.peft import load_backbone, load_peft\n\n'
            f'model = load_backbone("{backbone}", num_labels={entry["num_labels"]})  # {task}\'s head: {entry["num_labels"]} outputs\n'
            f'load_peft(model, "{entry["directory"]}")  # injects the saved plan and loads the trained tensors\n'
            f'model.eval()')


def evaluate_export(export_dir: str | Path, task: str) -> dict:
    """Load an export's weights for `task` onto a fresh backbone and evaluate them on the dev examples
    the trial was scored on, batched as the trial did; returns the metrics with `score` (main metric)."""
    from peft_search.train import TrialConfig, evaluate_saved

    export_dir = Path(export_dir)
    summary = json.loads((export_dir / EXPORT_FILE).read_text())
    if task not in summary["tasks"]:
        raise InputError("task", f"{task!r} is not in this export; it has {', '.join(summary['tasks'])}")
    entry = summary["tasks"][task]
    return evaluate_saved(TrialConfig.from_dict(entry["config"]), export_dir / entry["directory"])


__all__ = ["EXPORT_FILE", "evaluate_export", "export_run", "model_card"]
