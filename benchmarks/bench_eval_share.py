"""The share of a trial's time spent evaluating: the text-to-text objective (rank classification of
the label words, every option of a batch in one forward, plus greedy generation with the KV cache)
against the classification head, on the same backbone and task (issue 37: evaluation must not
dominate a trial).

The backbone is a T5 of t5-small's shape (6 + 6 blocks, width 512, 8 heads; random init, MiniLM's
tokenizer: no pretrained generative model can be fetched here; timings depend on shape, not
weights), loaded as `T5ForConditionalGeneration` for text_to_text and `T5ForSequenceClassification`
for classification. SST-2 from ../shared/data/glue: 800 training examples, 200 steps at batch 16 and
max length 64 (an evaluation after each of the 4 epochs), 400 dev examples; the `lora` preset. Both
objectives run side by side in one process, alternating, `--repeats` times.

    .venv/bin/python benchmarks/bench_eval_share.py --data-dir ../shared/data/glue [--repeats 2] \
        [--out benchmarks/data/eval-share.json]

Prints, per objective, the trial's wall time, the time its evaluations took (`evaluation_s`, summed)
and their share; docs/benchmarks.md holds the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def t5_small_shaped(directory: Path) -> str:
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from peft_search.peft import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    tokenizer.eos_token = "[SEP]"
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                      num_decoder_layers=6, num_heads=8, eos_token_id=tokenizer.sep_token_id,
                      pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the GLUE root (../shared/data/glue)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "data" / "eval-share.json"))
    args = parser.parse_args(argv)

    from peft_search.train import TrialConfig, run_trial

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        model = t5_small_shaped(Path(scratch) / "t5-small-shaped")
        for repeat in range(args.repeats):
            for objective in ("classification", "text_to_text"):
                config = TrialConfig(model=model, task="sst2", data_dir=args.data_dir, preset="lora", objective=objective,
                                     max_steps=args.steps, batch_size=16, max_length=64, max_train_examples=800,
                                     max_eval_examples=400, seed=0, cache_dir=str(Path(scratch) / "cache"))
                started = time.perf_counter()
                result = run_trial(config)
                wall = time.perf_counter() - started
                if result.status != "finished":
                    print(f"{objective}: {result.status}: {result.error}", file=sys.stderr)
                    return 1
                evaluation = sum(epoch["evaluation_s"] for epoch in result.epochs)
                rows.append({"objective": objective, "repeat": repeat, "wall_s": round(wall, 2),
                             "evaluation_s": round(evaluation, 2), "evaluations": len(result.epochs),
                             "share": round(evaluation / wall, 4), "score": result.score})
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for objective in ("classification", "text_to_text"):
        mine = [r for r in rows if r["objective"] == objective]
        summary[objective] = {key: statistics.median(r[key] for r in mine) for key in ("wall_s", "evaluation_s", "share")}
    print(f"\n{'objective':<15} {'trial s':>8} {'evaluation s':>13} {'share':>6}")
    for objective, s in summary.items():
        print(f"{objective:<15} {s['wall_s']:>8.1f} {s['evaluation_s']:>13.1f} {s['share']:>6.1%}")
    Path(args.out).write_text(json.dumps({"rows": rows, "median": summary, "steps": args.steps}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
