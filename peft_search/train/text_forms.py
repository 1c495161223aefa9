"""Tasks as text, for the text-to-text objective (docs/design.md, "Objectives"): every example becomes
a source text, a target text and what scoring needs beside them.

The forms are the T5 paper's (Raffel et al., 2020, appendix D, and its `t5.data.preprocessors`): a
task prefix, then each field as "name: value" in alphabetical order of the names, and the label as a
word ("sst2 sentence: a charming film" -> "positive"; "mnli hypothesis: ... premise: ..." ->
"neutral"). STS-B's target is its score rounded to the nearest 0.2 ("3.8"). SuperGLUE follows the same
preprocessors where they are this simple, and says where it departs:
- WiC: the T5 paper shows a `pos:` field, which the official JSONL lacks; it is shown when present.
- WSC: T5 trained a rewritten task (the pronoun marked, the referent generated, positives only);
  here it stays SuperGLUE's binary question, the pronoun and the noun phrase as fields
  ("wsc span1_text: ... span2_text: ... text: ..." -> "True"), scored like BoolQ.
- MultiRC: one example per answer option ("multirc answer: ... paragraph: ... question: ..." ->
  "True"), grouped by question for its exact match.
- ReCoRD: one example per query, the passage's "@highlight" lines joined as T5 does, the entities
  listed ("record query: ... entities: A, B, ... passage: ...") and the target the first gold answer;
  scored by ranking the entities, against every gold answer.

Each rendered example has the columns `source`, `target`, `label` (the class id; -1 where the target
is free text), `options` (the candidate answers of this example; empty: the task's label words),
`answers` (the gold answers; for most tasks just the target) and `group` (MultiRC's question, else
the example itself). Pure Python; datasets only through the callers' Dataset.map.
"""

from __future__ import annotations

import json
import re

from peft_search.errors import InputError
from peft_search.train.tasks import Task

TEXT_COLUMNS = ("source", "target", "label", "options", "answers", "group")


def stsb_target(score: float) -> str:
    """STS-B's score as T5 writes it: round(5 x score) / 5 with one decimal ("3.8"); halves go to the
    even fifth (3.7 -> "3.6"), as T5's tf.round does."""
    return f"{round(float(score) * 5) / 5:.1f}"


def render(prefix: str | None, fields) -> str:
    """"prefix name: value name: value", the T5 paper's input (no prefix: the fields alone)."""
    parts = [prefix] if prefix else []
    parts += [f"{name}: {value}" for name, value in fields]
    return " ".join(parts)


def label_words(task: Task) -> tuple[str, ...]:
    """The words a task's labels are written as (its text form's, else the label names themselves)."""
    if task.text is not None and task.text.label_words is not None:
        return task.text.label_words
    return tuple(task.labels or ())


def from_labelled(task: Task, batch: dict, indices: list[int]) -> dict:
    """A batch of read_examples' rows (text, text_pair, labels) in text form (Dataset.map, batched,
    with_indices)."""
    form = task.text
    words = None if task.regression else label_words(task)
    rows = len(batch["labels"])
    sources, targets = [], []
    for i in range(rows):
        sources.append(render(form.prefix, [(name, batch[column][i]) for name, column in form.fields]))
        targets.append(stsb_target(batch["labels"][i]) if task.regression else words[batch["labels"][i]])
    return {
        "source": sources,
        "target": targets,
        "label": [-1 if task.regression else int(v) for v in batch["labels"]],
        "options": [[] for _ in range(rows)],
        "answers": [[t] for t in targets],
        "group": list(indices),
    }


# ---- SuperGLUE: one function per task, from a row of the official JSONL (or the Hub's flat rows) ------


def _label(task: Task, value) -> int:
    """A SuperGLUE label as a class id: booleans (BoolQ, WiC, WSC, MultiRC), names (CB, RTE) or ids."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        if value in ("true", "false"):
            return int(value == "true")
        if value in task.labels:
            return task.labels.index(value)
    if isinstance(value, int) and 0 <= value < len(task.labels):
        return value
    raise InputError("data_dir", f"{task.name}: label {value!r} is not one of {', '.join(task.labels)}")


def _classified(task: Task, source: str, label, group: int) -> dict:
    word = task.text.label_words[_label(task, label)]
    return {"source": source, "target": word, "label": _label(task, label), "options": [], "answers": [word],
            "group": group}


def _boolq(task, row, group):
    return [_classified(task, render("boolq", [("passage", row["passage"]), ("question", row["question"])]),
                        row["label"], group)]


def _cb(task, row, group):
    return [_classified(task, render("cb", [("hypothesis", row["hypothesis"]), ("premise", row["premise"])]),
                        row["label"], group)]


def _copa(task, row, group):
    fields = [("choice1", row["choice1"]), ("choice2", row["choice2"]), ("premise", row["premise"]),
              ("question", row["question"])]
    return [_classified(task, render("copa", fields), row["label"], group)]


def _wic(task, row, group):
    fields = ([("pos", row["pos"])] if row.get("pos") else []) + [
        ("sentence1", row["sentence1"]), ("sentence2", row["sentence2"]), ("word", row["word"])]
    return [_classified(task, render("wic", fields), row["label"], group)]


def _wsc(task, row, group):
    target = row["target"] if "target" in row and isinstance(row["target"], dict) else row  # official: nested
    fields = [("span1_text", target["span1_text"]), ("span2_text", target["span2_text"]), ("text", row["text"])]
    return [_classified(task, render("wsc", fields), row["label"], group)]


def _multirc(task, row, group):
    """Official rows hold a passage with its questions and their answers: one example per answer,
    grouped by question. The Hub's rows are already one per answer (idx names the question)."""
    if isinstance(row.get("passage"), dict):
        out = []
        paragraph = row["passage"]["text"]
        for q, question in enumerate(row["passage"]["questions"]):
            for answer in question["answers"]:
                fields = [("answer", answer["text"]), ("paragraph", paragraph), ("question", question["question"])]
                out.append(_classified(task, render("multirc", fields), answer["label"], group * 1000 + q))
        return out
    fields = [("answer", row["answer"]), ("paragraph", row["paragraph"]), ("question", row["question"])]
    question = row["idx"]["paragraph"] * 1000 + row["idx"]["question"] if isinstance(row.get("idx"), dict) else group
    return [_classified(task, render("multirc", fields), row["label"], question)]


