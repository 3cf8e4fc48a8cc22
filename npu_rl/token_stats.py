"""Per-token statistics of the policy's logits over the response tokens: log-probabilities, entropies
and sums of squared probabilities (npu_rl.core_algos' functions), under temperature-scaled logits;
on the batch's [N, T] grid for packed passes; and the chunked head (`ComputePlan.head_chunk`, verl's
use_fused_kernels), which never holds the [tokens, vocabulary] logits whole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch import nn

from npu_rl import core_algos, packing
from npu_rl.head import head_logits, head_weights


class TokenStats(NamedTuple):
    """Per-token values of a forward over the response columns, [N, T] each ([M] packed, before `on_grid`)."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    sum_pi_squared: torch.Tensor | None = None  # sum over the vocabulary of pi^2 (optimal token baselines)


def token_stats(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    entropy_grad: bool,
    with_sum_pi_squared: bool,
) -> TokenStats:
    """Log-probs (entropies, sums of squared probabilities) of `targets` under temperature-scaled
    `logits`, one per target.

    The log-probs' backward needs the fp32 logits; from bf16 logits (a card) it keeps the bf16 ones
    instead and recomputes the fp32 copy (a checkpoint of the same operations: the same bits), half
    the head's memory for backward (Qwen2.5: 0.6 -> 0.3 MB per predicted token). Not when the entropy
    is in the loss: its own backward keeps the fp32 logits anyway."""
    entropy_in_loss = with_entropy and entropy_grad and torch.is_grad_enabled()
    if logits.dtype != torch.float32 and logits.requires_grad and torch.is_grad_enabled() and not entropy_in_loss:
        logprobs = torch.utils.checkpoint.checkpoint(_logprobs, logits, targets, temperature, use_reentrant=False)
        with torch.no_grad():
            scaled = _scaled(logits, temperature) if with_entropy or with_sum_pi_squared else logits
    else:
        scaled = _scaled(logits, temperature)
        logprobs = core_algos.logprobs_from_logits(scaled, targets)
    entropy = sum_pi_squared = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_in_loss):
            entropy = core_algos.entropy_from_logits(scaled if entropy_grad else scaled.detach())
    if with_sum_pi_squared:
        sum_pi_squared = core_algos.sum_pi_squared_from_logits(scaled.detach())
    return TokenStats(logprobs, entropy, sum_pi_squared)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits.float() if temperature == 1.0 else logits.float() / temperature


def _logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    return core_algos.logprobs_from_logits(_scaled(logits, temperature), targets)


def on_grid(stats: TokenStats, layout: packing.PackedLayout, width: int) -> TokenStats:
    """Packed per-token values [M] back to the batch's [N, width] grid."""
    shape = (len(layout.tail_lens), width)
    return TokenStats(*(None if t is None else packing.scatter_rows(t, layout, shape) for t in stats))


def chunked_stats(
    model: nn.Module,
    targets: torch.Tensor,
    temperature: float,
    extras: tuple[bool, bool, bool],
    chunk: int,
    hidden: torch.Tensor,
    linear: Callable[..., torch.Tensor] = nn.functional.linear,
) -> TokenStats:
    """`token_stats` of the head's logits over `hidden` [M, H], `chunk` tokens at a time (the plan's
    `head_chunk`, verl's use_fused_kernels): with gradients each chunk runs under non-reentrant
    checkpointing, which keeps only its hidden states and recomputes its logits in backward, so the
    [M, vocabulary] logits are never held whole. The same operations per token as the unchunked head;
    the head's weights are taken once for all chunks (an fp32 head's cast once per pass, its gradient
    summed over the chunks in fp32 as the unchunked head's is, then cast back once)."""

    weights = head_weights(model)  # closed over, not a checkpoint input: no chunk saves it again

    def one(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return tuple(token_stats(head_logits(model, h, linear, weights), t, temperature, *extras))

    run = (
        functools.partial(torch.utils.checkpoint.checkpoint, one, use_reentrant=False)
        if torch.is_grad_enabled()
        else one
    )
    parts = [
        run(hidden[start : start + chunk], targets[start : start + chunk])
        for start in range(0, max(len(hidden), 1), chunk)
    ]
    return TokenStats(*(None if col[0] is None else torch.cat(col) for col in zip(*parts, strict=True)))
