"""GRPO's algorithm math as pure tensor functions: no model, no engine, no I/O.

Shapes: N sequences, T response tokens. `mask` is 1.0 on real response tokens, 0.0 on padding.
Each family (advantage estimators, KL estimators, loss aggregation) is a small registry so a
config string picks the function and a new variant is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ADV_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {}


def register_adv_estimator(name: str) -> Callable:
    def wrap(fn: Callable) -> Callable:
        ADV_ESTIMATORS[name] = fn
        return fn

    return wrap


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked entries; 0 when the mask is empty (never NaN)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


@register_adv_estimator("grpo")
def grpo_advantages(
    scores: torch.Tensor, group_ids: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative advantage per sequence: (score - group mean) / (group std + eps).

    `norm_by_std=False` keeps only the mean subtraction (Dr.GRPO), which does not up-weight
    groups whose rewards barely differ. As in verl, a group of one gets mean 0 and std 1, and the
    std is the unbiased one. A group whose rewards are all equal gets exactly zero advantage.
    """
    scores = scores.float()
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    num_groups = counts.numel()
    sums = torch.zeros(num_groups, dtype=scores.dtype).index_add_(0, inverse, scores)
    means = sums / counts
    sq = torch.zeros(num_groups, dtype=scores.dtype).index_add_(0, inverse, (scores - means[inverse]) ** 2)
    stds = torch.sqrt(sq / (counts - 1).clamp(min=1))
    singleton = counts == 1
    means = torch.where(singleton, torch.zeros_like(means), means)
    stds = torch.where(singleton, torch.ones_like(stds), stds)
    adv = scores - means[inverse]
    if norm_by_std:
        adv = adv / (stds[inverse] + eps)
    return adv


def kl_estimate(logprob: torch.Tensor, ref_logprob: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token logprobs.

    k1: log-ratio (unbiased, high variance, can be negative); k2: half squared log-ratio;
    k3 / low_var_kl: ratio - 1 - log ratio with ratio = pi_ref / pi (unbiased, non-negative),
    clamped to [-10, 10] so a single wild token cannot blow up the loss.
    """
    log_ratio = logprob.float() - ref_logprob.float()
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind in ("k3", "low_var_kl"):
        neg = (-log_ratio).clamp(-20.0, 20.0)
        return (neg.exp() - neg - 1).clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2, k3 or low_var_kl")


def aggregate_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
    horizon: int | None = None,
) -> torch.Tensor:
    """Reduce a [N, T] per-token loss to a scalar.

    token-mean: every token of the mini-batch weighs the same (long answers weigh more).
    seq-mean-token-sum: sum per sequence, mean over sequences.
    seq-mean-token-mean: mean per sequence, then mean over sequences (GRPO paper).
    seq-mean-token-sum-norm: sum per sequence divided by a fixed horizon (Dr.GRPO: no length bias).

    `num_tokens` / `num_seqs` are the mini-batch totals (across micro-batches and ranks). Passing
    them makes the sum of micro-batch losses equal the loss of the whole mini-batch, so gradient
    accumulation and data parallelism do not change the result. `horizon` defaults to T.
    """
    mask = mask.to(loss_mat.dtype)
    n_seq = num_seqs if num_seqs is not None else loss_mat.shape[0]
    if mode == "token-mean":
        denom = num_tokens if num_tokens is not None else mask.sum()
        return (loss_mat * mask).sum() / torch.as_tensor(denom, dtype=loss_mat.dtype).clamp(min=1)
    seq_sums = (loss_mat * mask).sum(dim=-1)
    if mode == "seq-mean-token-sum":
        per_seq = seq_sums
    elif mode == "seq-mean-token-mean":
        per_seq = seq_sums / mask.sum(dim=-1).clamp(min=1)
    elif mode == "seq-mean-token-sum-norm":
        per_seq = seq_sums / float(horizon or loss_mat.shape[-1])
    else:
        raise ValueError(
            f"unknown loss_agg_mode {mode!r}; use token-mean, seq-mean-token-sum, "
            "seq-mean-token-mean or seq-mean-token-sum-norm"
        )
    return per_seq.sum() / torch.as_tensor(n_seq, dtype=loss_mat.dtype).clamp(min=1)


def ppo_policy_loss(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token dual-clip PPO surrogate, to be reduced by `aggregate_loss`.

    The ratio is clipped to [1 - low, 1 + high] (a larger `high` is clip-higher, which keeps rare
    good tokens from being clipped away); for negative advantages the loss is also bounded by
    clip_ratio_c * |A| (dual clip), so a token whose probability exploded cannot dominate.
    Returns the loss matrix and masked statistics: pg_clipfrac, pg_clipfrac_lower, ppo_kl.
    """
    advantages = advantages.float()
    log_ratio = (logprob.float() - old_logprob.float()).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clip_loss = torch.maximum(unclipped, clipped)
    dual_bound = -advantages * clip_ratio_c
    dual_loss = torch.minimum(dual_bound, clip_loss)
    negative = advantages < 0
    loss = torch.where(negative, dual_loss, clip_loss)
    stats = {
        "pg_clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "pg_clipfrac_lower": masked_mean(((clip_loss > dual_bound) & negative).float(), mask),
        "ppo_kl": masked_mean(-log_ratio, mask),
    }
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) along the last dim, computed stably from logsumexp."""
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)
    return log_z - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] without materialising the full log-softmax tensor."""
    logits = logits.float()
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
