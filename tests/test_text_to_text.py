"""The text-to-text objective on tiny random-init language models of every family with an LM head (T5
and BART sequence to sequence; Llama, Qwen2 and GPT-2 causal), MiniLM's tokenizer, data the tests
write (a GLUE TSV directory, SuperGLUE's JSONL layout, a prompt/target file).

No pretrained generative model can be fetched here, so these check the mechanics: every family and
strategy trains and scores, generation with the KV cache answers as without it (prefixes included),
tiny T5 and Llama learn a mapping to >= 95% exact match, a saved method loads and answers again; and
the training itself, step for step against HF peft's LoRA (SEQ_2_SEQ_LM, CAUSAL_LM) to 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import needs_minilm
from hf_reference import LossRecorder, hf_lora_twin, our_lora_ranks, train_reference, warmup_steps_for
from peft_search.stand_ins import LANGUAGE_MODEL_FAMILIES, tiny_language_model, write_prompt_target, write_superglue
from peft_search.train import TrialConfig, evaluate_saved, run_trial


pytestmark = needs_minilm

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("language-models")
    return {family: tiny_language_model(root / family, family) for family in LANGUAGE_MODEL_FAMILIES}


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """SST-2 in GLUE's TSV layout: sentence, label (whether it says `good`)."""
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    rng = np.random.default_rng(0)
    words = ("good", "bad", "film", "plot", "long", "dull", "great", "story")
    for name, count in (("train.tsv", 64), ("dev.tsv", 24)):
        lines = ["sentence\tlabel"]
        for _ in range(count):
            sentence = " ".join(rng.choice(words, size=5))
            lines.append(f"{sentence}\t{int('good' in sentence)}")
        (root / "SST-2" / name).write_text("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def superglue_dir(tmp_path_factory):
    return str(write_superglue(tmp_path_factory.mktemp("superglue")))


@pytest.fixture(scope="module")
def mapping_dir(tmp_path_factory):
    """A prompt/target JSONL pair: "colour of apple" -> "red", eight keys."""
    return str(write_prompt_target(tmp_path_factory.mktemp("mapping")))


def trial(model, task, data_dir, tmp_path, **overrides):
    values = dict(model=model, task=task, data_dir=data_dir, preset="s4-t5", objective="text_to_text", max_steps=6,
                  batch_size=4, max_length=64, seed=0, cache_dir=str(tmp_path / "cache"))
    return TrialConfig(**{**values, **overrides})


@pytest.mark.parametrize("family", LANGUAGE_MODEL_FAMILIES)
def test_every_family_trains_a_glue_task_with_all_four_strategies(models, glue_dir, tmp_path, family):
    result = run_trial(trial(models[family], "sst2", glue_dir, tmp_path))
    assert result.status == "finished", result.error
    assert result.head == "lm" and result.head_params == 0
    assert abs(result.realised_params - result.target_params) <= 0.02 * result.target_params
    assert set(result.metrics) >= {"accuracy", "generation_exact_match", "eval_loss", "train_loss"}
    assert result.score == result.metrics["accuracy"] and np.isfinite(result.metrics["eval_loss"])
    assert set(result.learning_rates) == {"adapter", "prefix", "bitfit", "lora"}  # no head group: nothing else trains


@pytest.mark.parametrize("family", LANGUAGE_MODEL_FAMILIES)
def test_every_family_trains_a_glue_task_with_the_newer_strategies(models, glue_dir, tmp_path, family):
    """Issue 39's five, mixed and stacked (tests/test_backbone_families.py's NEWER_STRATEGIES), through the
    language model's own head; the output layer stays frozen and untouched by (IA)3 or VeRA."""
    from test_backbone_families import NEWER_STRATEGIES

    result = run_trial(trial(models[family], "sst2", glue_dir, tmp_path, preset=None, design=NEWER_STRATEGIES,
                             budget_fraction=0.05))
    assert result.status == "finished", result.error
    assert result.head == "lm" and result.head_params == 0
    assert abs(result.realised_params - result.target_params) <= 0.02 * result.target_params
    assert set(result.learning_rates) == {"adapter", "prefix", "bitfit", "lora", "dora", "ia3", "vera", "loha", "rslora"}


@pytest.mark.parametrize("family", ["t5", "bart", "llama", "qwen2", "gpt2"])  # qwen3 and mistral train as llama
@pytest.mark.parametrize("task", ["boolq", "cb", "copa"])
def test_superglue_tasks_train_from_the_official_jsonl_files(models, superglue_dir, tmp_path, family, task):
    result = run_trial(trial(models[family], task, superglue_dir, tmp_path, preset="lora"))
    assert result.status == "finished", result.error
    assert {"cb": "f1", "boolq": "accuracy", "copa": "accuracy"}[task] == next(iter(result.metrics.keys() - {
        "eval_loss", "train_loss", "generation_exact_match", "accuracy"}), "accuracy")


def _injected(model_dir):
    """The family's LM with every strategy in every block (s4-t5), its modules moved off their
    zero initialisation so that each one changes what the model answers."""
    from peft_search.peft import inject
    from peft_search.peft.backbones import load_language_model
    from peft_search.train.presets import preset_design

    model = load_language_model(model_dir).eval()
    inject(model, preset_design("s4-t5"), 0.05)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.5)
    return model


