"""Optimal token baselines (verl's `optimal_token_baseline` and `tir_optimal_token_baseline`): a baseline
per prompt group and per response position instead of one per group.

For position t of a group's responses, B_t = sum_i G_it W_it / (sum_i W_it + 1e-8), where G_it is the
reward-to-go and W_it = sum_{j<=t} (1 - 2 pi_ij + sum_v pi_v^2) the path's accumulated score-norm
proxy (pi_ij the old policy's probability of the sampled token, sum_v pi_v^2 over the vocabulary at
that position, both from the trainer's old-log-prob pass). Positions of high accumulated variance
weigh more in the baseline. With rollout importance weights w (algorithm.rollout_correction), each
term 1 - 2 pi + sum pi^2 is scaled by w^2 first, as verl does. A group of one has baseline 0.

`optimal_token_baseline` aligns positions by column; `tir_optimal_token_baseline` (multi-turn tool use)
aligns them by the index among the response's own (mask-1) tokens, so tool answers do not shift the
positions, and it zeroes the baseline on the part of a group's unique longest response past the
second-longest (where it would otherwise equal the response's own return).
"""

from __future__ import annotations

import torch

from npu_rl.algos.advantages import AdvantageInputs, reward_to_go
from npu_rl.core_algos import register_adv_estimator

EPS = 1e-8  # verl's epsilon (not configurable there either)


def _score_norm(inputs: AdvantageInputs) -> torch.Tensor:
    """[N, T] 1 - 2 pi_t + sum_v pi_v^2 under the old policy, the per-token score-norm proxy (unweighted)."""
    if inputs.old_logprobs is None or inputs.sum_pi_squared is None:
        raise ValueError(
            "optimal token baselines need the old policy's log-probs and sum of squared probabilities "
            "(AdvantageInputs.old_logprobs / sum_pi_squared), got None"
        )
    return 1 - 2 * inputs.old_logprobs.float().exp() + inputs.sum_pi_squared.float()


def _returns_and_path_variance(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward-to-go G [N, T] and the cumulative score-norm proxy W [N, T] (both before any alignment)."""
    w = _score_norm(inputs)
    if inputs.is_weights is not None:
        w = w * inputs.is_weights.float().square()
    return reward_to_go(inputs), (w * inputs.response_mask.float()).cumsum(-1)


def _group_baselines(
    returns: torch.Tensor, w: torch.Tensor, group: torch.Tensor, counted: torch.Tensor
) -> torch.Tensor:
    """Per-position baselines of aligned [N, L] returns and W (zero where a row has no token): each
    group's sum_i G W / (sum_i W + eps) over its rows, 0 for a group with one `counted` row."""
    _, inverse = torch.unique(group, return_inverse=True)
    num_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    width = returns.shape[1]
    num = torch.zeros(num_groups, width).index_add_(0, inverse, returns * w)
    den = torch.zeros(num_groups, width).index_add_(0, inverse, w)
    rows = torch.zeros(num_groups).index_add_(0, inverse, counted.float())
    baselines = (num / (den + EPS))[inverse]
    return torch.where((rows[inverse] > 1)[:, None], baselines, torch.zeros_like(baselines))


@register_adv_estimator("optimal_token_baseline", group_relative=True, needs_sum_pi_squared=True)
def optimal_token_baseline(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """A_t = G_t - B_t with positions aligned by column (module docstring). Matches verl's
    compute_optimal_token_baseline_advantage (main of 2026-01-29) with the defaults verl calls it with
    (handle_zero_tail off): a group counts its empty rows (a group of one answer plus an empty one still
    gets a baseline, which for that answer is almost its own return). Returns are zeroed on mask-0
    tokens here (verl leaves them on tool answers, which the loss masks)."""
    returns, w = _returns_and_path_variance(inputs)
    mask = inputs.response_mask.float()
    counted = torch.ones(len(mask), dtype=torch.bool)
    baselines = _group_baselines(returns, w * mask, inputs.group, counted)
    return (returns - baselines) * mask, returns


@register_adv_estimator("tir_optimal_token_baseline", group_relative=True, needs_sum_pi_squared=True)
def tir_optimal_token_baseline(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """A_t = G_t - B_t with positions aligned by the index among each response's own tokens, and the
    unique longest response's baseline zeroed past the second-longest (module docstring). Matches
    verl's compute_multi_turn_optimal_token_baseline_advantage (main of 2026-01-29, handle_zero_tail
    on, as verl calls it): empty rows are left out of their group. Returns zeroed on mask-0 tokens."""
    returns, w = _returns_and_path_variance(inputs)
    valid = inputs.response_mask.bool()
    lengths = valid.sum(-1)
    width = max(1, int(lengths.max())) if lengths.numel() else 1
    rows, cols = valid.nonzero(as_tuple=True)
    slot = valid.long().cumsum(-1)[rows, cols] - 1  # each valid token's index among its row's tokens
    aligned_returns = torch.zeros(len(valid), width).index_put_((rows, slot), returns[rows, cols])
    aligned_w = torch.zeros(len(valid), width).index_put_((rows, slot), w[rows, cols])
    baselines = _group_baselines(aligned_returns, aligned_w, inputs.group, lengths > 0)
    for g in torch.unique(inputs.group):  # the zero tail: a unique longest response past the runner-up
        members = ((inputs.group == g) & (lengths > 0)).nonzero().flatten()
        if members.numel() < 2:
            continue
        ordered = lengths[members].sort().values
        longest = members[lengths[members] == ordered[-1]]
        if longest.numel() == 1 and ordered[-1] > ordered[-2]:
            baselines[longest[0], int(ordered[-2]) :] = 0.0
    advantages = torch.zeros_like(returns)
    advantages[rows, cols] = aligned_returns[rows, slot] - baselines[rows, slot]
    return advantages, returns


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean over the mask, verl's masked_mean(axis=-1) (its 1e-8 in the denominator)."""
    return (values * mask).sum(-1) / (mask.sum(-1) + 1e-8)


def variance_proxy_rows(inputs: AdvantageInputs, advantages: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-row terms of verl's gradient-variance proxies (compute_variance_proxy_metrics, main of
    2026-01-29), averaged over the step's rows by the caller: with A_i the row's mean advantage and
    W_i = sum_t w_t (w_t = 1 - 2 pi_t + sum pi^2, times the squared IS weight when rollout correction
    weighs), `proxy2_total_power` is A_i^2 max(W_i, 0) (with IS weights: rho_i^2 A_i^2 max(W_i
    unweighted, 0), rho_i the row's mean weight), `expected_a_squared` A_i^2 and `expected_w` W_i."""
    mask = inputs.response_mask.float()
    w = _score_norm(inputs)
    a = _masked_mean(advantages.float(), mask)
    if inputs.is_weights is None:
        w_rows = (w * mask).sum(-1)
        power = a.square() * w_rows.clamp(min=0)
    else:
        squared = inputs.is_weights.float().square()
        w_rows = (w * squared * mask).sum(-1)
        unweighted = (w * squared / squared.clamp(min=1e-10) * mask).sum(-1).clamp(min=0)  # verl's recovery
        power = _masked_mean(inputs.is_weights.float(), mask).square() * a.square() * unweighted
    return {"proxy2_total_power": power, "expected_a_squared": a.square(), "expected_w": w_rows}
