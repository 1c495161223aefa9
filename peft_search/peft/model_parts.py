"""Which of a model's parameters are the backbone, the task head, and a language model's own output
layer (docs/design.md, "Budget" and "Objectives"). Budget, injection and the optimiser's groups all
read these two functions, so a classifier and a language model of one family count the same
backbone.

- The backbone is `model.base_model`: the pretrained model without its task head. A language model
  whose class has no separate base model (T5's `T5ForConditionalGeneration`) is its own base model.
- A language model's output layer (`get_output_embeddings()`) belongs to the pretrained model: it is
  frozen and never counted in the budget's base. Tied to the input embedding (T5, BART, GPT-2) it is
  that embedding, counted once as part of the backbone, as in the family's classifier; untied (Llama,
  T5 v1.1) it is left out of the count, so the budget does not grow with the vocabulary twice.
- Everything else (a classifier's head) is the task head: trained, reported apart.
Imports torch only through the model it is given.
"""

from __future__ import annotations


def output_layer_ids(model) -> set[int]:
    """The ids of a language model's own output-layer parameters that are not also its input
    embedding (untied); empty for a classifier or a tied output layer."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None:
        return set()
    inputs = {id(p) for p in model.get_input_embeddings().parameters()}
    return {id(p) for p in output.parameters() if id(p) not in inputs}


def backbone_parameters(model) -> list:
    """The pretrained backbone's parameters, whose count sets the budget (see the module's docstring)."""
    untied = output_layer_ids(model)
    return [p for p in model.base_model.parameters() if id(p) not in untied]
