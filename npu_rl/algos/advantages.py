"""Advantage estimators: every member of ADV_ESTIMATORS takes one `AdvantageInputs` and returns
(advantages [N, T], returns [N, T]), both zero on mask-0 tokens.

Sequence-level estimators (grpo, rloo, reinforce_plus_plus_baseline) read only each row's summed
reward and its group; token-level ones (reinforce_plus_plus, gae) read the per-token rewards
(the score on the last response token, minus a per-token KL penalty when KL is in the reward) and,
for GAE, the critic's values. Batch whitening sums its statistics through `inputs.all_sum`, so an
estimator sees the whole step batch when the rows are sharded over ranks (verl computes advantages
on the full batch on its driver).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from npu_rl.core_algos import grpo_advantages, register_adv_estimator

if TYPE_CHECKING:
    from npu_rl.reward_manager import RewardBatch


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class AdvantageInputs:
    """What an estimator may read. `token_rewards` [N, T] holds each row's score on its last valid
    token (see `place_scores`); `values` [N, T] are the critic's (GAE only); `baselines` [N] are set
    for estimators registered with `greedy_baseline` (ReMax), `old_logprobs` and `sum_pi_squared` for
    those registered with `needs_sum_pi_squared`; `term_scores` whenever the reward reports its terms."""

    token_rewards: torch.Tensor
    response_mask: torch.Tensor
    group: torch.Tensor
    values: torch.Tensor | None = None
    gamma: float = 1.0
    lam: float = 1.0
    norm_by_std: bool = True
    eps: float = 1e-6
    all_sum: Callable[[torch.Tensor], torch.Tensor] = _identity  # sums a tensor over data-parallel ranks
    baselines: torch.Tensor | None = None  # [N] the score of the greedy answer to each row's prompt (remax)
    old_logprobs: torch.Tensor | None = None  # [N, T] the trainer's old policy (optimal token baselines)
    sum_pi_squared: torch.Tensor | None = None  # [N, T] sum over the vocabulary of pi^2 (optimal token baselines)
    is_weights: torch.Tensor | None = None  # [N, T] rollout correction's truncated importance weights, if on
    term_scores: torch.Tensor | None = None  # [N, K] each reward term's own score (gdpo)
    term_weights: torch.Tensor | None = None  # [K] the terms' weights in the score (gdpo)

    @property
    def scores(self) -> torch.Tensor:
        """Each row's total reward (outcome estimators' input), as verl's token_level_rewards.sum(-1)."""
        return self.token_rewards.float().sum(dim=-1)


def reward_inputs(graded: RewardBatch) -> dict[str, torch.Tensor | None]:
    """The AdvantageInputs fields the reward side fills: the greedy answers' scores (remax) and each
    reward term's score with its weight (gdpo); None where the reward did not report them."""
    return {
        "baselines": None if graded.baselines is None else torch.tensor(graded.baselines),
        "term_scores": torch.tensor(graded.terms) if graded.terms else None,
        "term_weights": torch.tensor(graded.term_weights) if graded.terms else None,
    }


def reward_to_go(inputs: AdvantageInputs) -> torch.Tensor:
    """[N, T] the sum of the token rewards from t on (undiscounted), zero on mask-0 tokens: ReMax's and
    the optimal token baselines' returns."""
    mask = inputs.response_mask.float()
    return (inputs.token_rewards.float() * mask).flip(-1).cumsum(-1).flip(-1) * mask


def place_scores(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[N] scores -> [N, T] token rewards with the score on each row's last valid token (verl's
    reward manager). A row with no response token keeps its score on column 0, so its total is kept.

    "Last valid" is the last mask-1 column, not the count of valid tokens minus one: a multi-turn
    response's mask has holes at tool answers, and its final turn is the model's."""
    rewards = torch.zeros(response_mask.shape, dtype=torch.float32)
    columns = torch.arange(response_mask.shape[1])
    last = torch.where(response_mask.bool(), columns, torch.zeros_like(columns)).amax(dim=-1)
    rewards[torch.arange(len(scores)), last] = scores.float()
    return rewards


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, all_sum: Callable = _identity) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8) over the masked entries, var unbiased (Bessel), as
    verl_F.masked_whiten; the statistics are summed through `all_sum` (all ranks' tokens).

    Matches verl 0.9.1, which raises when fewer than two tokens are valid: we raise too, naming why.
    """
    values, mask = values.float(), mask.float()
    count_sum = all_sum(torch.stack([(values * mask).sum(), mask.sum()]))
    count = float(count_sum[1])
    if count < 2:
        raise ValueError(
            f"batch whitening needs at least 2 valid response tokens in the step batch, got {count:g} "
            "(every response empty?); raise rollout.max_new_tokens or check the stop strings"
        )
    mean = count_sum[0] / count
    var = all_sum(((values - mean).square() * mask).sum()) / count * (count / (count - 1))
    return (values - mean) * torch.rsqrt(var + 1e-8)


def group_means(scores: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's group mean and group size."""
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), dtype=scores.dtype).index_add_(0, inverse, scores)
    return (sums / counts)[inverse], counts[inverse].to(scores.dtype)