def _record_passage(text: str) -> str:
    """T5's ReCoRD preprocessing: "@highlight" lines become sentences of the passage."""
    text = re.sub(r'(\.|\?|\!|\"|\')\n@highlight\n', r"\1 ", text)
    return re.sub(r"\n@highlight\n", ". ", text)


def _record_example(passage: str, query: str, entities: list[str], answers: list[str], group: int) -> dict:
    entities = list(dict.fromkeys(entities))
    answers = list(dict.fromkeys(answers))
    fields = [("query", query), ("entities", ", ".join(entities)), ("passage", _record_passage(passage))]
    return {"source": render("record", fields), "target": answers[0] if answers else "", "label": -1,
            "options": entities, "answers": answers, "group": group}


def _record(task, row, group):
    """Official rows: a passage with entity spans and its queries (qas) with answer spans; the Hub's:
    one query, the entities and answers as lists of text."""
    if isinstance(row.get("passage"), dict):
        text = row["passage"]["text"]
        entities = [text[e["start"]:e["end"] + 1] for e in row["passage"]["entities"]]
        return [_record_example(text, qa["query"], entities, [a["text"] for a in qa.get("answers") or []], group * 1000 + q)
                for q, qa in enumerate(row["qas"])]
    return [_record_example(row["passage"], row["query"], list(row["entities"]), list(row["answers"]), group)]


SUPERGLUE_FORMS = {"boolq": _boolq, "cb": _cb, "copa": _copa, "wic": _wic, "wsc": _wsc, "multirc": _multirc,
                   "record": _record}


def superglue_examples(task: Task, rows: list[dict], where: str) -> dict:
    """A SuperGLUE split's rows (official JSONL or the Hub's) as text columns; rows without a label
    (the test split's) are dropped. InputError naming the file for a row of another layout."""
    form = SUPERGLUE_FORMS[task.name]
    columns = {name: [] for name in TEXT_COLUMNS}
    for i, row in enumerate(rows):
        if row.get("label") is None and task.name not in ("multirc", "record"):
            continue
        try:
            examples = form(task, row, i)
        except (KeyError, TypeError) as error:
            raise InputError("data_dir", f"{where}: row {i + 1} is not in SuperGLUE's {task.superglue_dir} layout "
                             f"(missing {error}); its fields are {', '.join(map(str, row))}") from None
        for example in examples:
            if task.name == "record" and not example["answers"]:
                continue  # a query without a gold answer (the test split) cannot be trained or scored
            for name in TEXT_COLUMNS:
                columns[name].append(example[name])
    return columns


# ---- the user's own text: prompt and target, or a chat --------------------------------------------------


def prompt_examples(task: Task, rows: list[dict], where: str, tokenizer=None) -> dict:
    """A prompt/target file's rows, or a chat file's (`messages`: its last message, the assistant's,
    is the target; the conversation before it is rendered with the tokenizer's chat template, with
    the generation prompt, as the model will see it when asked)."""
    columns = {name: [] for name in TEXT_COLUMNS}
    for i, row in enumerate(rows):
        if task.messages_field is not None:
            messages = row.get(task.messages_field)
            if isinstance(messages, str):
                messages = json.loads(messages)
            if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
                raise InputError("task", f"{where}: row {i + 1}: {task.messages_field} must be a list of messages "
                                 "ending with the assistant's")
            if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
                raise InputError("task", f"{task.name}: the tokenizer has no chat template to render messages with; "
                                 "give prompt=FIELD,target=FIELD instead")
            source = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            target = messages[-1]["content"]
        else:
            for field in (task.prompt_field, task.target_field):
                if field not in row:
                    raise InputError("task", f"field {field!r} is not in {where}; its fields are {', '.join(map(str, row))}")
            source, target = row[task.prompt_field], row[task.target_field]
        if source is None or target is None or target == "":
            continue
        for name, value in zip(TEXT_COLUMNS, (str(source), str(target), -1, [], [str(target)], i)):
            columns[name].append(value)
    return columns
