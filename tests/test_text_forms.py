"""Tasks as text (the text-to-text objective): the T5 paper's forms for GLUE, every SuperGLUE task read
from the official JSONL layout, prompt/target and chat files; the official metrics; bad input named.
No model: reading and rendering only (train/text_forms.py, objectives/text_to_text.read_text_examples)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from peft_search.errors import InputError
from peft_search.train import metrics
from peft_search.train.data import column
from peft_search.train.objectives.text_to_text import parse_number, read_text_examples
from peft_search.train.sources import locate
from peft_search.train.tasks import get_task
from peft_search.train.text_forms import render, stsb_target
from peft_search.stand_ins import write_superglue

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason="../shared/data/glue is not beside the repository")


def read(task_name: str, data_dir, tokenizer=None):
    task = get_task(task_name)
    return read_text_examples(task, locate(task, str(data_dir)), Path("/tmp/peft-search-test-cache"), tokenizer)


@pytest.fixture(scope="module")
def superglue(tmp_path_factory) -> Path:
    return write_superglue(tmp_path_factory.mktemp("superglue"))


def test_t5_forms_put_the_prefix_first_and_the_fields_in_alphabetical_order():
    assert render("mnli", sorted([("premise", "p"), ("hypothesis", "h")])) == "mnli hypothesis: h premise: p"
    assert get_task("mnli").text.fields == (("hypothesis", "text_pair"), ("premise", "text"))
    assert get_task("sst2").text.label_words == ("negative", "positive")
    assert get_task("cola").text.label_words == ("unacceptable", "acceptable")
    # T5's round(5 x score) / 5, halves to even as tf.round: 3.7 -> 3.6, 2.1 -> 2.0
    assert [stsb_target(x) for x in (3.79, 3.7, 0.0, 5.0, 2.1, 2.3)] == ["3.8", "3.6", "0.0", "5.0", "2.0", "2.4"]


@needs_glue
def test_glue_tasks_read_from_the_tsv_layout_become_t5_text():
    task, train, validation = read("mrpc", GLUE)
    row = train[0]
    assert row["source"].startswith("mrpc sentence1: ") and " sentence2: " in row["source"]
    assert row["target"] == ("not_equivalent", "equivalent")[row["label"]] and row["answers"] == [row["target"]]
    task, train, _ = read("stsb", GLUE)
    assert all(t == stsb_target(float(t)) for t in column(train, "target")[:50]) and set(column(train, "label")) == {-1}


@pytest.mark.parametrize("name, layout", [
    ("boolq", r"^boolq passage: .* question: "), ("cb", r"^cb hypothesis: .* premise: "),
    ("copa", r"^copa choice1: .* choice2: .* premise: .* question: (cause|effect)$"),
    ("rte", r"^rte sentence1: .* sentence2: "), ("wic", r"^wic sentence1: .* sentence2: .* word: \w+$"),
    ("wsc", r"^wsc span1_text: \w+ span2_text: he text: "), ("multirc", r"^multirc answer: \w+ paragraph: .* question: "),
    ("record", r"^record query: @placeholder was glad entities: \w+, \w+ passage: "),
])
def test_every_superglue_task_reads_the_official_jsonl_layout(superglue, name, layout):
    import re

    task, train, validation = read(name, superglue)
    assert len(train) >= 24 and len(validation) >= 12
    for row in train:
        assert re.match(layout, row["source"]), row["source"]
    if name == "record":  # one example per query: its entities are the options, the gold answer among them
        assert all(r["target"] in r["options"] and r["answers"] == [r["target"]] for r in train)
        assert ". Alice was glad" in "".join(column(train, "source")) or "was glad" in train[0]["source"]
    elif name == "multirc":  # one example per answer option, grouped by question (2 questions x 3 answers a passage)
        assert len(train) == 24 * 6 and len(set(column(train, "group"))) == 24 * 2
        assert set(column(train, "target")) <= {"False", "True"}
    else:
        assert all(r["target"] == task.text.label_words[r["label"]] for r in train)


def test_superglue_rows_of_another_layout_are_refused_naming_the_file(tmp_path):
    (tmp_path / "BoolQ").mkdir()
    (tmp_path / "BoolQ" / "train.jsonl").write_text(json.dumps({"question": "q", "label": True}) + "\n")
    (tmp_path / "BoolQ" / "val.jsonl").write_text("")
    with pytest.raises(InputError, match=r"train.jsonl: row 1 is not in SuperGLUE's BoolQ layout \(missing 'passage'\)"):
        read("boolq", tmp_path)
    (tmp_path / "BoolQ" / "val.jsonl").unlink()
    with pytest.raises(InputError, match="no val.jsonl"):
        read("boolq", tmp_path)
    with pytest.raises(InputError, match="classification"):
        get_task("boolq").check_objective("classification")


def test_a_prompt_target_file_and_a_chat_file(tmp_path):
    rows = [{"instruction": f"say {w}", "response": w.upper()} for w in ("a", "b", "c", "d")]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 5))
    (tmp_path / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task, train, validation = read("file:prompt=instruction,target=response", tmp_path)
    assert task.open_ended and task.main_metric == "rouge_l"
    assert (train[0]["source"], train[0]["target"], train[0]["label"]) == ("say a", "A", -1)

    class Chat:  # a tokenizer's chat template, as apply_chat_template renders it
        chat_template = "template"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + ("<assistant>" if add_generation_prompt else "")

    chats = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]} for w in "ab"]
    chat_dir = tmp_path / "chat"
    chat_dir.mkdir()
    (chat_dir / "data.jsonl").write_text("\n".join(json.dumps(c) for c in chats * 10))
    task, train, validation = read("file:messages=messages", chat_dir / "data.jsonl", Chat())
    assert len(train) + len(validation) == 20  # one file: 10% held out
    assert train[0]["source"] in ("<user>say a<assistant>", "<user>say b<assistant>") and train[0]["target"] in "ab"
    with pytest.raises(InputError, match="prompt/target/messages"):
        get_task("file:prompt=a,target=b,label=c")
    with pytest.raises(InputError, match="give both"):
        get_task("file:prompt=a")


def test_official_metrics():
    assert metrics.best_token_f1("the Eiffel tower", ["Eiffel Tower", "tower"]) == 1.0
    assert metrics.best_token_f1("Paris France", ["Paris"]) == pytest.approx(2 / 3)
    assert metrics.best_exact_match("The Bush.", ["bush"]) == 1.0
    predictions, labels = np.array([1, 0, 1, 1, 0, 0]), np.array([1, 0, 0, 1, 0, 0])
    groups = np.array([0, 0, 1, 1, 2, 2])
    assert metrics.group_exact_match(predictions, labels, groups) == pytest.approx(2 / 3)
    assert metrics.rouge_l(["the cat sat"], ["the cat sat"]) == 1.0 and metrics.rouge_l(["dog"], ["cat"]) == 0.0
    assert parse_number(" 3.8 ") == 3.8 and parse_number("three") == -1.0 and parse_number("4") == 4.0


def test_superglue_rows_in_the_hubs_flat_layout():
    """aps/super_glue stores MultiRC one row per answer (idx names its question) and ReCoRD one row per
    query with its entities and answers as text, labels as class ids: rendered as the official rows."""
    from peft_search.train.text_forms import superglue_examples

    multirc = [{"paragraph": "Ann saw a cat.", "question": "What did Ann see?", "answer": answer, "label": label,
                "idx": {"paragraph": 3, "question": 1, "answer": a}}
               for a, (answer, label) in enumerate([("a cat", 1), ("a dog", 0)])]
    rows = superglue_examples(get_task("multirc"), multirc, "hub")
    assert rows["target"] == ["True", "False"] and rows["group"] == [3001, 3001]
    assert rows["source"][0] == "multirc answer: a cat paragraph: Ann saw a cat. question: What did Ann see?"
    record = [{"passage": "Ann met Bob.\n@highlight\nAnn was glad", "query": "@placeholder was glad",
               "entities": ["Ann", "Bob", "Ann"], "answers": ["Ann"], "idx": {"passage": 0, "query": 0}}]
    rows = superglue_examples(get_task("record"), record, "hub")
    assert rows["options"] == [["Ann", "Bob"]] and rows["answers"] == [["Ann"]] and rows["target"] == ["Ann"]
    assert rows["source"] == ["record query: @placeholder was glad entities: Ann, Bob passage: Ann met Bob. Ann was glad"]
    boolq = [{"question": "is it", "passage": "It is.", "label": 1, "idx": 0}]
    assert superglue_examples(get_task("boolq"), boolq, "hub")["target"] == ["True"]
