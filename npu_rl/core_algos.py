"""GRPO's algorithm math as pure tensor functions: no model, no engine, no I/O.

Shapes: N sequences, T response tokens. `mask` is 1.0 on real response tokens, 0.0 on padding.
Each family is a registry (npu_rl.registry) named by a config key, so a config string picks the
function and a new variant is one decorated function; every member of a family has one signature:

- ADV_ESTIMATORS (algorithm.adv_estimator): fn(AdvantageInputs) -> (advantages [N, T], returns [N, T])
  (npu_rl.algos.advantages: grpo, rloo, reinforce_plus_plus(_baseline), gae)
- POLICY_LOSSES (actor.policy_loss): fn(logprob, old_logprob, advantages, mask, cfg: ActorConfig)
  -> (loss_mat [N, T], stats: dict of scalar tensors)
  (vanilla here; gspo, gpg, cispo, geo_mean, sapo in npu_rl.algos.policy_losses; clip_cov, kl_cov in
  npu_rl.algos.cov_losses). A loss registered with `agg_mode` is always reduced that way (policy_agg_mode).
- KL_ESTIMATORS (actor.kl_loss_type, algorithm.kl_penalty): fn(logprob, ref_logprob) -> [N, T]
- LOSS_AGG_MODES (actor.loss_agg_mode): fn(loss_mat, mask, num_tokens, num_seqs, horizon) -> scalar
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from npu_rl.registry import Registry

if TYPE_CHECKING:
    from npu_rl.config import ActorConfig, AlgorithmConfig

AdvEstimator = Callable[..., torch.Tensor]
PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossAgg = Callable[..., torch.Tensor]
Count = float | torch.Tensor  # a token or sequence total, possibly all-reduced

ADV_ESTIMATORS: Registry[AdvEstimator] = Registry(
    "advantage estimator",
    redirects={
        "ppo": "'gae': PPO's estimator, which trains a critic",
        "dr_grpo": "'grpo' with norm_adv_by_std_in_grpo=false",
    },
)
POLICY_LOSSES: Registry[PolicyLoss] = Registry(
    "policy loss",
    redirects={
        "bypass_mode": "algorithm.rollout_correction.bypass_mode=true",
        "reinforce": "algorithm.rollout_correction.bypass_mode=true with loss_type=reinforce",
    },
)
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")
LOSS_AGG_MODES: Registry[LossAgg] = Registry("loss aggregation mode")


def register_adv_estimator(
    name: str, *, group_relative: bool = False, greedy_baseline: bool = False, needs_sum_pi_squared: bool = False
) -> Callable[[AdvEstimator], AdvEstimator]:
    """Register an advantage estimator; `group_relative` ones compare the samples of one prompt, so
    config validation warns when rollout.n=1 gives them groups of one; `greedy_baseline` ones read
    `AdvantageInputs.baselines`, so each step also decodes every prompt greedily and grades it (ReMax);
    `needs_sum_pi_squared` ones read the old policy's log-probs and sum_v pi_v^2 per token, so the
    trainer always runs the old-log-prob pass and has it compute that sum (optimal token baselines)."""

    def wrap(fn: AdvEstimator) -> AdvEstimator:
        fn.group_relative = group_relative  # type: ignore[attr-defined]
        fn.greedy_baseline = greedy_baseline  # type: ignore[attr-defined]
        fn.needs_sum_pi_squared = needs_sum_pi_squared  # type: ignore[attr-defined]
        return ADV_ESTIMATORS.register(name)(fn)

    return wrap


def register_policy_loss(name: str, *, agg_mode: str | None = None) -> Callable[[PolicyLoss], PolicyLoss]:
    """Register a policy loss; one defined per sequence (verl's `sapo`, `geo_mean`) names the aggregation
    it must be reduced with, which then replaces actor.loss_agg_mode for the policy term (as in verl)."""

    def wrap(fn: PolicyLoss) -> PolicyLoss:
        fn.agg_mode = agg_mode  # type: ignore[attr-defined]
        return POLICY_LOSSES.register(name)(fn)

    return wrap


def policy_agg_mode(policy_loss: str, loss_agg_mode: str) -> str:
    """How the policy loss `policy_loss` reduces: its own fixed mode, if it has one, else `loss_agg_mode`."""
    return getattr(POLICY_LOSSES.get(policy_loss, key="actor.policy_loss"), "agg_mode", None) or loss_agg_mode


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked entries; 0 when the mask is empty (never NaN)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


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


def _log_ratio(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    return logprob.float() - ref_logprob.float()


@KL_ESTIMATORS.register("k1", "kl")
def kl_k1(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """log pi - log pi_ref: unbiased, high variance, can be negative."""
    return _log_ratio(logprob, ref_logprob)


@KL_ESTIMATORS.register("k2", "mse")
def kl_k2(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """Half the squared log-ratio."""
    return 0.5 * _log_ratio(logprob, ref_logprob).square()


@KL_ESTIMATORS.register("k3", "low_var_kl")
def kl_k3(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """ratio - 1 - log ratio with ratio = pi_ref / pi (unbiased, non-negative), clamped to [-10, 10] as
    in verl so that a single wild token cannot blow up the loss."""
    neg = (-_log_ratio(logprob, ref_logprob)).clamp(-20.0, 20.0)
    return (neg.exp() - neg - 1).clamp(-10.0, 10.0)


@KL_ESTIMATORS.register("abs")
def kl_abs(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """|log pi - log pi_ref| (verl's `abs`)."""
    return _log_ratio(logprob, ref_logprob).abs()


def _straight_through(value_fn: KLEstimator) -> KLEstimator:
    def estimate(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
        value = value_fn(logprob, ref_logprob)
        grad = kl_k2(logprob, ref_logprob)
        return grad - grad.detach() + value.detach()

    estimate.__doc__ = f"The value of {value_fn.__name__} with the gradient of k2 (verl 0.9.1's '+' suffix)."
    return estimate


KL_ESTIMATORS.register("k1+", "kl+")(_straight_through(kl_k1))
KL_ESTIMATORS.register("k3+", "low_var_kl+")(_straight_through(kl_k3))


class AdaptiveKLController:
    """The in-reward KL coefficient, adapted towards a target KL (Ziegler et al. 2019; verl's
    AdaptiveKLController): after each step, coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon,
    where `kl` is the step's mean per-sequence token-mean KL and `n` the step's number of sequences.
    With `target_kl=None` the coefficient stays fixed (verl's FixedKLController)."""

    def __init__(self, init_coef: float, target_kl: float | None = None, horizon: int = 10000) -> None:
        if target_kl is not None and (target_kl <= 0 or horizon <= 0):
            raise ValueError(f"adaptive KL needs target_kl > 0 and horizon > 0, got {target_kl}, {horizon}")
        self.value, self.target, self.horizon = float(init_coef), target_kl, horizon

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> AdaptiveKLController:
        """algorithm.kl_coef, moved when algorithm.kl_ctrl.type is adaptive."""
        target = cfg.kl_ctrl.target_kl if cfg.kl_ctrl.type == "adaptive" else None
        return cls(cfg.kl_coef, target, cfg.kl_ctrl.horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def kl_estimate(logprob: torch.Tensor, ref_logprob: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token logprobs by the estimator `kind`."""
    return KL_ESTIMATORS.get(kind)(logprob, ref_logprob)


@LOSS_AGG_MODES.register("token-mean")
def agg_token_mean(
    loss_mat: torch.Tensor, mask: torch.Tensor, num_tokens: Count, num_seqs: Count, horizon: int
) -> torch.Tensor:
    """Every token of the mini-batch weighs the same (long answers weigh more)."""
    return (loss_mat * mask).sum() / torch.as_tensor(num_tokens, dtype=loss_mat.dtype).clamp(min=1)


@LOSS_AGG_MODES.register("token-sum")
def agg_token_sum(
    loss_mat: torch.Tensor, mask: torch.Tensor, num_tokens: Count, num_seqs: Count, horizon: int
) -> torch.Tensor:
    """Sum over every valid token of the mini-batch (no normalisation; scales with batch and length)."""
    return (loss_mat * mask).sum()


def _seq_mean(per_seq: torch.Tensor, num_seqs: Count) -> torch.Tensor:
    return per_seq.sum() / torch.as_tensor(num_seqs, dtype=per_seq.dtype).clamp(min=1)


@LOSS_AGG_MODES.register("seq-mean-token-sum")
def agg_seq_mean_token_sum(
    loss_mat: torch.Tensor, mask: torch.Tensor, num_tokens: Count, num_seqs: Count, horizon: int
) -> torch.Tensor:
    """Sum per sequence, mean over sequences."""
    return _seq_mean((loss_mat * mask).sum(dim=-1), num_seqs)


@LOSS_AGG_MODES.register("seq-mean-token-mean")
def agg_seq_mean_token_mean(
    loss_mat: torch.Tensor, mask: torch.Tensor, num_tokens: Count, num_seqs: Count, horizon: int
) -> torch.Tensor:
    """Mean per sequence, then mean over sequences (the GRPO paper)."""
    return _seq_mean((loss_mat * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1), num_seqs)


@LOSS_AGG_MODES.register("seq-mean-token-sum-norm")
def agg_seq_mean_token_sum_norm(
    loss_mat: torch.Tensor, mask: torch.Tensor, num_tokens: Count, num_seqs: Count, horizon: int
) -> torch.Tensor:
    """Sum per sequence divided by a fixed horizon, mean over sequences (Dr.GRPO: no length bias)."""
    return _seq_mean((loss_mat * mask).sum(dim=-1) / float(horizon), num_seqs)


def count_sequences(mask: torch.Tensor) -> torch.Tensor:
    """Rows with at least one valid token: the sequences the seq-mean modes average over."""
    return (mask.sum(dim=-1) > 0).sum().to(torch.float32)


def aggregate_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
    horizon: int | None = None,
) -> torch.Tensor:
    """Reduce a [N, T] per-token loss to a scalar with the LOSS_AGG_MODES member `mode`.

    In the seq-mean modes a row whose mask is all zero is not a sequence (it adds 0 and is not
    counted in `num_seqs`), as in verl 0.9.1: such rows occur with uneven micro-batches.

    `num_tokens` / `num_seqs` are the mini-batch totals (across micro-batches and ranks). Passing
    them makes the sum of micro-batch losses equal the loss of the whole mini-batch, so gradient
    accumulation and data parallelism do not change the result. They default to this batch's own
    totals; `horizon` defaults to T.
    """
    fn = LOSS_AGG_MODES.get(mode)
    mask = mask.to(loss_mat.dtype)
    num_tokens = num_tokens if num_tokens is not None else mask.sum()
    num_seqs = num_seqs if num_seqs is not None else count_sequences(mask)
    return fn(loss_mat, mask, num_tokens, num_seqs, horizon or loss_mat.shape[-1])


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


@register_policy_loss("vanilla")
def vanilla_policy_loss(
    logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: ActorConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """verl's `vanilla` loss mode: dual-clip PPO with the actor's clip ratios (see ppo_policy_loss)."""
    return ppo_policy_loss(
        logprob, old_logprob, advantages, mask, cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c
    )


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) along the last dim, computed stably from logsumexp."""
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)
    return log_z - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


def sum_pi_squared_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """sum_v softmax(logits)_v^2 along the last dim, as exp(logsumexp(2 x) - 2 logsumexp(x)) (stable, no
    softmax tensor kept; verl's calculate_sum_pi_squared_from_logits)."""
    logits = logits.float()
    return torch.exp(torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * torch.logsumexp(logits, dim=-1))


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] without materialising the full log-softmax tensor."""
    logits = logits.float()
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


# The other families' members register themselves on import (they import the registries above).
from npu_rl.algos import advantages as _advantages  # noqa: E402, F401
from npu_rl.algos import baselines as _baselines  # noqa: E402, F401
from npu_rl.algos import cov_losses as _cov_losses  # noqa: E402, F401
from npu_rl.algos import policy_losses as _policy_losses  # noqa: E402, F401
from npu_rl.algos import token_baselines as _token_baselines  # noqa: E402, F401
