"""Batches: a tokenised split as a torch Dataset, dynamic padding, and the two DataLoaders of a
trial (training: shuffled with the trial's seed; evaluation: longest first, twice the batch).

Every evaluation of a split (after each epoch, and `evaluate_saved` later) builds its loader here,
so it sees the same examples in the same batches. Imports torch, numpy and data.py's types.
"""

from __future__ import annotations

import numpy as np
import torch

from peft_search.train.data import TokenisedSplit
from peft_search.train.tasks import Task

EVAL_BATCH_FACTOR = 2  # evaluation keeps no activations for a backward pass: twice the batch fits


class SplitDataset(torch.utils.data.Dataset):
    def __init__(self, split: TokenisedSplit):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.split.example(int(i))


class DynamicPadding:
    """Pads a batch to its own longest example (not to max_length), after the tokens, or before them
    where the tokenizer pads on the left (xlnet, which classifies from the last position)."""

    def __init__(self, pad_id: int, regression: bool, pad_left: bool = False):
        self.pad_id = pad_id
        self.regression = regression
        self.pad_left = pad_left

    @classmethod
    def for_task(cls, tokenizer, task: Task) -> "DynamicPadding":
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls(pad_id, task.regression, pad_left=tokenizer.padding_side == "left")

    def __call__(self, examples):
        length = max(len(e["input_ids"]) for e in examples)
        n = len(examples)
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        with_types = "token_type_ids" in examples[0]
        token_type_ids = torch.zeros((n, length), dtype=torch.long) if with_types else None
        for i, example in enumerate(examples):
            k = len(example["input_ids"])
            tokens = slice(length - k, length) if self.pad_left else slice(0, k)
            input_ids[i, tokens] = torch.from_numpy(example["input_ids"].astype(np.int64))
            attention_mask[i, tokens] = 1
            if with_types:
                token_type_ids[i, tokens] = torch.from_numpy(example["token_type_ids"].astype(np.int64))
        labels = torch.tensor([e["labels"] for e in examples], dtype=torch.float32 if self.regression else torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if with_types:
            batch["token_type_ids"] = token_type_ids
        return batch


class LengthOrderedSampler(torch.utils.data.Sampler):
    """Evaluation order, longest first: batches of similar length pad little. Order does not change
    the metrics, which are computed over the whole split."""

    def __init__(self, split: TokenisedSplit):
        self.order = np.argsort(-split.lengths(), kind="stable").tolist()

    def __iter__(self):
        return iter(self.order)

    def __len__(self):
        return len(self.order)


def training_loader(split: TokenisedSplit, tokenizer, task: Task, batch_size: int, seed: int, collate=None):
    """Shuffled with its own generator seeded by the trial: the same row, the same data order.
    `collate`: the objective's batches (default: a classifier's, DynamicPadding)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        SplitDataset(split), batch_size=batch_size, shuffle=True, generator=generator,
        collate_fn=collate or DynamicPadding.for_task(tokenizer, task),
    )


def evaluation_loader(split: TokenisedSplit, tokenizer, task: Task, batch_size: int, collate=None):
    """`batch_size` is the trial's training batch; evaluation batches are EVAL_BATCH_FACTOR times it.

    The loader has a generator of its own although it never shuffles: a DataLoader draws a seed on
    every pass, from the global RNG when it has no generator, and the global RNG is what dropout
    draws from. So evaluating between epochs leaves training's dropout masks as they would be
    without it (tests/test_train_equivalence.py trains step for step against a loop that never
    evaluates)."""
    return torch.utils.data.DataLoader(
        SplitDataset(split), batch_size=EVAL_BATCH_FACTOR * batch_size, sampler=LengthOrderedSampler(split),
        collate_fn=collate or DynamicPadding.for_task(tokenizer, task), generator=torch.Generator().manual_seed(0),
    )
