"""The text-to-text objective (docs/design.md, "Objectives"): a task's examples as source and target
texts (text_forms.py), trained through the backbone's own language-modelling head, frozen and still
tied where the family ties it.

- Sequence to sequence (T5, BART): the encoder reads the source; the decoder is trained to write the
  target (teacher forcing, cross-entropy over the target's tokens), as the T5 paper trains.
- Causal (decoder-only): one sequence, the prompt then the response and the end-of-sequence token;
  the loss covers the response only (prompt positions are labelled -100). The prompt keeps its last
  tokens when the pair is longer than max_length, the response at most half of max_length.

Scoring (`evaluate`), on the validation split:
- a task with a label set (its label words, or an example's own options: ReCoRD's entities) is
  scored by rank classification: each option's log-likelihood as the target, every option of a batch
  in one forward (the encoder run once per example for seq2seq), the most likely option predicted;
- every example is also answered by greedy generation (the KV cache on), and its exact match with
  the target is recorded (`generation_exact_match`); STS-B's answer is parsed as a number (an
  unparsable one counts as -1, outside the 0 to 5 scale: wrong, as T5's postprocessor has it), and an
  open-ended task (prompt/target) is scored by ROUGE-L (Google's `rouge-score`) on it;
- the official metrics (metrics.py): MultiRC's F1 over answer options (F1a) and per-question exact
  match, ReCoRD's token F1 and exact match against the best gold answer;
- `eval_loss`: the mean cross-entropy per target token.
A trial is collapsed when it gives the same answer to every example (docs/design.md, "Collapsed trials").
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from peft_search.errors import InputError
from peft_search.peft.backbones import CAUSAL, SEQ2SEQ, language_model_kind, load_language_model
from peft_search.train import metrics as metric_functions
from peft_search.train.data import (
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    SOURCES_DIR,
    STATS,
    Encoding,
    TokenisedSplit,
    column,
    read_examples,
    stratified_indices,
)
from peft_search.train.evaluation import Evaluation
from peft_search.train.sources import quiet_datasets, read_source
from peft_search.train.tasks import TEXT_TO_TEXT, Task
from peft_search.train.text_forms import (
    from_labelled,
    label_words,
    prompt_examples,
    superglue_examples,
)

IGNORE = -100  # transformers' label for a position the loss skips
OPTION_ROWS = 256  # at most this many (example, option) rows in one rank-classification forward
UNPARSABLE = -1.0  # an STS-B answer that is no number: outside the 0-5 scale, so it counts as wrong


# ---- reading and tokenising ----------------------------------------------------------------------------


def _features(task: Task):
    import datasets

    label = datasets.ClassLabel(names=list(task.labels)) if task.labels and not task.regression else datasets.Value("int64")
    return datasets.Features({
        "source": datasets.Value("string"), "target": datasets.Value("string"), "label": label,
        "options": datasets.List(datasets.Value("string")), "answers": datasets.List(datasets.Value("string")),
        "group": datasets.Value("int64"),
    })


def read_text_examples(task: Task, source, root, tokenizer):
    """(task with its label names, train, validation) as text columns (text_forms.TEXT_COLUMNS): a
    SuperGLUE split rendered from its rows, a prompt/target or chat file as it is, and every other
    task through the classification path's reading (labels encoded, unlabelled rows dropped) and then
    its text form. A source without a validation split has one held out, as for classification."""
    import datasets
    from datasets.fingerprint import generate_random_fingerprint

    def table(columns: dict):
        return datasets.Dataset.from_dict(columns, features=_features(task))

    if task.kind == "superglue" or task.open_ended:
        raw = read_source(task, source, root / SOURCES_DIR)
        render = superglue_examples if task.kind == "superglue" else (
            lambda t, rows, where: prompt_examples(t, rows, where, tokenizer))

        def rows(split):
            return split if isinstance(split, list) else split.to_list()

        train = table(render(task, rows(raw.train), raw.where["train"]))
        validation = None if raw.validation is None else table(render(task, rows(raw.validation), raw.where["validation"]))
        if not len(train):
            raise InputError("data_dir", f"{raw.where['train']}: the training set is empty (no labelled rows)")
    else:
        task, labelled_train, labelled_validation = read_examples(task, source, cache_dir=root)
        with quiet_datasets():
            train, validation = (
                split.map(lambda batch, indices: from_labelled(task, batch, indices), batched=True, with_indices=True,
                          remove_columns=split.column_names, features=_features(task), keep_in_memory=True,
                          new_fingerprint=generate_random_fingerprint())
                for split in (labelled_train, labelled_validation))
        return task, train, validation
    if validation is None:
        labels = column(train, "label")
        held = stratified_indices(labels, max(1, round(HOLDOUT_FRACTION * len(labels))), HOLDOUT_SEED)
        validation = train.select(held)
        train = train.select(np.setdiff1d(np.arange(len(labels)), held))
    return task, train, validation


def _tokeniser(kind: str):
    """tokenise(tokenizer, examples, max_length, fingerprint) for a seq2seq or a causal model: the
    columns `input_ids` (the source or prompt) and `target_ids` beside the text columns scoring reads."""
    import datasets

    def encode(tokenizer, batch, max_length):
        if kind == SEQ2SEQ:
            sources = tokenizer(batch["source"], truncation=True, max_length=max_length, return_attention_mask=False)
            targets = tokenizer(text_target=batch["target"], truncation=True, max_length=max_length,
                                return_attention_mask=False)
            return {"input_ids": sources["input_ids"], "target_ids": targets["input_ids"]}
        prompts = tokenizer(batch["source"], return_attention_mask=False, verbose=False)["input_ids"]  # cut below
        responses = tokenizer(batch["target"], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        input_ids, target_ids = [], []
        for prompt, response in zip(prompts, responses):
            response = response[: max_length // 2 - 1] + [tokenizer.eos_token_id]
            input_ids.append(prompt[-(max_length - len(response)):])
            target_ids.append(response)
        return {"input_ids": input_ids, "target_ids": target_ids}

    def tokenise(tokenizer, examples, max_length: int, fingerprint: str):
        if kind == CAUSAL and tokenizer.eos_token_id is None:
            raise InputError("model", "its tokenizer has no end-of-sequence token to end a response with")
        features = datasets.Features({**examples.features, "input_ids": datasets.List(datasets.Value("int32")),
                                      "target_ids": datasets.List(datasets.Value("int32"))})
        tokenised = examples.map(lambda batch: encode(tokenizer, batch, max_length), batched=True, features=features,
                                 keep_in_memory=True, new_fingerprint=fingerprint)
        STATS["tokenised_splits"] += 1
        STATS["tokenised_examples"] += len(examples)
        return tokenised

    return tokenise


def encoding(model_type: str) -> Encoding:
    kind = language_model_kind(model_type)
    return Encoding(f"{TEXT_TO_TEXT}-{kind}", read_text_examples, _tokeniser(kind), label_column="label")


# ---- batches -----------------------------------------------------------------------------------------


def _pad(rows: list, value: int, left: bool = False) -> torch.Tensor:
    length = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            place = out[i, length - len(row):] if left else out[i, :len(row)]
            place.copy_(torch.as_tensor(np.asarray(row, dtype=np.int64)))
    return out


class TextBatches:
    """Batches for training and for the loss half of evaluation (`with_index` adds each example's
    position in its split, for scoring): seq2seq pads sources and targets apart (targets with -100);
    causal concatenates prompt and response, the prompt's labels -100."""

    def __init__(self, pad_id: int, kind: str, with_index: bool = False):
        self.pad_id, self.kind, self.with_index = pad_id, kind, with_index

    def __call__(self, examples):
        if self.kind == SEQ2SEQ:
            input_ids = _pad([e["input_ids"] for e in examples], self.pad_id)
            batch = {"input_ids": input_ids, "attention_mask": (_pad([np.ones(len(e["input_ids"])) for e in examples], 0)),
                     "labels": _pad([e["target_ids"] for e in examples], IGNORE)}
        else:
            sequences = [np.concatenate([e["input_ids"], e["target_ids"]]) for e in examples]
            labels = [np.concatenate([np.full(len(e["input_ids"]), IGNORE), e["target_ids"]]) for e in examples]
            batch = {"input_ids": _pad(sequences, self.pad_id),
                     "attention_mask": _pad([np.ones(len(s)) for s in sequences], 0),
                     "labels": _pad(labels, IGNORE)}
        if self.with_index:
            batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
        return batch


