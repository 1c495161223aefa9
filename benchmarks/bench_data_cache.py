"""Data loading before and after the move to `datasets` (issue: one way through the house), side by side.

    .venv/bin/python benchmarks/bench_data_cache.py [--rounds 3] [--baseline 51b1a3e] [--out FILE]

Full SST-2 (67,349 train + 872 dev examples, max length 128, MiniLM's tokenizer), in one process:
the baseline's `train/data.py` (hand-written readers, `.npz` token cache; read from git at
--baseline, the commit before the change) and the current one (datasets builders, Arrow cache),
interleaved round by round so that both share the machine's conditions. Per round and version, with
a fresh cache directory each time:

- data cold / warm: `load_task_data` with an empty cache, then again with the cache it left;
- start-up cold / warm: `prepare` (tokenizer, data, backbone with weights, injection; the trial
  start-up of docs/benchmarks.md), with the data loader of that version, empty cache then warm.

Both versions must produce identical token ids, offsets and labels (checked). Importing datasets is
a once-per-process cost (trial actors are reused), measured apart in a fresh interpreter.
Prints a Markdown table of medians; --out also writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402,F401 - imported up front: its import is measured apart, once per process

from peft_search.train import TrialConfig  # noqa: E402
from peft_search.train import data as new_data  # noqa: E402
from peft_search.train import prepare as prepare_module  # noqa: E402
from peft_search.train.tasks import TASKS  # noqa: E402

GLUE = ROOT.parent / "shared" / "data" / "glue"
BASELINE = "51b1a3e"  # the last commit with the .npz cache and hand-written readers


def baseline_module(commit: str):
    source = subprocess.run(["git", "show", f"{commit}:peft_search/train/data.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_data.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_data", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_data"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def import_seconds() -> float:
    code = ("import time, torch, transformers, numpy; t = time.perf_counter(); import datasets; "
            "print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def timed(call):
    """(result, seconds): garbage from earlier calls is collected first, and the result is freed only
    after the clock stops, so neither version pays for the other's memory."""
    gc.collect()
    clock = time.perf_counter()
    result = call()
    return result, time.perf_counter() - clock


def same_tokens(a, b) -> bool:
    return all(
        np.array_equal(getattr(x, name), getattr(y, name))
        for x, y in ((a.train, b.train), (a.validation, b.validation))
        for name in ("input_ids", "offsets", "token_type_ids", "labels")
    ) and a.task == b.task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--out")
    args = parser.parse_args()
    if not GLUE.is_dir():
        sys.exit(f"needs the GLUE copies at {GLUE}")
    versions = {f"before ({args.baseline}, .npz)": baseline_module(args.baseline), "after (datasets, Arrow)": new_data}
    tokenizer = prepare_module.load_tokenizer("minilm")
    started = time.strftime("%Y-%m-%d %H:%M")
    timings = {name: {"data cold": [], "data warm": [], "start-up cold": [], "start-up warm": []} for name in versions}
    loaded = {}
    for round_ in range(args.rounds):
        for name, module in versions.items():
            with tempfile.TemporaryDirectory() as cache:
                kwargs = dict(data_dir=str(GLUE), max_length=128, max_train_examples=None, max_eval_examples=None, seed=0,
                              cache_dir=cache)
                for state in ("cold", "warm"):
                    before = module.STATS["tokenised_examples"]
                    result, seconds = timed(lambda: module.load_task_data(TASKS["sst2"], tokenizer, **kwargs))
                    timings[name][f"data {state}"].append(seconds)
                    assert (module.STATS["tokenised_examples"] > before) == (state == "cold")
                    loaded[name] = result
            with tempfile.TemporaryDirectory() as cache:
                config = TrialConfig(model="minilm", task="sst2", data_dir=str(GLUE), preset="lora", cache_dir=cache)
                prepare_module.load_task_data = module.load_task_data  # prepare's data loader, this version's
                for state in ("cold", "warm"):
                    timings[name][f"start-up {state}"].append(timed(lambda: prepare_module.prepare(config))[1])
            print(f"round {round_ + 1} {name}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in timings[name].items()),
                  file=sys.stderr)
    prepare_module.load_task_data = new_data.load_task_data
    identical = same_tokens(*loaded.values())
    imports = statistics.median(import_seconds() for _ in range(3))
    median = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in timings.items()}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n| full SST-2 (68,221 examples), seconds, median of {args.rounds} | " + " | ".join(versions) + " |")
    print("|---|" + "---:|" * len(versions))
    for key in ("data cold", "data warm", "start-up cold", "start-up warm"):
        print(f"| {key} | " + " | ".join(f"{median[name][key]:.2f}" for name in versions) + " |")
    print(f"\nidentical token ids, offsets and labels: {identical}; `import datasets` in a fresh process "
          f"(after torch and transformers): {imports:.2f} s; {started}; {os.cpu_count()} cores, load average {load}")
    if args.out:
        Path(args.out).write_text(json.dumps({"date": started, "timings": timings, "median": median,
                                              "identical": identical, "import_datasets_s": imports}, indent=2))
    if not identical:
        sys.exit("the two versions produced different tokens")


if __name__ == "__main__":
    main()
