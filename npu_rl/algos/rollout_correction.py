"""Rollout correction: importance weights and rejection between the engine's and the trainer's log-probs.

The engine that sampled (vLLM in bf16, its own kernels) and the trainer disagree slightly on each token's
probability, so training on the engine's samples as if the trainer had drawn them is biased, and a few
tokens the trainer finds far less likely than the engine did can destabilise a run (Yao et al. 2025,
"Your efficient RL framework secretly brings you off-policy RL training"; Liu et al. 2025, "When speed
kills stability"). With log r = log pi_train - log pi_rollout per token (pi_train before the update):

- importance weights (`rollout_is`): per token r, or per sequence exp(sum_t log r), each truncated from
  above at a threshold (TIS), detached, optionally divided by their batch mean (`batch_normalize`);
- rejection (`rollout_rs`): tokens or whole sequences whose divergence leaves a band are taken out of the
  update (their mask becomes 0), by one or more criteria that must all pass.

Both follow verl's rollout_corr_helper (main of 2026-01-29, 0.8.0.dev): option names, threshold syntax,
the clamp of log r to [-20, 20], k1 bounds read as verl reads them (below), and zero weight on padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from npu_rl.core_algos import ppo_policy_loss

if TYPE_CHECKING:
    from npu_rl.config import ActorConfig
    from npu_rl.config.objective import RolloutCorrectionConfig

SAFETY_BOUND = 20.0  # |log r| is clamped here before exp, as in verl
LEVELS = ("token", "seq_sum", "seq_mean", "seq_max")
ESTIMATORS = ("k1", "k2", "k3")
# verl's rollout_rs options: a level and a divergence estimator (seq_max has no k1)
REJECTION_OPTIONS = tuple(f"{level}_{k}" for level in LEVELS for k in ESTIMATORS if (level, k) != ("seq_max", "k1"))

Stats = dict[str, float | tuple[float, float]]  # means as (sum, count) to combine over ranks; maxima as floats


@dataclass(frozen=True)
class RejectionRule:
    """One rejection criterion: keep a token (or sequence) while lower <= statistic <= upper.

    For the k1 options the statistic is -log r (summed, averaged over the sequence for seq_sum /
    seq_mean) and the bounds are log(lower), log(upper) of the user's ratio bounds, exactly as verl
    compares them: a token is kept when 1 / upper <= r <= 1 / lower. The k2 (0.5 log r ^ 2) and k3
    (r - 1 - log r) options have only an upper bound."""

    option: str
    upper: float
    lower: float | None = None

    @property
    def level(self) -> str:
        return self.option.rsplit("_", 1)[0]

    def keep(self, log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[N, T] bool: tokens this rule keeps (a sequence-level rule keeps or drops whole rows)."""
        estimator = self.option.rsplit("_", 1)[1]
        stat = {"k1": -log_ratio, "k2": 0.5 * log_ratio.square(), "k3": log_ratio.exp() - 1.0 - log_ratio}[estimator]
        if self.level == "seq_sum":
            stat = (stat * mask).sum(-1, keepdim=True)
        elif self.level == "seq_mean":
            stat = (stat * mask).sum(-1, keepdim=True) / (mask.sum(-1, keepdim=True) + 1e-8)
        elif self.level == "seq_max":
            # k2, k3 >= 0, so the clamp only turns an empty row's -inf into verl's 0
            stat = stat.masked_fill(mask == 0, -math.inf).amax(-1, keepdim=True).clamp(min=0.0)
        if self.lower is None:
            kept = stat <= self.upper
        else:
            kept = (stat >= math.log(self.lower)) & (stat <= math.log(self.upper))
        return kept.expand_as(mask)


def parse_rejection(options: str, thresholds: str | float | None) -> list[RejectionRule]:
    """verl's `rollout_rs` ("token_k1,seq_mean_k3", duplicates dropped) and `rollout_rs_threshold` (one
    entry shared by every option, or one per option, comma-separated; "lower_upper" for k1 options, a
    single k1 number u meaning 1/u_u). Raises ValueError saying what is wrong."""
    names = list(dict.fromkeys(part.strip() for part in options.split(",") if part.strip()))
    if not names:
        raise ValueError("lists no option")
    unknown = [name for name in names if name not in REJECTION_OPTIONS]
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; options: {', '.join(REJECTION_OPTIONS)}")
    if thresholds is None:
        raise ValueError("needs rollout_rs_threshold (one bound per option, or one for all)")
    specs = [part.strip() for part in str(thresholds).split(",") if part.strip()]
    if len(specs) not in (1, len(names)):
        raise ValueError(
            f"rollout_rs_threshold has {len(specs)} entries for {len(names)} options: give 1 or {len(names)}"
        )
    rules = []
    for name, spec in zip(names, specs * len(names) if len(specs) == 1 else specs, strict=False):
        try:
            if name.endswith("k1"):
                lower, _, upper = spec.partition("_") if "_" in spec else (str(1.0 / float(spec)), "", spec)
                rule = RejectionRule(name, float(upper), float(lower))
            elif "_" in spec:
                raise ValueError(f"{name} takes one upper bound, not {spec!r}")
            else:
                rule = RejectionRule(name, float(spec))
        except (ValueError, ZeroDivisionError) as err:
            raise ValueError(f"threshold {spec!r} for {name}: {err}") from None
        if rule.upper <= 0 or (rule.lower is not None and rule.lower <= 0):
            raise ValueError(f"threshold {spec!r} for {name} must be positive")
        rules.append(rule)
    return rules


