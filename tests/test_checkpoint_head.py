"""A checkpoint that already carries a sequence-classification head (docs/design.md, "Backbones":
a checkpoint's own head). On a tiny random-init model of every family, saved with a 2-label head:
a task with another number of labels (3 classes, or a regression) trains a fresh head, the
backbone's weights loaded as before; a 2-label task starts from the checkpoint's head. Then, on
such checkpoints with MiniLM's tokenizer: a trial per family, `peft-search train` with its message,
and a search with a final evaluation, export and `load_peft` on a Llama whose head has the wrong size.
"""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch

from conftest import TINY_BUILDERS, build, needs_minilm
from drivers import cli, write_job

FAMILIES = sorted(TINY_BUILDERS)
HEAD_VALUE = 0.5  # every head tensor of the saved checkpoint: far from any fresh initialisation


def with_head(arch: str, labels: int = 2, vocab: int | None = None):
    """The family's tiny model with a `labels`-output classification head whose every tensor is HEAD_VALUE."""
    from peft_search.peft.backbones import head_modules

    torch.manual_seed(0)
    config = copy.deepcopy(build(arch).config)
    config.num_labels = labels
    if vocab is not None:
        config.vocab_size, config.pad_token_id, config.eos_token_id = vocab, 0, 102
    model = type(build(arch))(config)
    with torch.no_grad():
        for module in head_modules(model):
            for parameter in module.parameters():
                parameter.fill_(HEAD_VALUE)
    return model


def head_tensors(model) -> dict[str, torch.Tensor]:
    from peft_search.peft.backbones import head_modules

    return {f"{i}.{name}": p for i, module in enumerate(head_modules(model)) for name, p in module.named_parameters()}


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_head_of_another_size_is_replaced_and_one_that_fits_is_kept(arch, tmp_path):
    from peft_search.peft import load_backbone
    from peft_search.peft.backbones import checkpoint_head

    saved = with_head(arch)
    saved.save_pretrained(tmp_path)
    assert checkpoint_head(str(tmp_path)).labels == 2
    for labels, problem, fate in ((3, "single_label_classification", "replaced"), (1, "regression", "replaced"),
                                  (2, "single_label_classification", "kept")):
        model = load_backbone(str(tmp_path), num_labels=labels, problem_type=problem)
        assert model.checkpoint_head == {"head": fate, "checkpoint_labels": 2}
        assert model.config.num_labels == labels
        for name, tensor in model.base_model.state_dict().items():  # the backbone loads as before
            assert torch.equal(tensor, saved.base_model.state_dict()[name]), name
        fresh = [not torch.all(p == HEAD_VALUE) for p in head_tensors(model).values() if p.numel() > 1]
        assert all(fresh) if fate == "replaced" else not any(fresh), (labels, fate)  # the whole head, or none of it


def test_a_bare_backbone_has_no_head_to_replace(tmp_path):
    from peft_search.peft import load_backbone
    from peft_search.peft.backbones import checkpoint_head

    with_head("llama").base_model.save_pretrained(tmp_path)
    assert checkpoint_head(str(tmp_path)).labels is None
    assert load_backbone(str(tmp_path), num_labels=3).checkpoint_head == {"head": "new", "checkpoint_labels": None}


def test_the_head_size_comes_from_the_weights_when_the_config_leaves_it_out(tmp_path):
    """transformers writes no `id2label` for default label names, and bart's default is 3 labels: a
    2-label bart reads back as 3 from its config alone."""
    from peft_search.peft import load_backbone
    from peft_search.peft.backbones import checkpoint_head

    with_head("bart").save_pretrained(tmp_path)
    assert "id2label" not in json.loads((tmp_path / "config.json").read_text())
    assert checkpoint_head(str(tmp_path)).labels == 2
    assert load_backbone(str(tmp_path), num_labels=3).checkpoint_head["head"] == "replaced"


# ---- on checkpoints with a tokenizer: trials, the train command, a search ------------------------------


