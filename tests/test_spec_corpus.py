"""The malformed-spec corpus (tests/specs/): every file is refused by `peft-search run` and by
`peft-search run --dry-run` with exit status 2, an error naming what its entry in EXPECTED.yaml says
(right after the file's path), no traceback, and nothing created: the storage directory does not
exist afterwards. In-process, so the whole corpus takes seconds; no case gets as far as model
weights or Ray (reaching the controller fails the test instead of starting a run)."""

from pathlib import Path

import pytest
import yaml

from conftest import needs_minilm
from peft_search.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "tests" / "specs"
EXPECTED = yaml.safe_load((SPECS / "EXPECTED.yaml").read_text())


def test_the_corpus_is_complete():
    files = {p.name for p in SPECS.glob("*.yaml")} - {"EXPECTED.yaml", "BASE.yaml"}
    assert files == set(EXPECTED), "every corpus file needs its expected field in EXPECTED.yaml, and only those"
    assert len(files) >= 100


@pytest.fixture
def in_repo(monkeypatch):
    """Relative paths in the corpus (tests/specs/models/opt) are relative to the repository; and a
    case that passed every check would start a run: make that a failure instead."""
    from peft_search.search.controller import Controller

    def refuse(*args, **kwargs):
        raise AssertionError("a malformed spec passed every check and reached Controller.create")

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(Controller, "create", refuse)


@needs_minilm
def test_the_base_of_the_corpus_is_valid(in_repo, tmp_path, capsys):
    """Each case is BASE.yaml with one thing wrong, so each fails for its own reason."""
    assert main(["run", str(SPECS / "BASE.yaml"), "--storage", str(tmp_path / "runs"), "--dry-run"]) == 0, capsys.readouterr().err
    assert "every check of `run` passed" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


@needs_minilm
@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("mode", [[], ["--dry-run"]], ids=["run", "dry-run"])
def test_malformed_spec_exits_2_naming_the_field_and_creates_nothing(in_repo, tmp_path, capsys, name, mode):
    path = SPECS / name
    storage = tmp_path / "runs"
    assert main(["run", str(path), "--storage", str(storage), *mode]) == 2
    error = capsys.readouterr().err
    assert f"{path}: {EXPECTED[name]}" in error, error
    assert "Traceback" not in error
    assert not storage.exists()