def importance_weights(
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    level: str,
    threshold: float,
    batch_normalize: bool = False,
    all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> tuple[torch.Tensor, Stats]:
    """Truncated importance weights [N, T]: min(r, threshold) per token (`level` "token") or
    min(exp(sum_t log r), threshold) on every token of a sequence ("sequence"); 0 on padding; detached.

    With `batch_normalize` they are divided by their mean over the step batch on all ranks (`all_sum`):
    over tokens at token level, over non-empty sequences at sequence level (verl's
    rollout_is_batch_normalize). Stats, over the units of the level, before truncation: is_mean,
    is_clipfrac (share above the threshold), is_max; and is_batch_norm_factor when normalising.
    """
    mask = mask.float()
    log_ratio = log_ratio.detach().float()
    if level == "token":
        unit_log = log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND)
        unit_mask = mask
    else:
        unit_log = (log_ratio * mask).sum(-1, keepdim=True).clamp(-SAFETY_BOUND, SAFETY_BOUND)
        unit_mask = (mask.sum(-1, keepdim=True) > 0).float()
    ratio = unit_log.exp()
    count = float(unit_mask.sum())
    stats: Stats = {
        "is_mean": (float((ratio * unit_mask).sum()), count),
        "is_clipfrac": (float(((ratio > threshold).float() * unit_mask).sum()), count),
        "is_max": float((ratio * unit_mask).max()) if count else 0.0,
    }
    unit_weights = ratio.clamp(max=threshold) * unit_mask
    weights = unit_weights.expand_as(mask) * mask
    if batch_normalize:
        totals = all_sum(torch.tensor([float(unit_weights.sum()), count]))
        mean = float(totals[0] / totals[1]) if totals[1] > 0 else 0.0
        if mean > 1e-8:
            weights = weights / mean
        stats["is_batch_norm_factor"] = mean if mean > 1e-8 else 1.0
    return weights, stats


def rejection_mask(
    log_ratio: torch.Tensor, mask: torch.Tensor, rules: list[RejectionRule]
) -> tuple[torch.Tensor, Stats]:
    """The response mask with the tokens (or sequences) some rule rejects set to 0, and its stats:
    rs_masked_fraction (tokens), rs_seq_masked_fraction (sequences with a rejected token), and
    rs_<option>_masked_fraction per rule."""
    mask = mask.float()
    log_ratio = log_ratio.detach().float().clamp(-SAFETY_BOUND, SAFETY_BOUND)
    kept = torch.ones_like(mask, dtype=torch.bool)
    tokens = float(mask.sum())
    stats: Stats = {}
    for rule in rules:
        rule_kept = rule.keep(log_ratio, mask)
        stats[f"rs_{rule.option}_masked_fraction"] = (float((~rule_kept).float().mul(mask).sum()), tokens)
        kept &= rule_kept
    rows = mask.sum(-1) > 0
    rejected_rows = ((~kept).float() * mask).sum(-1) > 0
    stats["rs_masked_fraction"] = (float((~kept).float().mul(mask).sum()), tokens)
    stats["rs_seq_masked_fraction"] = (float(rejected_rows.sum()), float(rows.sum()))
    return mask * kept, stats


def correct(
    cfg: RolloutCorrectionConfig,
    old_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> tuple[torch.Tensor, torch.Tensor | None, Stats]:
    """What algorithm.rollout_correction asks for, in verl's order: weights from the response mask as
    sampled, then the rejection mask. Returns (the mask to train and estimate advantages with, the
    weights or None, stats)."""
    log_ratio = old_logprobs - rollout_logprobs
    weights, stats = None, {}
    if cfg.weighted:
        assert cfg.rollout_is is not None
        weights, stats = importance_weights(
            log_ratio, mask, cfg.rollout_is, cfg.rollout_is_threshold, cfg.rollout_is_batch_normalize, all_sum
        )
    if cfg.rollout_rs is not None:
        mask, rs_stats = rejection_mask(log_ratio, mask, parse_rejection(cfg.rollout_rs, cfg.rollout_rs_threshold))
        stats.update(rs_stats)
    return mask, weights, stats


def bypass_loss(
    logprob: torch.Tensor,
    rollout_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    actor_cfg: ActorConfig,
    cfg: RolloutCorrectionConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """verl's bypass mode for one micro-batch, whose old policy is the engine (`rollout_logprob`): the
    weights and the rejection mask compare the current policy with the engine; `ppo_clip` is the dual-clip
    PPO loss on that ratio without the weights (the clip already bounds it, verl's reasoning), `reinforce`
    is -w A log pi with the weights (1 without rollout_is). Matches verl's compute_policy_loss_bypass_mode
    (main of 2026-01-29). Returns the loss matrix, its stats and the mask to aggregate it with (rejected
    tokens 0; the normaliser is still the mini-batch's, as in verl)."""
    with torch.no_grad():
        kept, weights, _ = correct(cfg, logprob.detach(), rollout_logprob, mask)
    if cfg.loss_type == "reinforce":
        loss = -advantages.float() * logprob.float() * (weights if weights is not None else 1.0)
        log_ratio = (logprob.detach().float() - rollout_logprob.float()) * kept
        stats = {
            "pg_clipfrac": torch.zeros(()),
            "pg_clipfrac_lower": torch.zeros(()),
            "ppo_kl": -log_ratio.sum() / kept.sum().clamp(min=1),
        }
    else:
        loss, stats = ppo_policy_loss(
            logprob, rollout_logprob, advantages, kept, actor_cfg.clip_ratio_low, actor_cfg.clip_ratio_high,
            actor_cfg.clip_ratio_c,
        )  # fmt: skip
    valid = mask.float()
    stats["rollout_rs_masked_fraction"] = ((1.0 - kept) * valid).sum() / valid.sum().clamp(min=1)
    if weights is not None:
        stats["rollout_is_mean"] = (weights * valid).sum() / valid.sum().clamp(min=1)
    return loss, stats, kept