# ---- scoring -----------------------------------------------------------------------------------------


def _option_log_likelihoods(lm, kind: str, rows: list[int], options: list, encoded=None, mask=None,
                            prompts: list | None = None) -> torch.Tensor:
    """Log-likelihood of each option as the target of its example (`rows[i]`: the position in the batch
    of the example option i answers). seq2seq: the decoder over every row from the batch's encoder
    states (`encoded`, computed once); causal: each prompt + option sequence, its prompt unscored."""
    device = next(lm.parameters()).device
    row = torch.tensor(rows, device=device)
    if kind == SEQ2SEQ:
        labels = _pad(options, IGNORE).to(device)
        logits = lm(encoder_outputs=(encoded.last_hidden_state[row],), attention_mask=mask[row], labels=labels).logits
    else:
        sequences = [np.concatenate([prompts[r], o]) for r, o in zip(rows, options)]
        labels = _pad([np.concatenate([np.full(len(prompts[r]), IGNORE), o]) for r, o in zip(rows, options)],
                      IGNORE).to(device)
        logits = lm(input_ids=_pad(sequences, lm.config.pad_token_id).to(device),
                    attention_mask=_pad([np.ones(len(s)) for s in sequences], 0).to(device)).logits
    losses, _ = _token_losses(logits, labels, kind == CAUSAL)
    return -losses


