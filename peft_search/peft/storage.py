"""Save and load the trained PEFT state: only the trainable tensors (PEFT modules and task head) as
safetensors, plus the design, its budget plan and the backbone's model type as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save

from peft_search.atomic import write_atomic
from peft_search.errors import InputError
from peft_search.peft.backbones import LM_HEAD
from peft_search.peft.budget import BudgetPlan
from peft_search.peft.inject import InjectionReport, apply_plan

WEIGHTS_FILE = "peft.safetensors"
DESIGN_FILE = "design.json"


def save_peft(model, report: InjectionReport, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}
    language_model = is_language_model(model)
    metadata = {
        "format": "peft-search/1",
        "model_type": model.config.model_type,
        # A classifier's head size; none for a language model trained through its own head (text_to_text).
        "num_labels": None if language_model else model.config.num_labels,
        "design_id": report.design.design_id,
        "realised_params": report.realised_params,
        "head_params": report.head_params,
        # The head it trained: from the checkpoint (kept), or new (a bare backbone's, or replacing the
        # checkpoint's own head of another size: docs/design.md, "Backbones").
        **(getattr(model, "checkpoint_head", None) or {}),
        "plan": report.plan.to_dict(),
    }
    # Weights first, design last: a design.json always has its complete weights beside it.
    write_atomic(directory / WEIGHTS_FILE, save(tensors, metadata={"design_id": report.design.design_id}))
    write_atomic(directory / DESIGN_FILE, json.dumps(metadata, indent=2, sort_keys=True).encode())
    return directory


def is_language_model(model) -> bool:
    """Loaded with its own language-modelling head (the text-to-text objective), not a classifier."""
    return model.get_output_embeddings() is not None


def read_saved_plan(directory: str | Path) -> dict:
    path = Path(directory) / DESIGN_FILE
    if not path.is_file() or not (Path(directory) / WEIGHTS_FILE).is_file():
        raise InputError("peft", f"{directory} holds no saved PEFT state ({DESIGN_FILE} and {WEIGHTS_FILE})")
    return json.loads(path.read_text())


def load_peft(model, directory: str | Path) -> InjectionReport:
    """Inject the saved plan into a fresh backbone `model` and load the saved tensors into it."""
    saved = read_saved_plan(directory)
    if saved["model_type"] != model.config.model_type:
        raise InputError(
            "model", f"the PEFT state was trained on a {saved['model_type']} backbone, not {model.config.model_type}"
        )
    if (saved.get("head") == LM_HEAD) != is_language_model(model):
        trained, given = ("a language model's own head", "a classifier") if saved.get("head") == LM_HEAD else (
            "a classification head", "a language model")
        raise InputError("model", f"the PEFT state was trained through {trained} and this is {given}: load the backbone "
                         f"with objective={'text_to_text' if saved.get('head') == LM_HEAD else 'classification'}")
    if saved.get("num_labels") is not None and saved["num_labels"] != model.config.num_labels:
        raise InputError("model", f"the PEFT state trained a {saved['num_labels']}-output head; load the backbone with "
                         f"num_labels={saved['num_labels']} (it has {model.config.num_labels})")
    report = apply_plan(model, BudgetPlan.from_dict(saved["plan"]))
    tensors = load_file(str(Path(directory) / WEIGHTS_FILE))
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise InputError("peft", f"saved tensors do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    parameters = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if parameters[name].shape != tensor.shape:
            raise InputError("peft", f"{name}: saved shape {tuple(tensor.shape)}, model has {tuple(parameters[name].shape)}")
    model.load_state_dict(tensors, strict=False)
    return report