def per_token(seq: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    adv = seq[:, None] * mask.float()
    return adv, adv


@register_adv_estimator("grpo", group_relative=True)
def grpo(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: (r - group mean) / (group std + eps); see core_algos.grpo_advantages (matches verl 0.9.1:
    a group of one gets mean 0, std 1)."""
    adv = grpo_advantages(inputs.scores, inputs.group, inputs.norm_by_std, inputs.eps)
    return per_token(adv, inputs.response_mask)


@register_adv_estimator("grpo_vectorized", group_relative=True)
def grpo_vectorized(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's grpo_vectorized: `grpo` with verl's one-pass group variance (sum r^2 - (sum r)^2 / n) / (n - 1)
    floored at eps, so a group whose rewards differ by less than ~1e-3 is divided by sqrt(eps) = 1e-3
    rather than by its own tiny std. A group of one: mean 0, std 1. Matches verl's
    compute_grpo_vectorized_outcome_advantage with verl_utils.groupwise.group_mean_std (main of 2026-01-29)."""
    scores = inputs.scores
    _, inverse, counts = torch.unique(inputs.group, return_inverse=True, return_counts=True)
    n = counts.float()
    s1 = torch.zeros_like(n).index_add_(0, inverse, scores)
    s2 = torch.zeros_like(n).index_add_(0, inverse, scores * scores)
    var = (s2 - s1 * s1 / n) / (n - 1).clamp(min=1)
    single = n <= 1
    mean = torch.where(single, 0.0, s1 / n)[inverse]
    std = torch.where(single, 1.0, var.clamp(min=inputs.eps).sqrt())[inverse]
    adv = (scores - mean) / (std + inputs.eps) if inputs.norm_by_std else scores - mean
    return per_token(adv, inputs.response_mask)


@register_adv_estimator("rloo", group_relative=True)
def rloo(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO: r_i minus the mean of the other n-1 rewards of its group, i.e. (r_i - mean) * n / (n - 1).

    Matches verl 0.9.1: a group of one keeps its raw reward (no baseline); an all-equal group gets 0.
    """
    scores = inputs.scores
    mean, n = group_means(scores, inputs.group)
    adv = torch.where(n > 1, (scores - mean) * n / (n - 1).clamp(min=1), scores)
    return per_token(adv, inputs.response_mask)


@register_adv_estimator("rloo_vectorized", group_relative=True)
def rloo_vectorized(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's rloo_vectorized: `rloo` except that a group of one gets 0, not its raw reward (verl's
    compute_rloo_vectorized_outcome_advantage, main of 2026-01-29, differs from its rloo there too)."""
    mean, n = group_means(inputs.scores, inputs.group)
    adv = torch.where(n > 1, (inputs.scores - mean) * n / (n - 1).clamp(min=1), torch.zeros_like(mean))
    return per_token(adv, inputs.response_mask)


@register_adv_estimator("reinforce_plus_plus_baseline", group_relative=True)
def reinforce_plus_plus_baseline(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline: r - group mean on every valid token, then whitened over all valid tokens
    of the step batch (so longer answers weigh more in the batch statistics).

    Matches verl 0.9.1: a group of one has baseline 0; returns equal the advantages.
    """
    scores = inputs.scores
    mean, n = group_means(scores, inputs.group)
    centred = torch.where(n > 1, scores - mean, scores)
    mask = inputs.response_mask.float()
    adv = masked_whiten(centred[:, None] * mask, mask, inputs.all_sum) * mask
    return adv, adv


@register_adv_estimator("reinforce_plus_plus")
def reinforce_plus_plus(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: discounted return G_t = r_t + gamma * G_{t+1} per token, whitened over all valid
    tokens of the step batch (no critic, no group baseline).

    A token whose mask is 0 inside a response (a tool observation) adds no reward and no discount:
    the return is carried through it unchanged to the tokens before it, as GAE skips observation
    tokens. This is verl 0.9.1's behaviour as the project's field notes record it; the verl source
    read here (main of 2026-01-29, 0.8.0.dev, `compute_reinforce_plus_plus_outcome_advantage`) still
    multiplies the running return by the mask ("reset after EOS"), which zeroes the final reward for
    every token before a tool answer. Both agree when a response has no interior masked span.
    Returns are the undiscounted-by-whitening G_t, zero on mask-0 tokens.
    """
    rewards, mask = inputs.token_rewards.float(), inputs.response_mask.float()
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        running = m * (rewards[:, t] + inputs.gamma * running) + (1 - m) * running
        returns[:, t] = running
    adv = masked_whiten(returns, mask, inputs.all_sum) * mask
    return adv, returns * mask


@register_adv_estimator("gae")
def gae(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation for PPO with a critic.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; tokens whose mask is
    0 are skipped (their value and TD error are not used: the next valid token's value and advantage
    carry through), returns = A + V (before whitening), then A is whitened over the valid tokens of
    the step batch. Matches verl 0.9.1's compute_gae_advantage_return.
    """
    if inputs.values is None:
        raise ValueError("gae needs the critic's values (AdvantageInputs.values), got None")
    rewards, mask, values = inputs.token_rewards.float(), inputs.response_mask.float(), inputs.values.float()
    n, width = rewards.shape
    next_value, last_adv = torch.zeros(n), torch.zeros(n)
    adv = torch.zeros_like(rewards)
    for t in reversed(range(width)):
        m = mask[:, t]
        delta = rewards[:, t] + inputs.gamma * next_value - values[:, t]
        step_adv = delta + inputs.gamma * inputs.lam * last_adv
        next_value = m * values[:, t] + (1 - m) * next_value
        last_adv = m * step_adv + (1 - m) * last_adv
        adv[:, t] = last_adv
    returns = adv + values
    return masked_whiten(adv, mask, inputs.all_sum) * mask, returns * mask
