"""Small SuperGLUE task files in the official distribution's layout (`<root>/<Task>/train.jsonl` and
`val.jsonl`, one JSON object per line, fields and nesting as the SuperGLUE v2 zip has them), written
by the tests: no SuperGLUE data ships with the repository or in ../shared.

Rows are synthetic but follow each task's shape: BoolQ and WiC booleans, CB and RTE label names,
COPA's two choices, WSC's `target` object, MultiRC's passage > questions > answers nesting and
ReCoRD's entity spans, "@highlight" lines and queries with answers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("river", "bank", "paper", "light", "stone", "music", "garden", "window", "train", "cloud")
NAMES = ("Alice", "Boris", "Chen", "Dana", "Emeka", "Farah")


def _boolq(rng, i):
    word = rng.choice(WORDS)
    return {"question": f"is the {word} near the town", "passage": f"The {word} lies {rng.choice(['near', 'far from'])} "
            "the town.", "idx": i, "label": rng.random() < 0.5}


def _cb(rng, i):
    return {"premise": f"{rng.choice(NAMES)} said the {rng.choice(WORDS)} was open.", "hypothesis": "It was open.",
            "label": rng.choice(["entailment", "contradiction", "neutral"]), "idx": i}


def _copa(rng, i):
    return {"premise": f"The {rng.choice(WORDS)} broke.", "choice1": "Someone dropped it.", "choice2": "It rained.",
            "question": rng.choice(["cause", "effect"]), "label": rng.randrange(2), "idx": i}


def _rte(rng, i):
    return {"premise": f"{rng.choice(NAMES)} owns a {rng.choice(WORDS)}.", "hypothesis": "Someone owns something.",
            "label": rng.choice(["entailment", "not_entailment"]), "idx": i}


def _wic(rng, i):
    word = rng.choice(WORDS)
    return {"word": word, "sentence1": f"The {word} was old.", "sentence2": f"A {word} of hers.", "idx": i,
            "label": rng.random() < 0.5, "start1": 4, "start2": 2, "end1": 4 + len(word), "end2": 2 + len(word),
            "version": 1.1}


def _wsc(rng, i):
    name = rng.choice(NAMES)
    return {"text": f"{name} thanked the {rng.choice(WORDS)} because he was kind.", "idx": i, "label": rng.random() < 0.5,
            "target": {"span1_index": 0, "span1_text": name, "span2_index": 6, "span2_text": "he"}}


def _multirc(rng, i):
    questions = []
    for q in range(2):
        answers = [{"text": rng.choice(WORDS), "idx": a, "label": rng.randrange(2)} for a in range(3)]
        questions.append({"question": f"What did {rng.choice(NAMES)} see?", "answers": answers, "idx": q})
    return {"idx": i, "version": 1.1, "passage": {"text": f"{rng.choice(NAMES)} saw a {rng.choice(WORDS)}.",
                                                  "questions": questions}}


def _record(rng, i):
    first, second = rng.sample(NAMES, 2)
    text = f"{first} met {second} by the {rng.choice(WORDS)}.\n@highlight\n{first} was glad"
    entities = [{"start": 0, "end": len(first) - 1}, {"start": len(first) + 5, "end": len(first) + 4 + len(second)}]
    answer = rng.choice([first, second])
    start = text.index(answer)
    return {"source": "synthetic", "idx": i, "passage": {"text": text, "entities": entities},
            "qas": [{"query": "@placeholder was glad", "idx": 0,
                     "answers": [{"start": start, "end": start + len(answer) - 1, "text": answer}]}]}


TASKS = {"BoolQ": _boolq, "CB": _cb, "COPA": _copa, "RTE": _rte, "WiC": _wic, "WSC": _wsc, "MultiRC": _multirc,
         "ReCoRD": _record}


def write_superglue(root: Path, train: int = 24, validation: int = 12, seed: int = 0) -> Path:
    """Every SuperGLUE task's train.jsonl and val.jsonl under `root`; returns `root`."""
    rng = random.Random(seed)
    for directory, row in TASKS.items():
        (root / directory).mkdir(parents=True, exist_ok=True)
        for name, count in (("train.jsonl", train), ("val.jsonl", validation)):
            lines = [json.dumps(row(rng, i)) for i in range(count)]
            (root / directory / name).write_text("\n".join(lines) + "\n")
    return root
