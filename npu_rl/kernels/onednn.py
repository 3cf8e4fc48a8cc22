"""fp32 linear layers on the CPU through oneDNN instead of the BLAS torch uses by default.

torch runs a CPU fp32 `F.linear` on MKL's sgemm. On the 2-core AMD EPYC (Zen, AVX-512) this
project is measured on, sgemm reaches ~115 GFLOP/s per core on the policy's matmuls (MKL is not
tuned for AMD CPUs) where oneDNN, also inside every torch CPU build, reaches ~250; and for a few
rows (decoding) a matmul against a weight pre-packed once for oneDNN takes a third of sgemm's time.

`linear` (and, around transformers code, `linear_mode()`) sends every eligible linear (CPU, fp32,
plain tensors) through `OneDNNLinear`, whose backward uses oneDNN too; anything else is left to
torch. Results match sgemm to fp32 rounding (another summation order). NPU_RL_ONEDNN_LINEAR=0
turns it off. Only `npu_rl.compute` imports this module, when the run's device is the CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode


def available() -> bool:
    """oneDNN is in this torch build and not turned off by NPU_RL_ONEDNN_LINEAR=0."""
    return (
        os.environ.get("NPU_RL_ONEDNN_LINEAR", "1") != "0"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """CPU fp32 plain tensors only: sharded (DTensor), quantised or accelerator tensors keep torch's path."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu" for t in tensors) and all(
        t.dtype == torch.float32 for t in tensors
    )


class OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b with oneDNN for the forward and both backward matmuls."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad2d = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad2d, weight.t(), None).view(x.shape)  # grad @ W
        if ctx.needs_input_grad[1]:
            grad_w = _onednn(grad2d.t(), x.reshape(-1, x.shape[-1]).t(), None)  # grad^T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad2d.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` through oneDNN where eligible."""
    if available() and eligible(x, weight, bias):
        return OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class _LinearMode(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, bias = (*args, *([None] * (3 - len(args))))[:3]
            weight = kwargs.get("weight", weight)
            bias = kwargs.get("bias", bias)
            if eligible(x, weight, bias):
                return OneDNNLinear.apply(x, weight, bias)
        return func(*args, **kwargs)


@contextlib.contextmanager
def linear_mode(enabled: bool = True) -> Iterator[None]:
    """Route the eligible `F.linear` calls of the block through oneDNN (no-op when unavailable).

    Not for gradient-checkpointed models: their backward re-runs the forward outside this block.
    """
    if not (enabled and available()):
        yield
        return
    with _LinearMode():
        yield


def pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` reordered once for oneDNN matmuls with about `rows` input rows (decoding)."""
    if available() and eligible(weight, weight):
        return torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    return weight


def packed_linear(
    x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Inference-only linear with a weight from `pack` (`weight` is the original, for the fallback)."""
    if packed is not weight:
        return _onednn(x, packed, bias)
    return F.linear(x, weight, bias)
