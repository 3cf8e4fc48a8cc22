"""Policy losses beyond vanilla PPO (GSPO, LUSPO, GPG, CISPO, GMPO's geo_mean, SAPO, VESPO) and PPO's value loss.

Every POLICY_LOSSES member: fn(logprob, old_logprob, advantages, mask, cfg: ActorConfig)
-> (loss_mat [N, T], stats), reduced by the actor's `loss_agg_mode` or, for the sequence-level
losses registered with `agg_mode`, by that mode.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from npu_rl.core_algos import masked_mean, register_policy_loss

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
    the token's own logprob. Matches verl's compute_policy_loss_gspo (checked against verl main of
    2026-01-29 by bench/verl_parity.py); an empty row has log-ratio 0 (length clamped to 1);
    pg_clipfrac_lower is 0 (no dual clip).
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


@register_policy_loss("gspo", agg_mode="seq-mean-token-mean")
def gspo_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """verl's `gspo` loss mode with the actor's clip ratios (GSPO's paper uses 3e-4 / 4e-4), always reduced
    as seq-mean-token-mean, as verl reduces it whatever its loss_agg_mode (found by bench/verl_parity.py)."""
    return gspo_loss(logprob, old_logprob, advantages, mask, cfg.clip_ratio_low, cfg.clip_ratio_high)


@register_policy_loss("luspo", agg_mode="seq-mean-token-sum")
def luspo_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LUSPO (length-unbiased sequence policy optimization): GSPO's clipped sequence ratio, each sequence's
    loss weighted by its length, i.e. reduced as seq-mean-token-sum, so long responses are not
    down-weighted as in GSPO's per-sequence mean. TRL's loss_type="luspo" with
    importance_sampling_level="sequence" (main of 2026-07-24): the same loss and gradient, with GSPO's
    log-ratio clamp at 10 (TRL has none) and empty rows not counted as sequences."""
    return gspo_loss(logprob, old_logprob, advantages, mask, cfg.clip_ratio_low, cfg.clip_ratio_high)


@register_policy_loss("gpg")
def gpg_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GPG's plain policy gradient, -A * log pi per token: no ratio, no clip (use with the `gpg`
    estimator). Matches verl's compute_policy_loss_gpg (main of 2026-01-29, 0.8.0.dev); its clip
    statistics are 0, ppo_kl is reported as for the other losses (verl reports none)."""
    stats = {"pg_clipfrac": torch.zeros(()), "pg_clipfrac_lower": torch.zeros(())}
    stats["ppo_kl"] = masked_mean(old_logprob.float() - logprob.detach().float(), mask.float())
    return -advantages.float() * logprob.float(), stats


@register_policy_loss("cispo")
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


@register_policy_loss("geo_mean", agg_mode="seq-mean-token-mean")
def geo_mean_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GMPO (Zhao et al. 2025): -A_i * exp(mean_t of the clipped log-ratio), the geometric mean of the
    token ratios of sequence i, so one outlier token moves the sequence less than PPO's arithmetic mean.

    The clip acts on each token's log-ratio: [-clip_ratio_low, clip_ratio_high] in log space, and only on
    the side that helps the update (A > 0: above, A < 0: below, A = 0: the term is 0). A_i is the
    sequence's mean advantage. Matches verl's compute_policy_loss_geo_mean (main of 2026-01-29,
    0.8.0.dev): no log-ratio clamp, pg_clipfrac / pg_clipfrac_lower count clipped tokens with A > 0 / A < 0.
    The sequence loss is placed on each of its tokens and reduced as seq-mean-token-mean (whatever
    actor.loss_agg_mode says, as verl), i.e. the mean over the mini-batch's sequences; verl averages
    each micro-batch's rows, which is the same for equal micro-batches, except that a fully masked row
    (loss 0) is not counted here.
    """
    mask = mask.float()
    log_ratio = logprob.float() - old_logprob.float()
    sign = torch.sign(advantages.float())
    clamped = log_ratio.clamp(-cfg.clip_ratio_low, cfg.clip_ratio_high)
    bounded = sign * torch.minimum(sign * log_ratio, sign * clamped)
    length = mask.sum(-1).clamp(min=1)
    seq_ratio = ((bounded * mask).sum(-1) / length).exp()
    seq_adv = (advantages.float() * mask).sum(-1) / length
    clipped = (log_ratio != clamped).float()
    stats = {
        "pg_clipfrac": masked_mean(clipped * (advantages > 0), mask),
        "pg_clipfrac_lower": masked_mean(clipped * (advantages < 0), mask),
        "ppo_kl": masked_mean(-log_ratio.detach(), mask),
    }
    return (-seq_adv * seq_ratio)[:, None].expand_as(mask), stats


