"""How the model computes, decided once at start-up: `build_plan` is the only place that chooses.

Two choices, both explicit in config and both resolved here from the device and the model:

- `actor.forward` — the logprob / reference / training passes:
  `plain` one transformers forward over [prompt | response] rows (the reference path);
  `shared_prefix` each distinct prompt runs once and its n responses reuse its key/values
  (npu_rl.prefix); `fused` the same sharing through the fused Llama-family forward (npu_rl.llama);
  `packed` padding-free: only real tokens, each prompt once, attention kept within rows
  (npu_rl.packing; Llama-family models, the fused layers);
  `auto` = packed where the model is supported, else shared_prefix (plain under gradient
  checkpointing, whose backward re-runs transformers' forward without the prompt cache).
  Gradient checkpointing (`model.gradient_checkpointing`) is part of the plan: the fused layers
  recompute each decoder layer in backward themselves (`ComputePlan.checkpoint`), so a Llama-family
  model keeps the packed pass under it; `shared_prefix` cannot and is refused.
  The packed pass's attention backend is chosen here too (`attention_backend`):
  varlen flash attention on CUDA with flash_attn, npu_fusion_attention on Ascend, else exact
  per-segment SDPA.
- `rollout.decoder` — the hf rollout's decode steps: `fast` fused Llama-family decode with a
  preallocated cache (npu_rl.rollout.fast_decode), `plain` the transformers forward with a
  DynamicCache; `auto` = fast where supported.

Linear layers: on the CPU, fp32 matmuls go through oneDNN (npu_rl.kernels.onednn, imported only
here) for decoding and, on request (NPU_RL_ONEDNN_LINEAR=1 or =measure), for training shapes, unless
NPU_RL_ONEDNN_LINEAR=0 or gradient checkpointing is on; elsewhere torch's own.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from npu_rl import llama
from npu_rl.device import Accelerator

if TYPE_CHECKING:
    from npu_rl.config import Config

FORWARD_MODES = ("auto", "plain", "shared_prefix", "fused", "packed")
FUSED_FORWARDS = ("fused", "packed")  # the modes that run npu_rl.llama's layers
DECODER_MODES = ("auto", "plain", "fast")


def _no_pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return weight


def _plain_packed(x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
    return F.linear(x, weight, bias)


@dataclass(frozen=True)
class Linears:
    """The linear-layer kernels of a plan: `linear` for the fused forward, `pack`/`packed_linear`
    for decoding (a weight prepared once, used every step), `around()` wrapped around transformers
    calls so their `F.linear`s take the same kernels."""

    name: str
    linear: Callable[..., torch.Tensor] = F.linear
    pack: Callable[[torch.Tensor, int], torch.Tensor] = _no_pack
    packed_linear: Callable[..., torch.Tensor] = _plain_packed
    around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


TORCH_LINEARS = Linears("torch")


def weight_shapes(model: nn.Module) -> frozenset[tuple[int, int]]:
    """(out, in) of every linear weight the passes multiply by, the fused q/k/v and gate/up included."""
    shapes = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)}
    if llama.supports(model):
        fused = llama.fused_weights(model.model.layers[0])
        shapes |= {tuple(fused["qkv_w"].shape), tuple(fused["gate_up_w"].shape)}
    return frozenset(shapes)


def linears_for(acc: Accelerator, enabled: bool = True, model: nn.Module | None = None) -> Linears:
    """oneDNN linears on a CPU whose torch has them (see npu_rl.kernels.onednn), else torch's.

    Given `model`, the training kernels go through oneDNN only for the weight shapes where a short
    measurement finds it faster on this CPU (`onednn.faster_shapes`); pre-packed decoding always does.
    """
    if not enabled or acc.type != "cpu":
        return TORCH_LINEARS
    from npu_rl.kernels import onednn

    if not onednn.available():
        return TORCH_LINEARS
    shapes = None if model is None else onednn.faster_shapes(weight_shapes(model))
    around = functools.partial(onednn.linear_mode, True, shapes)
    name = "onednn" if shapes is None else f"onednn({len(shapes)}/{len(weight_shapes(model))} shapes)"
    return Linears(name, onednn.linear_for(shapes), onednn.pack, onednn.packed_linear, around)


def attention_backend(device_type: str) -> str:
    """The packed pass's attention (npu_rl.packing): varlen kernels where their package is installed."""
    if device_type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_varlen"
    if device_type == "npu" and importlib.util.find_spec("torch_npu") is not None:
        return "npu_fusion"
    return "segments"


