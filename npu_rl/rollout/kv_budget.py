"""How many prompts one `generate` call of the hf rollout can take in the device memory that is free.

The hf rollout holds a whole call's KV cache at once: `rollout.micro_batch_size` prompts x n samples x
(prompt + max_new_tokens) positions, preallocated. At the Ascend sample's settings (64 prompts x 8 samples,
512 + 1024 tokens, Qwen2.5-1.5B in bf16) that is ~22.5 GB, more than a 64 GB card has left beside the
trainer's weights, gradients and optimizer states; the run would die in its first rollout. The number of
prompts per call changes nothing but speed (each sample draws from its own prompt's seed, so the same
seeds give the same samples whatever the grouping), so the rollout lowers it to what fits, and says so.

The estimate is a plan, not a measurement: the largest of three moments of one call, all proportional to
its prompts, with HEADROOM of the free memory kept for what it leaves out (allocator fragmentation,
attention workspaces):
- prefill: the prompts' own KV cache and the MLP activations of one layer over every prompt token;
- the move into the decode buffers: the prefill cache beside the buffers of every sample (the plain
  decoder grows its cache by concatenation, so it counts the buffers twice);
- decoding: the buffers beside the sampler's vocabulary-wide fp32 tensors (`sampler_copies` of them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from npu_rl.config.fields import ConfigError
from npu_rl.rollout.base import SamplingParams
from npu_rl.storage import fmt_bytes

HEADROOM = 0.9  # share of the free memory a call plans to use
MLP_COPIES = 3  # gate, up and their product over the prefill's tokens


def sampler_copies(params: SamplingParams) -> int:
    """fp32 [rows, vocab] tensors `hf.sample_next` holds at its peak for these settings, an upper bound:
    each processor's measured share added up (`python bench/sampler_memory.py`: 2 greedy, 4 at T=1 without
    filters, +1 for another temperature, top-k or min-p, +5.5 for top-p's sort, +2.1 for the repetition
    penalty; 12.1 with all of them, planned 16)."""
    if params.temperature <= 0:
        copies = 2
    else:
        copies = 4 + (params.temperature != 1.0) + (params.top_k > 0) + 6 * (params.top_p < 1.0) + (params.min_p > 0)
    return copies + 3 * (params.repetition_penalty != 1.0)


@dataclass(frozen=True)
class DecodeShape:
    """What sizes a call's memory: bytes per token of KV cache (all layers), vocabulary, MLP width and
    the bytes of one activation element."""

    kv_bytes_per_token: int
    vocab: int
    intermediate: int
    element_bytes: int

    @classmethod
    def of(cls, model: nn.Module, dtype: torch.dtype | None = None) -> DecodeShape:
        """`dtype`: the run's compute dtype, where the parameters are not in it yet (`--check`'s meta model)."""
        cfg = model.config
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        element = dtype.itemsize if dtype is not None else next(model.parameters()).element_size()
        return cls(
            kv_bytes_per_token=2 * cfg.num_hidden_layers * kv_heads * head_dim * element,
            vocab=cfg.vocab_size,
            intermediate=getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size,
            element_bytes=element,
        )

    def bytes_per_prompt(self, params: SamplingParams, prompt_len: int, fast: bool) -> int:
        """Peak bytes one prompt and its n samples add to a call (see the module docstring)."""
        prefill_cache = prompt_len * self.kv_bytes_per_token
        buffers = params.n * (prompt_len + params.max_new_tokens) * self.kv_bytes_per_token * (1 if fast else 2)
        mlp = prompt_len * self.intermediate * self.element_bytes * MLP_COPIES
        sampler = params.n * self.vocab * 4 * sampler_copies(params)
        return max(prefill_cache + mlp, prefill_cache + buffers, buffers + sampler)


def prompts_per_call(requested: int, per_prompt: int, free: int) -> int:
    """`requested` prompts per call, or fewer so that their estimated peak fits HEADROOM x `free`;
    a ConfigError when not even one prompt fits."""
    fits = math.floor(HEADROOM * free / per_prompt)
    if fits < 1:
        raise ConfigError(
            f"the hf rollout needs about {fmt_bytes(per_prompt)} for one prompt's samples (KV cache of "
            f"rollout.n x (prompt + rollout.max_new_tokens) tokens and the sampler's vocabulary-wide tensors) "
            f"but {fmt_bytes(free)} of the device are free: lower rollout.n or rollout.max_new_tokens, "
            "free the device (actor.fsdp.optimizer_offload=true, ref.param_offload=true, LoRA), or use "
            "rollout.name=vllm"
        )
    return min(requested, fits)