def checkpoint(directory, arch: str, labels: int = 2) -> str:
    from transformers import AutoTokenizer

    from peft_search.peft import resolve_model

    with_head(arch, labels, vocab=30522).save_pretrained(directory)
    AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """train.csv (96 rows) and validation.csv (30): a sentence's class is the number of `good`s in it (0-2)."""
    directory = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(0)
    for split, rows in (("train", 96), ("validation", 30)):
        with open(directory / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence", "label"])
            for _ in range(rows):
                label = int(rng.integers(0, 3))
                words = [*(["good"] * label), *rng.choice(["film", "plot", "dull", "actor", "scene"], size=4)]
                writer.writerow([" ".join(rng.permutation(words)), label])
    return str(directory)


@needs_minilm
@pytest.mark.parametrize("arch", FAMILIES)
def test_a_trial_on_a_checkpoint_whose_head_has_another_size_trains(arch, three_classes, tmp_path):
    from peft_search.train import TrialConfig, run_trial

    config = TrialConfig(model=checkpoint(tmp_path / arch, arch), task="file:text=sentence,label=label",
                         data_dir=three_classes, preset="lora", max_steps=6, batch_size=8, max_length=24,
                         budget_fraction=0.02, cache_dir=str(tmp_path / "cache"))
    lines = []
    result = run_trial(config, log=lines.append)
    assert result.status == "finished", result.error
    assert (result.head, result.checkpoint_head_labels) == ("replaced", 2)
    assert "the checkpoint's 2-label head is replaced by a new 3-label head for file:text=sentence,label=label" in lines


@needs_minilm
def test_train_says_which_head_it_trained_and_keeps_one_that_fits(three_classes, tmp_path):
    from peft_search.train import TrialConfig, run_trial

    # The command: a 2-label checkpoint on the 3-class tweets.
    replaced = cli("train", "--model", checkpoint(tmp_path / "two", "gpt2"), "--task", "tweets", "--preset", "lora",
                   "--max-steps", "4", "--max-length", "32", "--budget", "0.02", "--json")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert "the checkpoint's 2-label head is replaced by a new 3-label head for tweets" in replaced.stderr
    assert json.loads(replaced.stdout)["result"]["head"] == "replaced"
    # A 3-label checkpoint on a 3-class task starts from its own head.
    lines = []
    kept = run_trial(TrialConfig(model=checkpoint(tmp_path / "three", "gpt2", labels=3), task="file:text=sentence,label=label",
                                 data_dir=three_classes, preset="lora", max_steps=2, batch_size=8, max_length=24,
                                 budget_fraction=0.02, cache_dir=str(tmp_path / "cache")), log=lines.append)
    assert kept.status == "finished" and (kept.head, kept.checkpoint_head_labels) == ("kept", 3)
    assert any(line.startswith("the checkpoint's 3-label head is kept for file:") for line in lines)


@needs_minilm
@pytest.mark.timeout(600)
def test_a_search_evaluation_and_export_on_a_checkpoint_with_a_wrong_size_head(tmp_path):
    import pyarrow.parquet as pq

    from peft_search.peft import load_backbone, load_peft
    from peft_search.search.final.export import evaluate_export

    model = checkpoint(tmp_path / "llama", "llama")
    job = write_job(tmp_path, backbone=model, budget_fraction=0.02, racing=None, designs_per_choice=1,
                    stages=[{"component": "strategy.G1", "candidates": ["adapter", "lora"]}],
                    final={"contenders": ["discovered"], "seeds": [0],
                           "fidelity": {"max_steps": 4, "max_train_examples": 64, "max_eval_examples": 32},
                           "tuning": {"trials": 1}},
                    storage=str(tmp_path / "runs"))
    dry = cli("run", str(job), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "the checkpoint's 2-label head will be replaced by a new 3-label head for tweets" in dry.stdout
    result = cli("run", str(job), timeout=500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("the checkpoint's 2-label head is replaced by a new 3-label head for tweets") == 1
    (run,) = (tmp_path / "runs").iterdir()
    rows = pq.read_table(run / "results.parquet").to_pylist() + pq.read_table(run / "final.parquet").to_pylist()
    assert rows and all(r["status"] == "finished" and r["head"] == "replaced" and r["checkpoint_head_labels"] == 2
                        for r in rows)

    exported = cli("export", str(run), "--out", str(tmp_path / "method"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    summary = json.loads((tmp_path / "method" / "export.json").read_text())
    assert (summary["tasks"]["tweets"]["num_labels"], summary["tasks"]["tweets"]["head"]) == (3, "replaced")
    saved = json.loads((tmp_path / "method" / "tweets" / "design.json").read_text())
    assert (saved["num_labels"], saved["head"], saved["checkpoint_labels"]) == (3, "replaced", 2)
    again = evaluate_export(tmp_path / "method", "tweets")  # reloads onto the checkpoint: the same dev score
    assert again["score"] == pytest.approx(summary["tasks"]["tweets"]["score"], abs=1e-6)
    with pytest.raises(Exception, match="num_labels=3"):
        load_peft(load_backbone(model, num_labels=2), tmp_path / "method" / "tweets")
