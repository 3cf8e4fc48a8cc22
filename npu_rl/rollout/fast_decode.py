"""Decode steps of Llama-family models (Qwen2, Qwen3, Llama) without the transformers module stack.

On small batches a decode step is dominated by per-operator overhead, not FLOPs: the transformers
forward rebuilds masks and rotary tables, grows the cache with a concatenation and runs each
projection separately, every step. `FastDecoder` runs the same arithmetic with fewer operators:
q/k/v and gate/up projections fused into one matmul each (weights concatenated once per
`generate`), rotary tables computed once for all steps, a key/value cache allocated once for
prompt + max_new_tokens and written in place, and grouped-query attention without repeating the
cache. Prefill stays with the model's own forward (one call), so the prompt is processed exactly
as in training. Models it does not recognise use the transformers path (`supports`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache

from npu_rl import cpu_linear

SUPPORTED_TYPES = ("qwen2", "qwen3", "llama")


def supports(model: nn.Module) -> bool:
    """Whether `model` has exactly the structure `FastDecoder` reproduces (else use transformers)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_TYPES:
        return False
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "use_sliding_window", False):
        return False
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return False
    if any(hasattr(p, "device_mesh") for p in model.parameters()):  # sharded (FSDP2 DTensor) weights
        return False
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    return inner is not None and all(hasattr(inner, n) for n in needed) and hasattr(model, "lm_head")


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)  # as transformers does
    return weight * normed.to(x.dtype)


def _cat_or_none(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if all(t is None for t in tensors) else torch.cat([t for t in tensors if t is not None])


class _Linear:
    """A projection's weight as used for decoding: packed for oneDNN on the CPU (see cpu_linear)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> None:
        self.weight, self.bias = weight, bias
        self.packed = cpu_linear.pack(weight, rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_linear.packed_linear(x, self.packed, self.weight, self.bias)


@dataclass
class _Layer:
    """One decoder layer's weights, projections fused."""

    ln_in: torch.Tensor
    ln_post: torch.Tensor
    qkv: _Linear
    o: _Linear
    gate_up: _Linear
    down: _Linear
    q_norm: torch.Tensor | None  # Qwen3 normalises each head's q and k before the rotation
    k_norm: torch.Tensor | None


class FastDecoder:
    """Decoding state of one `generate` chunk: fused weights, KV buffers, rotary tables, mask."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, rows: int) -> None:
        cfg = model.config
        self.model = model
        self.eps = cfg.rms_norm_eps
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight
        self.lm_head = _Linear(model.lm_head.weight, model.lm_head.bias, rows)
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
            self.layers.append(
                _Layer(
                    ln_in=layer.input_layernorm.weight,
                    ln_post=layer.post_attention_layernorm.weight,
                    qkv=_Linear(torch.cat([p.weight for p in qkv]), _cat_or_none([p.bias for p in qkv]), rows),
                    o=_Linear(attn.o_proj.weight, attn.o_proj.bias, rows),
                    gate_up=_Linear(
                        torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                        _cat_or_none([mlp.gate_proj.bias, mlp.up_proj.bias]),
                        rows,
                    ),
                    down=_Linear(mlp.down_proj.weight, mlp.down_proj.bias, rows),
                    q_norm=getattr(getattr(attn, "q_norm", None), "weight", None),
                    k_norm=getattr(getattr(attn, "k_norm", None), "weight", None),
                )
            )
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
        cos, sin = self.model.model.rotary_emb(self.keys[0], positions)
        half = self.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2]: one roll instead of slice/neg/cat.
        self.cos = cos[:, :, None, :]
        self.sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, :, None, :]

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
            x = _rms_norm(h, w.ln_in, self.eps)
            qkv = w.qkv(x)
            qk = qkv[:, : (heads + kv) * hd].view(rows, heads + kv, hd)
            if w.q_norm is not None:
                qk = torch.cat(
                    [_rms_norm(qk[:, :heads], w.q_norm, self.eps), _rms_norm(qk[:, heads:], w.k_norm, self.eps)], 1
                )
            qk = qk * cos + qk.roll(hd // 2, dims=-1) * sin
            self.keys[i][:, :, col] = qk[:, heads:]
            self.values[i][:, :, col] = qkv[:, (heads + kv) * hd :].view(rows, kv, hd)
            q = qk[:, :heads].reshape(rows, kv, heads // kv, hd)  # query head j uses kv head j // group
            attn = F.scaled_dot_product_attention(
                q, self.keys[i][:, :, : col + 1], self.values[i][:, :, : col + 1], attn_mask=bias
            )
            h = h + w.o(attn.reshape(rows, heads * hd))
            x = _rms_norm(h, w.ln_post, self.eps)
            gate, up = w.gate_up(x).chunk(2, dim=-1)
            h = h + w.down(F.silu(gate) * up)
        return self.lm_head(_rms_norm(h, self.final_norm, self.eps))
