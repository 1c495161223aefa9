"""What one trial holds in accelerator memory, estimated from the backbone's config before anything
loads (docs/design.md, "Memory per trial"), for `run --dry-run` and for packing trials on a GPU.

- Weights: every backbone parameter in `backbone_dtype`, the trainable ones (PEFT modules, head) in
  float32: exact.
- Training state of the trainable parameters: a float32 gradient and AdamW's two float32 moments,
  12 bytes each: exact.
- Activations kept for the backward pass: the per-block formula of Korthikanti et al. (2022),
  "Reducing Activation Recomputation in Large Transformer Models", sbh(34 + 5as/h) bytes at 16 bits
  for s tokens, batch b, width h, a heads and a 4h feed-forward, written here for any feed-forward
  width f and for gated ones (llama), with deberta-v2's two position score maps. Twice that in fp32; under bf16/fp16 autocast 0.85x the fp32
  figure (autocast keeps norms and softmax in fp32: measured on this machine's CPU). With gradient
  checkpointing each block keeps only its input, plus one block recomputed at a time. Eager
  attention keeps the a s^2 probabilities; fused kernels on a GPU (SDPA's flash and efficient
  paths) do not, so there it is an upper bound for that term. Checked against the bytes autograd
  saves on every family (tests/test_trial_memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TRAINING_STATE_BYTES = 12  # per trainable parameter: float32 gradient + AdamW's two float32 moments
AUTOCAST_ACTIVATION_FACTOR = 0.85  # of fp32's activations under bf16/fp16 autocast (norms, softmax stay fp32)
GATED_FEED_FORWARD = frozenset({"llama", "qwen2", "qwen3", "mistral"})
GIB = 2**30
LOGITS_BYTES = 4  # per target position and vocabulary word: the float32 log-softmax cross-entropy keeps (measured)


@dataclass(frozen=True)
class TrialMemory:
    weights_bytes: int
    training_state_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.training_state_bytes + self.activation_bytes

    def describe(self) -> str:
        return (f"about {self.total_bytes / GIB:.2f} GiB per trial: weights {self.weights_bytes / GIB:.2f} + gradients "
                f"and optimiser state {self.training_state_bytes / GIB:.2f} + activations {self.activation_bytes / GIB:.2f}")


def feed_forward_width(config) -> int:
    for name in ("intermediate_size", "d_ff", "encoder_ffn_dim", "d_inner", "n_inner"):
        width = getattr(config, name, None)
        if width:
            return int(width)
    return 4 * config.hidden_size  # gpt2's n_inner: None means 4 x n_embd


def block_activation_bytes(config, batch_size: int, length: int) -> int:
    """One block's activations at 16 bits (Korthikanti et al.'s 34 sbh + 5 a s^2 b, with the
    feed-forward's 19 sbh written as 3 sbh + 4 sbf, plus 4 sbf more for a gated feed-forward)."""
    tokens = batch_size * length
    hidden, heads, width = config.hidden_size, config.num_attention_heads, feed_forward_width(config)
    feed_forward = 3 * tokens * hidden + 4 * tokens * width * (2 if config.model_type in GATED_FEED_FORWARD else 1)
    scores = 5 * heads * length * length * batch_size
    if config.model_type == "deberta-v2" and getattr(config, "relative_attention", False):
        scores *= 2  # disentangled attention keeps its content-to-position and position-to-content scores too
    return 15 * tokens * hidden + scores + feed_forward


def estimate_trial_memory(
    config, *, backbone_params: int, trainable_params: int, num_blocks: int, batch_size: int, max_length: int,
    backbone_dtype: str = "float32", precision: str = "fp32", gradient_checkpointing: bool = False,
    vocabulary_logits: bool = False,
) -> TrialMemory:
    """One worker's memory for a trial that adds `trainable_params` (PEFT modules and head, float32)
    to a backbone of `backbone_params`, at `batch_size` examples of `max_length` tokens per worker.
    BitFit's biases are the backbone's own tensors: counted in its dtype (a few kilobytes off).
    `vocabulary_logits` (the text-to-text objective): the language-modelling head's scores over the
    vocabulary at every target position, at most `max_length` per example: cross-entropy keeps their
    float32 log-softmax for the backward pass (4 bytes per position and word, autocast or not: it runs
    in float32; no checkpointing saves them; tests/test_trial_memory.py measures it)."""
    weights = backbone_params * BYTES[backbone_dtype] + trainable_params * BYTES["float32"]
    block = block_activation_bytes(config, batch_size, max_length)
    factor = 2 * (AUTOCAST_ACTIVATION_FACTOR if precision in ("bf16", "fp16") else 1.0)  # x2: fp32 is 4 bytes
    if gradient_checkpointing:
        kept = num_blocks * 2 * batch_size * max_length * config.hidden_size + block  # each block's input + one live
    else:
        kept = num_blocks * block
    logits = LOGITS_BYTES * batch_size * max_length * config.vocab_size if vocabulary_logits else 0
    return TrialMemory(weights, trainable_params * TRAINING_STATE_BYTES, int(kept * factor) + logits)
