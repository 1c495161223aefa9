"""`StoragePath` on a local disk and on a real S3 server (moto's, on 127.0.0.1): the same calls give
the same answers; writes are whole objects; bad storage is refused naming `storage`, creating nothing."""

from __future__ import annotations

import os

import pytest
from object_store import aws_environment, create_bucket, environment, moto_server

from peft_search.errors import InputError
from peft_search.search.storage.paths import LocalStaging, StoragePath
from peft_search.search.storage.records import read_parquet, read_records, write_parquet
from peft_search.search.storage.run_dir import check_storage, require_run, storage_root

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint with the bucket `runs`, its environment set for the module's tests."""
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        create_bucket(endpoint, "runs")
        with environment(aws_environment(endpoint)):
            yield endpoint


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return StoragePath.parse(tmp_path / "store")
    request.getfixturevalue("s3")
    return StoragePath.parse(f"s3://runs/{os.urandom(4).hex()}")


def test_files_directories_and_globs_read_the_same_everywhere(root):
    record = root / "stages" / "0" / "trials" / "abc.json"
    assert not record.exists() and not (root / "stages").is_dir()
    record.write_text('{"a": 1}')
    (root / "stages" / "0" / "trials" / "abc.started").write_bytes(b"")
    (root / "stages" / "1" / "trials" / "def.json").write_text("{}")
    assert record.is_file() and record.read_text() == '{"a": 1}'
    assert (root / "stages").is_dir() and not (root / "stages").is_file()
    assert [p.name for p in root.glob("stages/*/trials/*.json")] == ["abc.json", "def.json"]
    assert [p.stem for p in root.glob("stages/0/trials/*")] == ["abc", "abc"]
    assert root.glob("stages/9/trials/*.json") == []
    assert record.parent.name == "trials" and record.with_suffix(".started").suffix == ".started"
    record.write_text('{"a": 2}')  # replaced whole
    assert record.read_text() == '{"a": 2}'
    record.unlink()
    record.unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        record.unlink()
    with pytest.raises(FileNotFoundError):
        record.read_bytes()
    (root / "stages").remove_tree()
    assert not (root / "stages").exists()


def test_parquet_and_directories_round_trip(root, tmp_path):
    import pyarrow as pa

    table = pa.table({"trial_id": ["a", "b"], "score": [0.5, None]})
    write_parquet(root / "results.parquet", table)
    assert read_parquet(root / "results.parquet").equals(table)
    with LocalStaging(root / "weights") as local:
        (local / "peft.safetensors").write_bytes(b"\x00" * 1000)
        (local / "sub").mkdir()
        (local / "sub" / "design.json").write_text("{}")
    assert (root / "weights" / "sub" / "design.json").is_file()
    copied = (root / "weights").download(tmp_path / "copy")
    assert (copied / "peft.safetensors").read_bytes() == b"\x00" * 1000 and (copied / "sub" / "design.json").is_file()


def test_finished_records_are_read_once_by_a_caller_that_keeps_them(root):
    """The stage searcher replays the race after every trial: with its cache, a finished record is one
    GET for the whole stage, not one per completed trial; other records are read every time."""
    import json

    def write(name, status, score):
        record = {"stage": 0, "choice": "a", "sample": int(name[-1]), "task": "t", "seed": 0, "trial_id": name,
                  "status": status, "score": score}
        (root / "stages" / "0" / "trials" / f"{name}.json").write_text(json.dumps(record))

    write("r1", "finished", 0.5)
    write("r2", "failed", None)
    finished = {}
    assert [r["trial_id"] for r in read_records(root, 0, finished=finished)] == ["r1", "r2"]
    assert [r["trial_id"] for r in finished.values()] == ["r1"]
    write("r1", "finished", 0.9)  # never happens to a finished record: shows the cache is what is read
    write("r2", "finished", 0.7)  # a record that was not finished is read again
    write("r3", "finished", 0.1)
    again = read_records(root, 0, finished=finished)
    assert [(r["trial_id"], r["score"]) for r in again] == [("r1", 0.5), ("r2", 0.7), ("r3", 0.1)]
    assert [r["score"] for r in read_records(root, 0)] == [0.9, 0.7, 0.1]  # no cache: read from storage