@dataclass(frozen=True)
class ComputePlan:
    """The resolved choices for one model (the policy and the reference each get one)."""

    forward: str  # plain | shared_prefix | fused | packed
    decoder: str  # plain | fast
    linears: Linears = field(default=TORCH_LINEARS)
    attention: str = "segments"  # the packed pass's attention (packing.ATTENTION_BACKENDS)
    checkpoint: bool = False  # the fused layers recompute in backward (gradient checkpointing)
    head_chunk: int = 0  # packed: the head's log-probs this many tokens at a time (npu_rl.token_stats); 0: whole
    offload: bool = False  # the checkpointed layers' inputs wait for backward in host memory (activation offload)

    def describe(self) -> str:
        extra = f" attention={self.attention}" if self.forward == "packed" else ""
        extra += " checkpointed" if self.checkpoint else ""
        extra += " offloaded" if self.offload else ""
        extra += f" head_chunk={self.head_chunk}" if self.head_chunk else ""
        return f"forward={self.forward}{extra} decoder={self.decoder} linears={self.linears.name}"


class ComputeError(ValueError):
    """A requested compute path the model cannot take; the message says which to use instead."""


def build_plan(
    model: nn.Module,
    acc: Accelerator,
    forward: str = "auto",
    decoder: str = "auto",
    gradient_checkpointing: bool = False,
    head_chunk: int = 0,
    activation_offload: bool = False,
) -> ComputePlan:
    """Resolve `actor.forward` / `rollout.decoder` for `model` on `acc` (see the module docstring);
    `head_chunk` (actor.head_chunk_tokens) applies to the packed pass only; `activation_offload`
    (model.activation_offload) needs the fused layers' checkpointing."""
    if forward not in FORWARD_MODES:
        raise ComputeError(f"actor.forward: {forward!r} is not one of {list(FORWARD_MODES)}")
    if decoder not in DECODER_MODES:
        raise ComputeError(f"rollout.decoder: {decoder!r} is not one of {list(DECODER_MODES)}")
    fusable = llama.supports(model, allow_sharded=True)  # the fused passes run through FSDP's hooks
    if forward == "auto":
        forward = "packed" if fusable else ("plain" if gradient_checkpointing else "shared_prefix")
    if forward in FUSED_FORWARDS and not fusable:
        raise ComputeError(
            f"actor.forward={forward}: {type(model).__name__} is not a plain Llama-family model "
            f"({', '.join(llama.SUPPORTED_TYPES)}); use actor.forward=shared_prefix or auto"
        )
    if forward == "shared_prefix" and gradient_checkpointing:
        raise ComputeError(
            "actor.forward=shared_prefix keeps a prompt cache that gradient checkpointing drops; "
            "use actor.forward=auto (packed where the model allows, else plain) with model.gradient_checkpointing=true"
        )
    decodable = llama.supports(model, allow_sharded=True)  # the hf rollout decodes with gathered weights
    if decoder == "auto":
        decoder = "fast" if decodable else "plain"
    if decoder == "fast" and not decodable:
        raise ComputeError(f"rollout.decoder=fast does not support {type(model).__name__}; use plain or auto")
    linears = linears_for(acc, enabled=not gradient_checkpointing, model=model)
    checkpoint = gradient_checkpointing and forward in FUSED_FORWARDS
    if activation_offload and not checkpoint:
        raise ComputeError(
            f"model.activation_offload holds the inputs of npu_rl's checkpointed decoder layers in host memory, "
            f"but actor.forward={forward} runs {type(model).__name__} through transformers' forward (the fused "
            f"layers need a Llama-family model, actor.forward=auto, packed or fused, and "
            f"model.gradient_checkpointing=true); set model.activation_offload=false"
        )
    chunk = head_chunk if forward == "packed" else 0
    return ComputePlan(forward, decoder, linears, attention_backend(acc.type), checkpoint, chunk, activation_offload)


# The plan of the straightforward reference path, against which the fast paths are tested.
REFERENCE_PLAN = ComputePlan("plain", "plain", TORCH_LINEARS)


def policy_plan(model: nn.Module, acc: Accelerator, cfg: Config) -> ComputePlan:
    """The policy's plan as the run's config asks for it: what the trainer runs and `--check` reports."""
    m, actor = cfg.model, cfg.actor
    return build_plan(
        model, acc, actor.forward, cfg.rollout.decoder, m.gradient_checkpointing, actor.head_chunk_tokens,
        m.activation_offload,
    )  # fmt: skip