def _option_ids(tokenizer, kind: str, texts: list[str]) -> list[np.ndarray]:
    if kind == SEQ2SEQ:
        return [np.asarray(ids) for ids in tokenizer(text_target=texts, return_attention_mask=False)["input_ids"]]
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [np.asarray(i + [tokenizer.eos_token_id]) for i in ids]


def _rank(lm, kind: str, tokenizer, split: TokenisedSplit, indices: list[int], fixed: list[np.ndarray] | None,
          encoded=None, mask=None) -> list[int]:
    """Rank classification of the batch's examples (`indices` in the split): the index of each one's
    most likely option (the task's label words `fixed`, else the example's own options), every
    option a row of one forward (in chunks of OPTION_ROWS rows)."""
    prompts = None if kind == SEQ2SEQ else [split.example(i)["input_ids"] for i in indices]
    per_example = [fixed if fixed is not None else _option_ids(tokenizer, kind, split.answers.options[i]) for i in indices]
    rows = [(e, o) for e, options in enumerate(per_example) for o in range(len(options))]
    scores = torch.empty(len(rows))
    for start in range(0, len(rows), OPTION_ROWS):
        chunk = rows[start:start + OPTION_ROWS]
        scores[start:start + len(chunk)] = _option_log_likelihoods(
            lm, kind, [e for e, _ in chunk], [per_example[e][o] for e, o in chunk], encoded, mask, prompts).cpu()
    chosen, offset = [], 0
    for options in per_example:
        chosen.append(int(scores[offset:offset + len(options)].argmax()) if len(options) else -1)
        offset += len(options)
    return chosen


def _generate(lm, kind: str, tokenizer, split: TokenisedSplit, indices: list[int], max_new_tokens: int,
              batch: dict, encoded=None) -> torch.Tensor:
    """Greedy answers (the KV cache on) as token ids, padded to max_new_tokens + 1 so that workers'
    answers gather as one tensor: seq2seq from the batch's encoder states (computed once), causal
    from the prompts padded on the left so that every row continues where its prompt ends."""
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                    pad_token_id=tokenizer.pad_token_id)
    device = batch["input_ids"].device
    if kind == SEQ2SEQ:
        out = lm.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], encoder_outputs=encoded,
                          **settings)
    else:
        prompts = [split.example(i)["input_ids"] for i in indices]
        input_ids = _pad(prompts, tokenizer.pad_token_id, left=True).to(device)
        mask = _pad([np.ones(len(p)) for p in prompts], 0, left=True).to(device)
        out = lm.generate(input_ids=input_ids, attention_mask=mask, **settings)[:, input_ids.shape[1]:]
    answers = torch.full((len(indices), max_new_tokens + 1), tokenizer.pad_token_id, dtype=torch.long, device=device)
    answers[:, :out.shape[1]] = out
    return answers


