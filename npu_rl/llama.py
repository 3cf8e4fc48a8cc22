"""Fused forward of Llama-family models (Qwen2, Qwen3, Llama) for the logprob and training passes.

The transformers forward is written for every model and every attention backend; a GRPO pass on
a CPU pays for that generality in operator count: RMSNorm as eight elementwise operators,
separate q/k/v and gate/up matmuls, the rotation as slices and concatenations, the key/value heads
copied for grouped-query attention, twice as many operators again in backward. Each operator
split over threads is a synchronisation point, which on a small model (or a busy machine) costs
more than the arithmetic. This module runs the same arithmetic with a fraction of the operators:
one fused-RMSNorm, one q/k/v and one gate/up matmul (weights concatenated per call, which autograd
splits back), one rotation over q and k together, grouped-query attention without copies, and
the prompt and response tokens of a shared-prompt batch packed into one matrix for every
projection. Models it does not reproduce exactly go through transformers (`supports`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn import functional as F

from npu_rl.head import head_logits

SUPPORTED_TYPES = ("qwen2", "qwen3", "llama")


def supports(model: nn.Module, allow_sharded: bool = False) -> bool:
    """Whether `model` has exactly the structure reproduced here and in rollout.fast_decode.

    Sharded (FSDP2 DTensor) weights are refused unless `allow_sharded`: the decoder runs while the
    hf rollout holds them gathered, and the fused/packed passes run each layer through `through`.
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_TYPES:
        return False
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "use_sliding_window", False):
        return False
    if getattr(config, "attention_dropout", 0.0) or getattr(config, "pretraining_tp", 1) != 1:
        return False
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return False
    if not allow_sharded and any(hasattr(p, "device_mesh") for p in model.parameters()):
        return False
    if any(".lora_A." in name and ".layers." not in name for name, _ in model.named_parameters()):
        return False  # adapters on the embedding or LM head (npu_rl.lora reads decoder-layer adapters only)
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    head = hasattr(model, "lm_head") or hasattr(model, "value_head")  # a causal LM, or npu_rl.critic's ValueModel
    return inner is not None and all(hasattr(inner, n) for n in needed) and head


def through(module: nn.Module, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """`fn(*args)` run as `module`'s forward, so the hooks on the module run around it: with FSDP2
    that gathers its weights before, reshards after and reduce-scatters their gradients in backward,
    which lets the fused passes read `module`'s weights directly on a sharded model too."""
    module.forward = fn  # an instance attribute: nn.Module.__call__ looks it up before the class's
    try:
        return module(*args)
    finally:
        del module.forward


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, recompute: bool = False) -> torch.Tensor:
    """The transformers RMSNorm (statistics in fp32), one fused operator in fp32. In a lower precision
    the statistics take an fp32 copy of `x`, which backward would keep with the normalised values
    (6 bytes per element in bf16); `recompute` (for layers that are not checkpointed whole) keeps `x`
    alone (2) and recomputes the rest in backward: the same operations, the same bits."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    if recompute and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(_rms_norm_wide, x, weight, eps, use_reentrant=False)
    return _rms_norm_wide(x, weight, eps)


def _rms_norm_wide(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    wide = x.float()  # cast once: two casts would each be kept for backward
    normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def cat_or_none(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if all(t is None for t in tensors) else torch.cat([t for t in tensors if t is not None])


def weight_of(linear: nn.Module) -> torch.Tensor:
    """A projection's effective weight. With LoRA adapters injected by peft (npu_rl.lora: dropout 0,
    no bias) that is W + scaling * B @ A per active adapter, differentiable in A and B, the same map
    as peft's x W^T + scaling * (x A^T) B^T up to fp32 reassociation."""
    lora_a = getattr(linear, "lora_A", None)
    if not lora_a or getattr(linear, "merged", False) or getattr(linear, "disable_adapters", False):
        return linear.weight
    weight = linear.base_layer.weight
    for name in linear.active_adapters:
        if name in lora_a:
            weight = weight + linear.scaling[name] * (linear.lora_B[name].weight @ lora_a[name].weight)
    return weight


