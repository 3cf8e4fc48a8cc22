"""Tiny random models of several architectures, for tests that compare a fast path with transformers.

Their weights are large (init std 0.25), so attention is far from uniform and a wrong rotation,
mask or cache position changes the logits visibly; with the usual 0.02 init it would hardly matter.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

CONFIGS = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "llama": LlamaConfig, "mistral": MistralConfig}


def sharp_model(kind: str, vocab: int = 512, pad_token_id: int | None = 0) -> torch.nn.Module:
    """Qwen2; Qwen3 (per-head q/k norms); Llama (no biases); Mistral (not fused: transformers path)."""
    config = CONFIGS[kind](
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.25,
        pad_token_id=pad_token_id,
        **({"head_dim": 16} if kind == "qwen3" else {}),
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def rollout_batch(prompts: list[list[int]], responses: torch.Tensor, lengths: torch.Tensor, n: int):
    """A `RolloutBatch` of `n` responses per prompt (prompt-major), as an engine returns it."""
    from npu_rl.data import PromptRecord
    from npu_rl.rollout import RolloutBatch, RolloutOutput
    from npu_rl.rollout.base import grouped

    records = [PromptRecord(i, p, "", [], "test", "0", "math", {}, "test.parquet", i) for i, p in enumerate(prompts)]
    group, sample = grouped(n, len(prompts))
    out = RolloutOutput(responses, torch.zeros(responses.shape), lengths, ["stop"] * len(lengths), group, sample)
    return RolloutBatch.bind(records, out)