def _token_losses(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the summed cross-entropy of its target tokens, and how many there are."""
    if causal:  # position t predicts token t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE,
                                               reduction="none")
    return losses.sum(-1), (labels != IGNORE).sum(-1)


def parse_number(text: str) -> float:
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*", text)
    return float(match.group(1)) if match else UNPARSABLE


@torch.no_grad()
def evaluate(model, loader, accelerator, task: Task, split: TokenisedSplit, tokenizer) -> Evaluation:
    """Loss, rank classification, greedy answers and the task's metrics over `split` (see the module's
    docstring); every worker scores its share of the examples, gathered before the metrics."""
    model.eval()
    lm = accelerator.unwrap_model(model)
    kind = language_model_kind(lm.config.model_type)
    # Ranked: a label set (its words), or options of each example's own (ReCoRD's entities).
    own_options = any(split.answers.options)
    ranked = own_options or (task.labels is not None and not task.regression)
    fixed = None if own_options or not ranked else _option_ids(tokenizer, kind, list(label_words(task)))
    max_new_tokens = int(np.diff(split.target_offsets).max()) + 1 if len(split) else 1
    gathered = []
    for batch in loader:
        index = batch.pop("index")
        indices = index.tolist()
        encoded, mask = None, batch["attention_mask"]
        if kind == SEQ2SEQ:  # the encoder once per batch: for the loss, every option and the greedy answers
            encoded = lm.get_encoder()(input_ids=batch["input_ids"], attention_mask=mask)
            logits = lm(encoder_outputs=encoded, attention_mask=mask, labels=batch["labels"]).logits
        else:
            logits = model(**batch).logits
        losses, tokens = _token_losses(logits, batch["labels"], kind == CAUSAL)
        choice = _rank(lm, kind, tokenizer, split, indices, fixed, encoded, mask) if ranked else [-1] * len(indices)
        answers = _generate(lm, kind, tokenizer, split, indices, max_new_tokens, batch, encoded)
        # Tensors, gathered as the loader's last batch requires (its padding duplicates dropped).
        gathered.append([t.cpu() for t in accelerator.gather_for_metrics(
            (index.to(accelerator.device), losses, tokens, torch.tensor(choice, device=accelerator.device), answers))])
    index, losses, tokens, choice, answers = (torch.cat(column) for column in zip(*gathered))
    eval_loss = (losses.sum() / tokens.sum()).item() if tokens.sum() else math.nan
    order = index.numpy()
    texts = [text.strip() for text in tokenizer.batch_decode(answers, skip_special_tokens=True)]
    return _scores(task, split, order, choice.numpy(), texts, eval_loss)


def _scores(task: Task, split: TokenisedSplit, order: np.ndarray, chosen: np.ndarray, answers: list[str],
            eval_loss: float) -> Evaluation:
    """The task's metrics from the ranked options and the generated answers (`order`: the examples'
    positions in the split, as gathered)."""
    targets = [split.answers.targets[i] for i in order]
    metrics = {"eval_loss": eval_loss,
               "generation_exact_match": metric_functions.accuracy(np.asarray(answers), np.asarray(targets))}
    baseline = None
    if any(split.answers.options):  # each example's own options, several gold answers (ReCoRD)
        options = [split.answers.options[i] for i in order]
        gold = [split.answers.answers[i] for i in order]
        predicted = [o[c] if c >= 0 else "" for o, c in zip(options, chosen)]
        metrics["token_f1"] = float(np.mean([metric_functions.best_token_f1(p, g) for p, g in zip(predicted, gold)]))
        metrics["exact_match"] = float(np.mean([metric_functions.best_exact_match(p, g) for p, g in zip(predicted, gold)]))
        predictions = np.asarray(predicted)
    elif task.regression:  # STS-B: the generated number
        predictions = np.asarray([parse_number(a) for a in answers])
        truth = np.asarray([float(t) for t in targets])
        metrics.update(metric_functions.compute_metrics(task.metrics, predictions, truth, 1))
        baseline = 0.0  # a constant's correlation (metrics.py)
    elif task.labels is not None:
        labels = split.labels[order]
        predictions = chosen
        if "f1a" in task.metrics:  # answer options grouped by question (MultiRC)
            groups = split.answers.groups[order]
            metrics["f1a"] = metric_functions.f1(predictions, labels, 2)
            metrics["exact_match"] = metric_functions.group_exact_match(predictions, labels, groups)
            constant = metric_functions.constant_prediction(labels, 2)
            baseline = metric_functions.f1(constant, labels, 2)
        else:
            metrics.update(metric_functions.compute_metrics(task.metrics, predictions, labels, len(task.labels)))
            baseline = metric_functions.constant_prediction_metrics((task.main_metric,), labels, len(task.labels))[task.main_metric]
    else:  # open-ended
        metrics["rouge_l"] = metric_functions.rouge_l(answers, targets)
        predictions = np.asarray(answers)
    return Evaluation(metrics, predictions, task.main_metric, baseline)


class TextToText:
    name = TEXT_TO_TEXT
    language_model = True

    def check(self, task: Task, model_type: str) -> None:
        task.check_objective(self.name)
        language_model_kind(model_type)

    def load_model(self, model: str, task: Task, meta: bool = False, tokenizer=None, dtype: str = "float32"):
        return load_language_model(model, meta=meta, pad_token_id=getattr(tokenizer, "pad_token_id", None), dtype=dtype)

    def encoding(self, model_type: str) -> Encoding:
        return encoding(model_type)

    def collate(self, tokenizer, task: Task, model_type: str, evaluation: bool = False):
        return TextBatches(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                           language_model_kind(model_type), with_index=evaluation)

    def evaluate(self, model, loader, accelerator, task, split, tokenizer) -> Evaluation:
        return evaluate(model, loader, accelerator, task, split, tokenizer)


TEXT_TO_TEXT_OBJECTIVE = TextToText()
