"""BitFit (docs/design.md, "Modules"): the block's own biases trainable, and a zero bias added to every
bias-free linear layer (T5, llama): a fixed size, whatever the budget."""

from __future__ import annotations

import torch
from torch import nn

from peft_search.peft.strategies.base import Strategy


def add_missing_biases(block: nn.Module) -> None:
    """Give every bias-free linear layer of a block a zero bias (BitFit on T5-like backbones)."""
    for module in list(block.modules()):
        if isinstance(module, nn.Linear) and module.bias is None:
            weight = module.weight
            module.bias = nn.Parameter(torch.zeros(module.out_features, device=weight.device, dtype=weight.dtype))


def bitfit_param_count(block: nn.Module) -> int:
    """Every bias in the block, plus the ones BitFit adds to its bias-free linear layers."""
    existing = sum(p.numel() for name, p in block.named_parameters() if name.split(".")[-1] == "bias")
    added = sum(m.out_features for m in block.modules() if isinstance(m, nn.Linear) and m.bias is None)
    return existing + added


class BitFitStrategy(Strategy):
    name = "bitfit"
    size_field = "bitfit_params"  # its size is its parameter count
    elastic = False
    learning_rate_scale = 2.0  # docs/design.md, "Learning rates"
    # First in its block: it gives every bias-free linear layer a bias, which must not reach the
    # layers other strategies add (LoRA's A and B have none, by design).
    injection_order = 0

    def fixed_cost(self, site) -> int:
        return bitfit_param_count(site.module)

    def inject(self, site, size: int) -> None:
        add_missing_biases(site.module)
        for name, parameter in site.module.named_parameters():
            if name.split(".")[-1] == "bias":
                parameter.requires_grad_(True)

    # Its parameters are the backbone's own tensors, owned by no PEFT module: whatever trainable
    # backbone parameter no other strategy claims (`trainable_parameters_by_strategy`).


BITFIT = BitFitStrategy()