def test_a_failed_staging_uploads_nothing(s3):
    target = StoragePath.parse("s3://runs/failed-staging")
    with pytest.raises(RuntimeError):
        with LocalStaging(target) as local:
            (local / "half.bin").write_bytes(b"x")
            raise RuntimeError("the library failed half way")
    assert not target.exists()


def test_uris_print_as_given_and_parse_back(s3):
    path = StoragePath.parse("s3://runs/prefix/") / "run-1" / "state.json"
    assert str(path) == "s3://runs/prefix/run-1/state.json"
    assert StoragePath.parse(str(path)) == path and path.bucket == "runs"
    assert str(StoragePath.parse("gs://bucket/x")) == "gs://bucket/x"


@pytest.mark.parametrize("bad", ["ftp://host/x", "s3://", "s3:///prefix", "hdfs://namenode/runs"])
def test_unknown_schemes_and_missing_buckets_name_storage(bad):
    with pytest.raises(InputError) as caught:
        storage_root(bad)
    assert caught.value.field == "storage" and "s3://BUCKET/PREFIX" in caught.value.message


def test_a_missing_bucket_is_refused_and_not_created(s3):
    root = storage_root("s3://no-such-bucket/runs")
    with pytest.raises(InputError) as caught:
        check_storage(root)
    assert caught.value.field == "storage" and "bucket 'no-such-bucket' does not exist" in caught.value.message
    assert not StoragePath.parse("s3://no-such-bucket").exists()


def test_no_credentials_is_refused_before_any_request(s3, tmp_path):
    unset = {name: None for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")}
    with environment({**unset, "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}):
        with pytest.raises(InputError) as caught:
            check_storage(storage_root("s3://runs/x"))
    assert caught.value.field == "storage" and "no AWS credentials found" in caught.value.message
    assert "never-printed-secret" not in str(caught.value)  # never a secret in an error


def test_storage_checks_leave_no_object_behind(s3):
    root = storage_root("s3://runs/checked")
    check_storage(root)  # a probe object put and deleted (S3 keeps the prefix as an empty directory)
    assert root.iterdir() == []


def test_require_run_names_the_run(s3):
    with pytest.raises(InputError) as caught:
        require_run("s3://runs/not-a-run")
    assert caught.value.field == "RUN" and "not a peft-search run directory" in caught.value.message


@pytest.mark.parametrize("storage, message", [
    ("ftp://host/runs", "s3://BUCKET/PREFIX"),
    ("s3://no-such-bucket/runs", "bucket 'no-such-bucket' does not exist"),
    ("s3://runs/no-credentials", "no AWS credentials found"),
])
def test_run_with_bad_object_storage_exits_2_naming_storage(s3, tmp_path, capsys, storage, message):
    from peft_search.cli import main

    job = tmp_path / "job.yaml"
    job.write_text("backbone: minilm\ntasks: [tweets]\ndata: {source: bundled}\nstages: [{component: grouping, "
                   "candidates: [uniform, spindle]}]\ndesigns_per_choice: 1\nfidelity: {max_steps: 1}\n")
    unset = {"AWS_ACCESS_KEY_ID": None, "HOME": str(tmp_path)} if "credentials" in message else {}
    before = {str(p) for p in StoragePath.parse("s3://runs").glob("*")}
    with environment(unset):
        assert main(["run", str(job), "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "storage:" in err and message in err and "Traceback" not in err
    assert {str(p) for p in StoragePath.parse("s3://runs").glob("*")} == before  # nothing created
    assert not (tmp_path / "runs").exists()
