"""The classification objective (docs/design.md, "Objectives"): a task head on the backbone (a
sequence-classification model: a new head, or the checkpoint's own when it fits), cross-entropy over
the task's classes or mean squared error for a regression, scored by the task's metrics on the
head's predictions. What it reads and runs is prepare.py's, batching.py's and evaluation.py's."""

from __future__ import annotations

from peft_search.peft.backbones import check_supported
from peft_search.train.batching import DynamicPadding
from peft_search.train.data import CLASSIFICATION_ENCODING, Encoding
from peft_search.train.evaluation import Evaluation, evaluate_model
from peft_search.train.tasks import CLASSIFICATION, Task


class Classification:
    name = CLASSIFICATION
    language_model = False

    def check(self, task: Task, model_type: str) -> None:
        task.check_objective(self.name)
        check_supported(model_type)

    def load_model(self, model: str, task: Task, meta: bool = False, tokenizer=None, dtype: str = "float32"):
        from peft_search.train.prepare import load_classifier

        return load_classifier(model, task, meta=meta, tokenizer=tokenizer, dtype=dtype)

    def encoding(self, model_type: str) -> Encoding:
        return CLASSIFICATION_ENCODING

    def collate(self, tokenizer, task: Task, model_type: str, evaluation: bool = False):
        return DynamicPadding.for_task(tokenizer, task)

    def evaluate(self, model, loader, accelerator, task, split, tokenizer) -> Evaluation:
        return evaluate_model(model, loader, accelerator, task)


CLASSIFICATION_OBJECTIVE = Classification()
