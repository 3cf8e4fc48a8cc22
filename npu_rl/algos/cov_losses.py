"""Clip-Cov and KL-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning
Language Models"): PPO variants that keep the policy's entropy from collapsing.

The paper finds entropy falls where a token's log-probability and its advantage covary strongly: a
confident token that is rewarded gets more confident. Both losses pick the few tokens with the largest
covariance term (A_t - mean A) * (log pi_t - mean log pi) over a micro-batch's valid tokens and treat
them differently: Clip-Cov takes their gradient away, KL-Cov adds a KL penalty |log rho| to them. They
are selected per micro-batch, from that micro-batch's tokens, as in verl.

Both match verl's compute_policy_loss_clip_cov / compute_policy_loss_kl_cov (main of 2026-01-29,
0.8.0.dev). Keys: actor.policy_loss_params.{clip_cov_ratio, clip_cov_lb, clip_cov_ub, kl_cov_ratio,
ppo_kl_coef}; reduced by actor.loss_agg_mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from npu_rl.core_algos import masked_mean, register_policy_loss

if TYPE_CHECKING:
    from npu_rl.config import ActorConfig


def covariance(advantages: torch.Tensor, logprob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each token's (A_t - mean A) * (log pi_t - mean log pi), the means over the valid tokens (detached)."""
    mask = mask.float()
    adv, logp = advantages.detach().float(), logprob.detach().float()
    return (adv - masked_mean(adv, mask)) * (logp - masked_mean(logp, mask))


@register_policy_loss("clip_cov")
def clip_cov_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov: PPO's clipped surrogate (no dual clip), except that among the tokens PPO did not clip
    whose covariance lies strictly between clip_cov_lb and clip_cov_ub, max(1, int(clip_cov_ratio x valid
    tokens)) chosen at random (torch's generator) lose their loss and gradient; they still count in
    the aggregation's token total. pg_clipfrac is the fraction of tokens so removed, pg_clipfrac_lower
    is 0; no log-ratio clamp (verl's edge cases)."""
    params = cfg.policy_loss_params
    mask = mask.float()
    advantages = advantages.float()
    log_ratio = logprob.float() - old_logprob.float()
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cfg.clip_ratio_low, 1.0 + cfg.clip_ratio_high)
    cov = covariance(advantages, logprob, mask)
    valid = mask > 0
    candidates = valid & ~(clipped > unclipped) & (cov > params.clip_cov_lb) & (cov < params.clip_cov_ub)
    positions = torch.nonzero(candidates)
    count = max(int(params.clip_cov_ratio * float(mask.sum())), 1)
    chosen = positions[torch.randperm(len(positions))[:count].to(positions.device)]
    keep = torch.ones_like(mask)
    keep[chosen[:, 0], chosen[:, 1]] = 0.0
    stats = {
        "pg_clipfrac": masked_mean(1.0 - keep, mask),
        "pg_clipfrac_lower": torch.zeros(()),
        "ppo_kl": masked_mean(-log_ratio.detach(), mask),
    }
    return torch.maximum(unclipped, clipped) * keep, stats


@register_policy_loss("kl_cov")
def kl_cov_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov: the unclipped surrogate -A rho on every token, plus ppo_kl_coef * |log rho| on the
    max(1, int(kl_cov_ratio x valid tokens)) tokens of largest covariance (torch.topk's pick among ties).
    No clip, no log-ratio clamp. ppo_kl is the mean |log rho|, as verl reports it for this loss;
    pg_clipfrac is the fraction of tokens that carry the penalty (verl logs none), pg_clipfrac_lower 0."""
    params = cfg.policy_loss_params
    mask = mask.float()
    advantages = advantages.float()
    log_ratio = logprob.float() - old_logprob.float()
    loss = -advantages * log_ratio.exp()
    flat_valid = torch.nonzero(mask.reshape(-1) > 0).squeeze(-1)
    penalised = torch.zeros_like(mask)
    if len(flat_valid):
        cov = covariance(advantages, logprob, mask).reshape(-1)[flat_valid]
        count = max(1, int(len(flat_valid) * params.kl_cov_ratio))
        penalised.view(-1)[flat_valid[torch.topk(cov, count).indices]] = 1.0
    stats = {
        "pg_clipfrac": masked_mean(penalised, mask),
        "pg_clipfrac_lower": torch.zeros(()),
        "ppo_kl": masked_mean(log_ratio.detach().abs(), mask),
    }
    return loss + params.ppo_kl_coef * log_ratio.abs() * penalised, stats