@register_policy_loss("sapo", agg_mode="seq-mean-token-mean")
def sapo_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAPO (Gao et al. 2025, arXiv 2511.20347): a smooth gate instead of PPO's hard clip,
    -A * sigmoid(tau (rho - 1)) * 4 / tau per token, tau = tau_pos where A > 0 else tau_neg.

    At rho = 1 the gradient equals the plain policy gradient's; away from 1 it fades smoothly instead of
    dropping to zero at a clip edge (tau_neg > tau_pos fades negative updates faster). The log-ratio is
    clamped to [-20, 20]. Matches verl's compute_policy_loss_sapo (main of 2026-01-29, 0.8.0.dev):
    always reduced as seq-mean-token-mean, clip fractions 0. Keys: actor.policy_loss_params.tau_pos / tau_neg.
    """
    params = cfg.policy_loss_params
    log_ratio = (logprob.float() - old_logprob.float()).clamp(-20.0, 20.0)
    advantages = advantages.float()
    tau = torch.where(advantages > 0, params.tau_pos, params.tau_neg)
    gate = torch.sigmoid(tau * (log_ratio.exp() - 1.0)) * (4.0 / tau)
    stats = {
        "pg_clipfrac": torch.zeros(()),
        "pg_clipfrac_lower": torch.zeros(()),
        "ppo_kl": masked_mean(-log_ratio.detach(), mask.float()),
    }
    return -gate * advantages, stats


@register_policy_loss("vespo")
def vespo_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VESPO: -sg(phi(w)) * A * log pi per token, w = pi / pi_old of the whole sequence (the product of
    the token ratios) and phi(w) = exp(lambda + k log w - lambda w), a gamma-shaped weight equal to 1 at
    w = 1 that fades both for w << 1 (power k) and for w >> 1 (decay lambda), with (k, lambda) set by
    the advantage's sign. Matches TRL's get_gamma_weights (main of 2026-07-24): token log-ratios clamped
    to [-20, 20], log w to [log 1e-8, 20], lambda at least 1e-4, non-finite weights 0; TRL reduces it
    token-mean (npu_rl: actor.loss_agg_mode, default token-mean). With rollout correction the weights
    scale the advantages as for every loss here (TRL folds its IS ratio into w instead).
    `vespo_weight` logs the mean phi over valid tokens."""
    params, mask = cfg.policy_loss_params, mask.float()
    log_ratio = (logprob.detach().float() - old_logprob.float()).clamp(-20.0, 20.0)
    log_w = (log_ratio * mask).sum(-1, keepdim=True).clamp(math.log(1e-8), 20.0)
    positive = advantages >= 0
    k = torch.where(positive, params.vespo_k_pos, params.vespo_k_neg)
    lam = torch.where(positive, params.vespo_lambda_pos, params.vespo_lambda_neg).clamp(min=1e-4)
    phi = torch.exp(lam + k * log_w - lam * log_w.exp()).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    stats = {
        "pg_clipfrac": torch.zeros(()),
        "pg_clipfrac_lower": torch.zeros(()),
        "ppo_kl": masked_mean(-log_ratio, mask),
        "vespo_weight": masked_mean(phi, mask),
    }
    return -phi * advantages.float() * logprob.float(), stats


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
