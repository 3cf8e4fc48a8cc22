"""fp32 linear layers on the CPU through oneDNN instead of the BLAS torch uses by default.

torch runs a CPU fp32 `F.linear` on MKL's sgemm. On the 2-core AMD EPYC (Zen, AVX-512) this
project is measured on, sgemm reaches ~115 GFLOP/s per core on the policy's matmuls (MKL is not
tuned for AMD CPUs) where oneDNN, also inside every torch CPU build, reaches ~250; and for a few
rows (decoding) a matmul against a weight pre-packed once for oneDNN takes a third of sgemm's time.

`linear` (and, around transformers code, `linear_mode()`) sends every eligible linear (CPU, fp32,
plain tensors) through `OneDNNLinear`, whose backward uses oneDNN too; anything else is left to
torch. Results match sgemm to fp32 rounding (another summation order). Only `npu_rl.compute`
imports this module, when the run's device is the CPU.

Which is faster depends on the CPU: re-measured on the same EPYC, oneDNN's forward + backward is
5-10 % faster at the small model's shapes but 20-30 % slower at the tiny model's narrow ones, and
with AVX2 forced (no AVX-512: MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2) equal to 15 %
slower, while pre-packed decoding stays faster everywhere. So by default training linears keep
torch's sgemm and decoding uses pre-packed oneDNN. A measured choice per weight shape exists
(`faster_shapes`: a short interleaved measurement whose decision is a ratio, oneDNN under 0.95 of
sgemm's time) but only on request: a timing-based choice can differ between a run and its resume,
and then the resumed run is no longer bitwise the uninterrupted one (a test caught exactly that).
NPU_RL_ONEDNN_LINEAR=0 turns oneDNN off, =1 uses it for every shape, =measure measures, unset: sgemm
for training, oneDNN for decoding.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
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


Shapes = frozenset[tuple[int, int]] | None  # weight shapes (out, in) routed to oneDNN; None: every shape
ONEDNN_SHARE = 0.95  # oneDNN is chosen for a shape only below this share of sgemm's time


def _chosen(weight: torch.Tensor, shapes: Shapes) -> bool:
    return shapes is None or tuple(weight.shape) in shapes


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, shapes: Shapes = None
) -> torch.Tensor:
    """`F.linear` through oneDNN where eligible (and, given `shapes`, where that shape was chosen)."""
    if available() and eligible(x, weight, bias) and _chosen(weight, shapes):
        return OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def linear_for(shapes: Shapes) -> Callable[..., torch.Tensor]:
    return functools.partial(linear, shapes=shapes)


def _time_pass(fn: Callable[..., torch.Tensor], x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x, weight, None).backward(grad)
    return time.perf_counter() - start


@functools.cache
def faster_shapes(shapes: frozenset[tuple[int, int]], rows: int = 256, repeats: int = 4) -> frozenset[tuple[int, int]]:
    """The weight shapes whose forward + backward at `rows` input rows is faster through oneDNN than
    through torch's sgemm on this CPU. The two run alternately (they share the machine's noise)
    and the best time of each decides, as a ratio (ONEDNN_SHARE). Cached per set of shapes."""
    mode = os.environ.get("NPU_RL_ONEDNN_LINEAR")
    if mode == "1":
        return shapes
    if mode != "measure":  # the default: reproducible across a run and its resume (see the module docstring)
        return frozenset()
    gen = torch.Generator().manual_seed(0)
    winners = set()
    for out_features, in_features in sorted(shapes):
        x = torch.randn(rows, in_features, generator=gen).requires_grad_()
        weight = torch.randn(out_features, in_features, generator=gen).requires_grad_()
        grad = torch.randn(rows, out_features, generator=gen)
        best = {F.linear: float("inf"), OneDNNLinear.apply: float("inf")}
        for round_ in range(repeats + 1):  # round 0 warms both up
            for fn in best:
                elapsed = _time_pass(fn, x, weight, grad)
                best[fn] = min(best[fn], elapsed) if round_ else best[fn]
        if best[OneDNNLinear.apply] < ONEDNN_SHARE * best[F.linear]:
            winners.add((out_features, in_features))
    return frozenset(winners)


class _LinearMode(TorchFunctionMode):
    def __init__(self, shapes: Shapes) -> None:
        super().__init__()
        self.shapes = shapes

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, bias = (*args, *([None] * (3 - len(args))))[:3]
            weight = kwargs.get("weight", weight)
            bias = kwargs.get("bias", bias)
            if eligible(x, weight, bias) and _chosen(weight, self.shapes):
                return OneDNNLinear.apply(x, weight, bias)
        return func(*args, **kwargs)


@contextlib.contextmanager
def linear_mode(enabled: bool = True, shapes: Shapes = None) -> Iterator[None]:
    """Route the eligible `F.linear` calls of the block through oneDNN (no-op when unavailable);
    given `shapes`, only those weight shapes.

    Not for gradient-checkpointed models: their backward re-runs the forward outside this block.
    """
    if not (enabled and available()):
        yield
        return
    with _LinearMode(shapes):
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