@pytest.mark.parametrize("family", LANGUAGE_MODEL_FAMILIES)
def test_generation_with_the_kv_cache_answers_as_without_it(models, family):
    """Prefix tuning with the cache: every step prepends the prefix to the cached keys and values (self-
    and, for T5 and BART, cross-attention), and greedy answers equal those recomputed from scratch."""
    from transformers import AutoTokenizer

    model = _injected(models[family])
    tokenizer = AutoTokenizer.from_pretrained(models[family])
    causal = family not in ("t5", "bart")
    tokenizer.padding_side = "left" if causal else "right"
    inputs = tokenizer(["colour of apple", "the river is long and wide"], return_tensors="pt", padding=True,
                       return_token_type_ids=False)
    settings = dict(max_new_tokens=8, do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        cached = model.generate(**inputs, use_cache=True, output_scores=True, return_dict_in_generate=True, **settings)
        uncached = model.generate(**inputs, use_cache=False, **settings)
        for module in model.modules():  # without the prefixes the scores change: they were in use
            if hasattr(module, "peft_prefix"):
                del module.peft_prefix
        without_prefix = model.generate(**inputs, use_cache=True, output_scores=True, return_dict_in_generate=True,
                                        **settings)
    assert torch.equal(cached.sequences, uncached)
    assert not torch.allclose(cached.scores[0], without_prefix.scores[0], atol=1e-3)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_tiny_t5_and_llama_learn_a_text_to_text_mapping(models, mapping_dir, tmp_path, family):
    config = trial(models[family], "file:prompt=prompt,target=target", mapping_dir, tmp_path, preset="lora",
                   budget_fraction=0.05, learning_rate=0.01, max_steps=150, batch_size=16, max_length=32)
    result = run_trial(config)
    assert result.status == "finished", result.error
    assert result.metrics["generation_exact_match"] >= 0.95 and result.score >= 0.95  # ROUGE-L, the main metric
    assert not result.collapsed


def test_two_workers_score_as_one(models, superglue_dir, tmp_path):
    """With Ray Train workers each scores its share of the dev examples; gathered, every metric and the
    eval loss equal one worker's (the loader's padding duplicates dropped)."""
    import ray

    config = trial(models["t5"], "copa", superglue_dir, tmp_path, preset="lora")
    one = run_trial(config)
    two = run_trial(TrialConfig(**{**config.to_dict(), "workers": 2}))
    ray.shutdown()
    assert one.status == two.status == "finished", two.error
    assert two.metrics == pytest.approx(one.metrics, abs=1e-5)


def test_a_saved_method_loads_and_answers_again(models, superglue_dir, tmp_path):
    from peft_search import load_backbone, load_peft
    from peft_search.errors import InputError

    config = trial(models["t5"], "copa", superglue_dir, tmp_path, max_steps=10)
    result = run_trial(config, save_dir=str(tmp_path / "saved"))
    assert result.status == "finished", result.error
    again = evaluate_saved(config, tmp_path / "saved")
    assert again["score"] == result.score and again["eval_loss"] == pytest.approx(result.metrics["eval_loss"], abs=1e-6)
    saved = json.loads((tmp_path / "saved" / "design.json").read_text())
    assert saved["head"] == "lm" and saved["num_labels"] is None

    model = load_backbone(models["t5"], objective="text_to_text")
    load_peft(model, tmp_path / "saved")
    answer = model.generate(input_ids=torch.tensor([[101, 2000, 102]]), max_new_tokens=3)
    assert answer.shape[0] == 1
    with pytest.raises(InputError, match="objective=text_to_text"):
        load_peft(load_backbone(models["t5"], num_labels=2), tmp_path / "saved")  # a classifier of the same family


def test_bad_input_is_refused_naming_the_field(models, superglue_dir, tmp_path, run_cli):
    out = run_cli("train", "--model", "minilm", "--task", "sst2", "--preset", "lora", "--objective", "text_to_text")
    assert out.returncode == 2 and "objective: text_to_text needs a backbone with a language-modelling head" in out.stderr
    out = run_cli("train", "--model", models["t5"], "--task", "boolq", "--data-dir", superglue_dir, "--preset", "lora")
    assert out.returncode == 2 and "objective: task boolq trains with text_to_text only" in out.stderr
    bare = tmp_path / "bare-llama"
    from transformers import AutoModel

    AutoModel.from_pretrained(models["llama"], tie_word_embeddings=False).save_pretrained(bare)  # no LM head saved
    (bare / "tokenizer.json").write_bytes((__import__("pathlib").Path(models["llama"]) / "tokenizer.json").read_bytes())
    for name in ("tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        source = __import__("pathlib").Path(models["llama"]) / name
        if source.is_file():
            (bare / name).write_bytes(source.read_bytes())
    out = run_cli("train", "--model", str(bare), "--task", "copa", "--data-dir", superglue_dir, "--preset", "lora",
                  "--objective", "text_to_text", "--max-steps", "1")
    assert out.returncode == 2 and "saved without its language-modelling head" in out.stderr


# ---- step for step against HF peft ---------------------------------------------------------------


@pytest.mark.parametrize("family, task_type", [("t5", "SEQ_2_SEQ_LM"), ("llama", "CAUSAL_LM")])
def test_our_lora_trains_as_hf_peft_lora_step_for_step(models, mapping_dir, tmp_path, family, task_type):
    """Our injected LoRA and HF peft's twin (the same projections, ranks and scale; our A and B copied
    in; the frozen LM head shared by construction), the same batches from our loader and the same RNG
    state: the loss of every step agrees to 1e-5, and so do the logits after training."""
    from peft_search.peft.backbones import load_language_model
    from peft_search.train.batching import evaluation_loader, training_loader
    from peft_search.train.loop import train_worker
    from peft_search.train.objectives import get_objective
    from peft_search.train.prepare import prepare

    config = trial(models[family], "file:prompt=prompt,target=target", mapping_dir, tmp_path, preset="lora",
                   budget_fraction=0.02, learning_rate=3e-3, max_steps=30, batch_size=8, max_length=32, seed=3)
    prepared = prepare(config)
    ranks = our_lora_ranks(prepared.model)
    assert len(ranks) >= 8 and len(set(ranks.values())) > 1  # uneven ranks: rank_pattern used
    reference = hf_lora_twin(load_language_model(config.model), ours=prepared.model, task_type=task_type)
    assert sum(p.numel() for p in reference.parameters() if p.requires_grad) == prepared.counts["realised_params"]

    recorder = LossRecorder(prepared.model)
    torch.manual_seed(1234)
    outcome = train_worker(config, prepared)
    recorder.remove()
    assert outcome["status"] == "finished", outcome.get("error")
    objective = get_objective("text_to_text")
    collate = objective.collate(prepared.tokenizer, prepared.data.task, family)
    loader = training_loader(prepared.data.train, prepared.tokenizer, prepared.data.task, config.batch_size, config.seed,
                             collate=collate)
    torch.manual_seed(1234)
    theirs = train_reference(reference, loader, lr=config.base_learning_rate, total_steps=config.max_steps,
                             warmup_steps=warmup_steps_for(config.max_steps, config.warmup_ratio))
    assert len(recorder.losses) == len(theirs) == config.max_steps
    np.testing.assert_allclose(recorder.losses, theirs, rtol=1e-5, atol=1e-5)
    assert recorder.losses[-1] < recorder.losses[0]

    batch = next(iter(evaluation_loader(prepared.data.validation, prepared.tokenizer, prepared.data.task, 8,
                                        collate=collate)))
    with torch.no_grad():
        prepared.model.eval()
        reference.eval()
        ours = prepared.model(**batch).logits
        expected = reference(**batch).logits
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_a_file_tasks_label_words_survive_the_token_cache(models, tmp_path):
    """A classification file task in text form: its label names are read from the data, and a second
    trial that takes the tokenised splits from the cache still ranks them (the same metrics)."""
    import csv

    for split, rows in (("train", 40), ("validation", 12)):
        with open(tmp_path / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["review", "stars"])
            for i in range(rows):
                writer.writerow([f"a {'good' if i % 2 else 'poor'} film", "high" if i % 2 else "low"])
    config = trial(models["t5"], "file:text=review,label=stars", str(tmp_path), tmp_path, preset="lora")
    first, second = run_trial(config), run_trial(config)
    assert first.status == second.status == "finished", first.error
    assert first.metrics == second.metrics and set(first.metrics) >= {"accuracy", "f1"}
