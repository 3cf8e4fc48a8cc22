"""Decode steps of Llama-family models (Qwen2, Qwen3, Llama) without the transformers module stack.

On small batches a decode step is dominated by per-operator overhead, not FLOPs: the transformers
forward rebuilds masks and rotary tables, grows the cache with a concatenation and runs each
projection separately, every step. `FastDecoder` runs the same arithmetic with fewer operators:
q/k/v and gate/up projections fused into one matmul each (weights concatenated once per
`generate`), rotary tables computed once for all steps, a key/value cache allocated once for
prompt + max_new_tokens and written in place, and grouped-query attention without repeating the
cache. Prefill stays with the model's own forward (one call), so the prompt is processed exactly
as in training. `npu_rl.compute.build_plan` picks it (rollout.decoder) for the models it supports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache

from npu_rl.compute import Linears
from npu_rl.head import head_weights, is_fp32_head
from npu_rl.llama import fused_weights, rms_norm, rotary_tables, rotate

__all__ = ["FastDecoder"]


class _Linear:
    """A projection's weight as used for decoding: prepared once by the plan's kernels (packed
    for oneDNN on the CPU), used at every step."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int, kernels: Linears) -> None:
        self.weight, self.bias, self.kernels = weight, bias, kernels
        self.packed = kernels.pack(weight, rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.packed_linear(x, self.packed, self.weight, self.bias)


@dataclass
class _Layer:
    """One decoder layer's weights, projections fused and packed."""

    ln_in: torch.Tensor
    ln_post: torch.Tensor
    qkv: _Linear
    o: _Linear
    gate_up: _Linear
    down: _Linear
    q_norm: torch.Tensor | None  # Qwen3 normalises each head's q and k before the rotation
    k_norm: torch.Tensor | None

    @classmethod
    def of(cls, layer: nn.Module, rows: int, kernels: Linears) -> _Layer:
        w = fused_weights(layer)
        return cls(
            ln_in=layer.input_layernorm.weight,
            ln_post=layer.post_attention_layernorm.weight,
            qkv=_Linear(w["qkv_w"], w["qkv_b"], rows, kernels),
            o=_Linear(w["o_w"], w["o_b"], rows, kernels),
            gate_up=_Linear(w["gate_up_w"], w["gate_up_b"], rows, kernels),
            down=_Linear(w["down_w"], w["down_b"], rows, kernels),
            q_norm=w["q_norm"],
            k_norm=w["k_norm"],
        )


class FastDecoder:
    """Decoding state of one `generate` chunk: fused weights, KV buffers, rotary tables, mask."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, rows: int, kernels: Linears) -> None:
        cfg = model.config
        self.model = model
        self.eps = cfg.rms_norm_eps
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight
        # An fp32 head (npu_rl.head) multiplies the same bf16 values in fp32: its weight is converted once here
        self.head_fp32 = is_fp32_head(model)
        self.lm_head = _Linear(*head_weights(model), rows, kernels)
        self.layers = [_Layer.of(layer, rows, kernels) for layer in inner.layers]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @torch.no_grad()
    def start(
        self, cache: DynamicCache, repeats: int, prompt_mask: torch.Tensor, positions: torch.Tensor, max_new: int
    ) -> None:
        """Take the prefill's cache (one row per prompt) into buffers of `repeats` rows per prompt.

        `positions` [rows, max_new] are the rotary positions of the tokens fed at each decode step.
        """
        rows, prompt_width = prompt_mask.shape[0] * repeats, prompt_mask.shape[1]
        length = prompt_width + max_new
        for layer in range(len(self.layers)):
            k, v = cache.layers[layer].keys, cache.layers[layer].values
            kbuf = k.new_empty(rows, k.shape[1], length, k.shape[3])
            vbuf = v.new_empty(rows, v.shape[1], length, v.shape[3])
            kbuf[:, :, :prompt_width] = k.repeat_interleave(repeats, dim=0)
            vbuf[:, :, :prompt_width] = v.repeat_interleave(repeats, dim=0)
            self.keys.append(kbuf)
            self.values.append(vbuf)
        self.prompt_width = prompt_width
        mask = torch.ones(rows, length, dtype=torch.bool, device=prompt_mask.device)
        mask[:, :prompt_width] = prompt_mask.bool().repeat_interleave(repeats, dim=0)
        dtype = self.keys[0].dtype
        self.bias = torch.zeros(rows, 1, 1, length, dtype=dtype, device=mask.device).masked_fill(
            ~mask[:, None, None, :], torch.finfo(dtype).min
        )
        cos, sin = rotary_tables(self.model, self.keys[0], positions)
        self.cos, self.sin = cos[:, :, None, :], sin[:, :, None, :]

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows `keep` (finished sequences leave the decode batch)."""
        self.keys = [k[keep] for k in self.keys]
        self.values = [v[keep] for v in self.values]
        self.bias, self.cos, self.sin = self.bias[keep], self.cos[keep], self.sin[keep]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Logits [rows, vocab] after feeding `tokens` [rows] as decode step `step` (0-based)."""
        rows, hd, heads, kv = tokens.shape[0], self.head_dim, self.heads, self.kv_heads
        col = self.prompt_width + step
        cos, sin = self.cos[:, step], self.sin[:, step]
        bias = self.bias[..., : col + 1]
        h = F.embedding(tokens, self.embed)
        for i, w in enumerate(self.layers):
            x = rms_norm(h, w.ln_in, self.eps)
            qkv = w.qkv(x)
            qk = qkv[:, : (heads + kv) * hd].view(rows, heads + kv, hd)
            if w.q_norm is not None:
                qk = torch.cat(
                    [rms_norm(qk[:, :heads], w.q_norm, self.eps), rms_norm(qk[:, heads:], w.k_norm, self.eps)], 1
                )
            qk = rotate(qk, cos, sin)
            self.keys[i][:, :, col] = qk[:, heads:]
            self.values[i][:, :, col] = qkv[:, (heads + kv) * hd :].view(rows, kv, hd)
            q = qk[:, :heads].reshape(rows, kv, heads // kv, hd)  # query head j uses kv head j // group
            attn = F.scaled_dot_product_attention(
                q, self.keys[i][:, :, : col + 1], self.values[i][:, :, : col + 1], attn_mask=bias
            )
            h = h + w.o(attn.reshape(rows, heads * hd))
            x = rms_norm(h, w.ln_post, self.eps)
            gate, up = w.gate_up(x).chunk(2, dim=-1)
            h = h + w.down(F.silu(gate) * up)
        h = rms_norm(h, self.final_norm, self.eps)
        return self.lm_head(h.float() if self.head_fp32 else h)