Pieces = dict[int, list[torch.Tensor]]  # a concatenation's storage address -> the tensors it joins


def fused_weights(layer: nn.Module, pieces: Pieces | None = None) -> dict[str, torch.Tensor | None]:
    """One decoder layer's weights with q/k/v and gate/up concatenated (differentiable; LoRA adapters
    folded in by `weight_of`). Given `pieces`, each concatenated weight is entered there with its
    parts, for `saved_as_pieces`."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = (attn.q_proj, attn.k_proj, attn.v_proj)

    def joined(parts: list[torch.Tensor]) -> torch.Tensor:
        weight = torch.cat(parts)
        if pieces is not None:
            pieces[weight.untyped_storage().data_ptr()] = parts
        return weight

    return {
        "qkv_w": joined([weight_of(p) for p in qkv]),
        "qkv_b": cat_or_none([p.bias for p in qkv]),
        "o_w": weight_of(attn.o_proj),
        "o_b": attn.o_proj.bias,
        "gate_up_w": joined([weight_of(mlp.gate_proj), weight_of(mlp.up_proj)]),
        "gate_up_b": cat_or_none([mlp.gate_proj.bias, mlp.up_proj.bias]),
        "down_w": weight_of(mlp.down_proj),
        "down_b": mlp.down_proj.bias,
        "q_norm": getattr(getattr(attn, "q_norm", None), "weight", None),
        "k_norm": getattr(getattr(attn, "k_norm", None), "weight", None),
    }


def saved_as_pieces(pieces: Pieces) -> torch.autograd.graph.saved_tensors_hooks:
    """Keep the concatenated weights a layer's matmuls save for backward as their parts, joined again
    when backward reads them. A matmul saves its weight to compute its input's gradient; saved, the
    q/k/v and gate/up concatenations would hold a copy of most of every layer's weights from forward
    to backward: under FSDP2 a full, unsharded copy (Qwen2.5-1.5B: 1.6 GiB, 7B: 8.1 GiB in bf16), where the
    parameters themselves are freed after forward and gathered again for backward. The parts are
    those parameters (or LoRA's effective weights), so nothing is copied; joining them again costs one
    copy per layer in backward and gives the same values, so results are unchanged. Not for
    gradient-checkpointed layers, which keep nothing of the layer but its input."""

    def pack(saved: torch.Tensor) -> object:
        parts = pieces.get(saved.untyped_storage().data_ptr())
        if parts is None:
            return saved
        return parts, saved.shape, saved.stride(), saved.storage_offset()  # the view the matmul saved (W^T)

    def unpack(packed: object) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        parts, shape, stride, offset = packed  # type: ignore[misc]
        return torch.cat(parts).as_strided(shape, stride, offset)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up keeping gate and up for backward, not silu(gate) as well: autograd's pair of
    operators keeps all three, a third more of the MLP's activations (1.5B: 17.5 kB per token per
    layer). Backward recomputes silu(gate) and applies the same formulas as autograd's mul and silu
    backward, so the gradients are the same bits."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad * up, gate), grad * F.silu(gate)


def rotate(qk: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of q and k heads together: rotate_half(x) * sin == roll(x, d/2) * signed_sin."""
    return qk * cos + qk.roll(qk.shape[-1] // 2, dims=-1) * signed_sin


def rotary_tables(model: nn.Module, like: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin) for `positions` [..., S] from the model's own rotary module."""
    cos, sin = model.model.rotary_emb(like, positions)
    half = cos.shape[-1] // 2
    return cos, torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention without repeating k/v: the query heads sharing a kv head become
    extra query rows of it. q [B, H, Q, d], k/v [B, KV, L, d], mask [B, 1, H/KV*Q, L] from `group_mask`."""
    b, heads, queries, dim = q.shape
    kv = k.shape[1]
    out = F.scaled_dot_product_attention(q.reshape(b, kv, heads // kv * queries, dim), k, v, attn_mask=mask)
    return out.view(b, heads, queries, dim)


def group_mask(mask: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, Q, L] boolean mask as the additive bias `grouped_attention` takes (row g*Q + q is query q).

    An additive float bias, not a boolean mask: the CPU attention kernel is markedly faster with it.
    """
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    return bias.repeat(1, groups, 1)[:, None]


def embed(model: nn.Module, ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Embeddings [S, hidden] of packed token ids [S] and their rotary tables ([S, 1, d] each)."""
    emb = model.model.embed_tokens
    h = F.embedding(ids, emb.weight, emb.padding_idx)
    cos, sin = rotary_tables(model, h, positions[None])
    return h, cos[0, :, None], sin[0, :, None]


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def offloaded(device: torch.device) -> torch.autograd.graph.saved_tensors_hooks:
    """Saved tensors go to host memory and come back in backward (torch's save_on_cpu): around a
    non-reentrant checkpoint that is the layer's input alone, which the checkpoint saves through the
    outer hooks, while the layer's own activations go to the checkpoint's hooks and are recomputed.
    On an accelerator the host copies are pinned and asynchronous (stream-ordered, so the device
    memory is reused only after the copy); on the CPU the input stays where it is."""
    return torch.autograd.graph.save_on_cpu(pin_memory=device.type != "cpu", device_type=device.type)


def decoder_stack(
    model: nn.Module,
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    attend: Attend,
    linear: Callable[..., torch.Tensor] = F.linear,
    checkpoint: bool = False,
    offload: bool = False,
) -> torch.Tensor:
    """Every decoder layer and the final norm over packed tokens h [S, hidden].

    `attend(q [S, H, d], k [S, KV, d], v [S, KV, d]) -> [S, H * d]` is the only place that knows
    how the tokens are laid out (which token may see which); everything else is per token.
    `checkpoint` (gradient checkpointing, when gradients are being recorded) keeps only each
    layer's input and re-runs the layer in backward: non-reentrant torch checkpointing inside the
    layer's own call, so FSDP2's hooks stay outside it and the re-run reads gathered weights (the
    order torchtitan applies activation checkpointing and FSDP2 in). `offload` (activation offload,
    with `checkpoint`) keeps those inputs in host memory until backward (`offloaded`).
    """
    cfg, inner = model.config, model.model
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    eps = cfg.rms_norm_eps

    norm = functools.partial(rms_norm, eps=eps, recompute=not checkpoint)  # a checkpointed layer recomputes all

    def run_layer(layer: nn.Module, h: torch.Tensor, pieces: Pieces | None = None) -> torch.Tensor:
        w = fused_weights(layer, pieces)
        x = norm(h, layer.input_layernorm.weight)
        qkv = linear(x, w["qkv_w"], w["qkv_b"])
        qk = qkv[:, : (heads + kv) * dim].view(-1, heads + kv, dim)
        if w["q_norm"] is not None:
            qk = torch.cat([norm(qk[:, :heads], w["q_norm"]), norm(qk[:, heads:], w["k_norm"])], 1)
        qk = rotate(qk, cos, sin)
        v = qkv[:, (heads + kv) * dim :].view(-1, kv, dim)
        h = h + linear(attend(qk[:, :heads], qk[:, heads:], v), w["o_w"], w["o_b"])
        x = norm(h, layer.post_attention_layernorm.weight)
        gate, up = linear(x, w["gate_up_w"], w["gate_up_b"]).chunk(2, dim=-1)
        return h + linear(SwiGLU.apply(gate, up), w["down_w"], w["down_b"])

    if checkpoint and torch.is_grad_enabled():

        def layer_call(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
            with offloaded(h.device) if offload else contextlib.nullcontext():
                return torch.utils.checkpoint.checkpoint(run_layer, layer, h, use_reentrant=False)

    elif torch.is_grad_enabled():

        def layer_call(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
            pieces: Pieces = {}
            with saved_as_pieces(pieces):
                return run_layer(layer, h, pieces)

    else:
        layer_call = run_layer
    for layer in inner.layers:
        h = through(layer, functools.partial(layer_call, layer), h)
    return rms_norm(h, inner.norm.weight, eps, recompute=True)  # outside the layers' checkpoints


def shared_prompt_logits(
    model: nn.Module,
    *args: torch.Tensor,
    linear: Callable[..., torch.Tensor] = F.linear,
    checkpoint: bool = False,
    offload: bool = False,
) -> torch.Tensor:
    """`_shared_prompt_logits` run as the model's forward (see `through`)."""
    fn = functools.partial(_shared_prompt_logits, model, linear=linear, checkpoint=checkpoint, offload=offload)
    return through(model, fn, *args)


def _shared_prompt_logits(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_pos: torch.Tensor,
    tail_ids: torch.Tensor,
    tail_mask: torch.Tensor,
    tail_pos: torch.Tensor,
    group: torch.Tensor,
    linear: Callable[..., torch.Tensor] = F.linear,
    checkpoint: bool = False,
    offload: bool = False,
) -> torch.Tensor:
    """Logits [N, 1 + T, V]: the last prompt token's, then every tail token's.

    Distinct prompts [G, P] (left-padded) run once; tail row i [T] (right-padded) continues prompt
    `group[i]`. Both are packed into one token matrix for the projections; only attention sees
    the two layouts. `linear` is the plan's linear kernel, `checkpoint` its gradient checkpointing and
    `offload` its activation offload (npu_rl.compute).
    """
    cfg = model.config
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    (g, p), (n, t) = prompt_ids.shape, tail_ids.shape
    split = g * p
    ids = torch.cat([prompt_ids.reshape(-1), tail_ids.reshape(-1)])
    h, cos, sin = embed(model, ids, torch.cat([prompt_pos.reshape(-1), tail_pos.reshape(-1)]))

    # Masks: causal over real tokens; a padding query sees itself only (finite, never read).
    prompt_valid, tail_valid = prompt_mask.bool(), tail_mask.bool()
    eye_p = torch.eye(p, dtype=torch.bool, device=h.device)
    causal_p = torch.ones(p, p, dtype=torch.bool, device=h.device).tril()
    pmask = (causal_p & prompt_valid[:, None, :]) | eye_p
    causal_t = torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
    own = (causal_t & tail_valid[:, None, :]) | torch.eye(t, dtype=torch.bool, device=h.device)
    tmask = torch.cat([prompt_valid[group][:, None, :].expand(n, t, p), own], dim=-1)
    pmask, tmask = group_mask(pmask, groups, h.dtype), group_mask(tmask, groups, h.dtype)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        qp, kp, vp = (z[:split].view(g, p, z.shape[1], z.shape[2]).transpose(1, 2) for z in (q, k, v))
        qt, kt, vt = (z[split:].view(n, t, z.shape[1], z.shape[2]).transpose(1, 2) for z in (q, k, v))
        out_p = grouped_attention(qp, kp, vp, pmask)
        out_t = grouped_attention(qt, torch.cat([kp[group], kt], 2), torch.cat([vp[group], vt], 2), tmask)
        width = q.shape[1] * q.shape[2]
        return torch.cat([out_p.transpose(1, 2).reshape(split, width), out_t.transpose(1, 2).reshape(n * t, width)])

    h = decoder_stack(model, h, cos, sin, attend, linear, checkpoint, offload)
    last_prompt = h[:split].view(g, p, -1)[:, -1][group][:, None]
    hidden = torch.cat([last_prompt, h[split:].view(n, t, h.shape[-1])], dim=1)
    return head_logits(model, hidden, linear)
