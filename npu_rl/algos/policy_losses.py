"""Policy losses beyond vanilla PPO (GSPO, GPG, CISPO), the rollout-correction token weight and PPO's
value loss.

Every POLICY_LOSSES member: fn(logprob, old_logprob, advantages, mask, cfg: ActorConfig)
-> (loss_mat [N, T], stats), reduced by the actor's `loss_agg_mode`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from npu_rl.core_algos import POLICY_LOSSES, masked_mean

if TYPE_CHECKING:
    from npu_rl.config import ActorConfig

GSPO_MAX_LOG_RATIO = 10.0


def gspo_loss(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al. 2025): one importance ratio per sequence, s = exp(mean over valid tokens of
    log pi - log pi_old), clipped to [1 - low, 1 + high] (no dual clip).

    Each token's ratio carries the token-level gradient path: log s_t = logprob_t - sg(logprob_t)
    + sg(mean log-ratio), clamped at 10 before exp, so its value is s and its gradient flows through
    the token's own logprob. Matches verl 0.9.1's compute_policy_loss_gspo; an empty row has
    log-ratio 0 (length clamped to 1); pg_clipfrac_lower is 0 (no dual clip). verl recommends
    actor.loss_agg_mode=seq-mean-token-mean with it.
    """
    advantages, mask = advantages.float(), mask.float()
    log_ratio = logprob.float() - old_logprob.float()
    seq_log_ratio = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    token_log_ratio = logprob.float() - logprob.float().detach() + seq_log_ratio.detach()[:, None]
    ratio = token_log_ratio.clamp(max=GSPO_MAX_LOG_RATIO).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    stats = {
        "pg_clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "pg_clipfrac_lower": torch.zeros(()),
        "ppo_kl": masked_mean(-log_ratio, mask),
    }
    return torch.maximum(unclipped, clipped), stats


@POLICY_LOSSES.register("gspo")
def gspo_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """verl's `gspo` loss mode with the actor's clip ratios (GSPO's paper uses 3e-4 / 4e-4)."""
    return gspo_loss(logprob, old_logprob, advantages, mask, cfg.clip_ratio_low, cfg.clip_ratio_high)


@POLICY_LOSSES.register("gpg")
def gpg_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GPG's plain policy gradient, -A * log pi per token: no ratio, no clip (use with the `gpg`
    estimator). Matches verl's compute_policy_loss_gpg (main of 2026-01-29, 0.8.0.dev); its clip
    statistics are 0, ppo_kl is reported as for the other losses (verl reports none)."""
    stats = {"pg_clipfrac": torch.zeros(()), "pg_clipfrac_lower": torch.zeros(())}
    stats["ppo_kl"] = masked_mean(old_logprob.float() - logprob.detach().float(), mask.float())
    return -advantages.float() * logprob.float(), stats


@POLICY_LOSSES.register("cispo")
def cispo_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax-M1): -sg(clip(rho, 1 - low, 1 + high)) * A * log pi per token, so every token keeps
    a gradient (through log pi) and only the importance weight is clipped, with the actor's
    clip_ratio_low / clip_ratio_high. The log-ratio is clamped to [-20, 20] before exp. Matches verl's
    compute_policy_loss_cispo (main of 2026-01-29, 0.8.0.dev); pg_clipfrac counts tokens whose weight
    was clipped, and pg_clipfrac_lower is 0 (no dual clip)."""
    mask = mask.float()
    log_ratio = (logprob.float() - old_logprob.float()).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1.0 - cfg.clip_ratio_low, 1.0 + cfg.clip_ratio_high)
    stats = {
        "pg_clipfrac": masked_mean((ratio != clipped).float(), mask),
        "pg_clipfrac_lower": torch.zeros(()),
        "ppo_kl": masked_mean(-log_ratio.detach(), mask),
    }
    return -clipped.detach() * advantages.float() * logprob.float(), stats


def truncated_is_weight(
    logprob: torch.Tensor, rollout_logprob: torch.Tensor, mask: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rollout correction: token weight min(pi_train / pi_rollout, cap), detached, zero on mask-0 tokens.

    The engine that sampled (vLLM, bf16 kernels) and the trainer disagree slightly on probabilities;
    weighting each token's loss by this truncated importance ratio corrects the bias of training on
    samples from the engine's distribution (Yao et al. 2025, "TIS"). The log-ratio is clamped to
    [-20, 20] before exp, as verl does. Stats: rollout_corr/{is_mean, is_max, is_clipfrac}.
    """
    mask = mask.float()
    log_ratio = (logprob.detach().float() - rollout_logprob.float()).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    weight = ratio.clamp(max=cap) * mask
    stats = {
        "is_mean": masked_mean(ratio, mask),
        "is_max": (ratio * mask).max() if mask.any() else torch.zeros(()),
        "is_clipfrac": masked_mean((ratio > cap).float(), mask),
    }
    return weight, stats


def value_loss(
    vpreds: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss per token, 0.5 * max((v - R)^2, (clip(v, v_old - c, v_old + c) - R)^2), to be
    reduced by `aggregate_loss` (verl 0.9.1's compute_value_loss with critic.cliprange_value = c).
    Stats: vf_clipfrac (tokens where the clipped term is the larger) and vpred_mean."""
    vpreds, mask = vpreds.float(), mask.float()
    clipped = torch.clamp(vpreds, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_loss, clipped_loss = (vpreds - returns).square(), (clipped - returns).square()
    stats = {
        "vf_clipfrac": masked_mean((clipped_loss > unclipped_loss).float(), mask),
        "vpred_mean": masked_mean(vpreds.detach(), mask),
    }
    return 0.5 * torch.maximum(unclipped_loss, clipped_loss), stats
