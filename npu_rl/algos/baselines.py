"""Outcome estimators with other baselines or scales than GRPO's: verl's `grpo_passk`, `opo`, `gpg` and
`remax`, TRL's batch-scaled GRPO (`grpo_batch_std`) and its per-term normalization (`gdpo`). Each reads
only the rows' scores (gdpo: each reward term's), groups and response lengths (remax also the greedy
answers' scores); a statistic taken over the whole step batch goes through `inputs.all_sum`, so rows
sharded over ranks give the one-process numbers (verl computes advantages on its driver's full batch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from npu_rl.algos.advantages import AdvantageInputs, group_means, per_token, reward_to_go
from npu_rl.core_algos import register_adv_estimator

TRL_STD_EPS = 1e-4  # TRL adds 1e-4 to the std (verl's GRPO: 1e-6)


@register_adv_estimator("grpo_passk", group_relative=True)
def grpo_passk(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass@k training (Chen et al. 2025): only each group's best sample is credited, with r_max - r_2nd
    (divided by the group's unbiased std + eps when algorithm.norm_adv_by_std_in_grpo); every other
    sample gets 0. Matches verl's compute_grpo_passk_outcome_advantage (as read: main of 2026-01-29,
    0.8.0.dev): the best is torch.topk's pick among the group's rows in batch order (ties: topk's
    choice), an all-equal group gets 0, and a group of one is an error (verl raises too) - here one
    that names rollout.n.
    """
    scores = inputs.scores
    adv = torch.zeros_like(scores)
    for g in torch.unique(inputs.group):
        rows = (inputs.group == g).nonzero().flatten()
        if rows.numel() < 2:
            raise ValueError(
                f"grpo_passk needs at least 2 samples per prompt (rollout.n >= 2); prompt {int(g)} has {rows.numel()}"
            )
        group = scores[rows]
        top, where = torch.topk(group, 2)
        value = top[0] - top[1]
        if inputs.norm_by_std:
            value = value / (torch.std(group) + inputs.eps)
        adv[rows[where[0]]] = value
    return per_token(adv, inputs.response_mask)


@register_adv_estimator("opo", group_relative=True)
def opo(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """OPO (Hao et al. 2025): r_i minus the group's length-weighted mean reward sum(len_j r_j) / sum(len_j),
    the variance-optimal baseline for on-policy sequences; no std scaling. Lengths are the rows'
    valid response tokens. Matches verl's compute_opo_outcome_advantage (main of 2026-01-29): a group
    of one has baseline 0 (keeps its raw reward). verl divides by the plain length sum; here it is clamped at 1,
    which changes nothing for rows that generated a token (EOS counts) and avoids 0/0 otherwise.
    """
    scores = inputs.scores
    lengths = inputs.response_mask.float().sum(-1)
    _, inverse, counts = torch.unique(inputs.group, return_inverse=True, return_counts=True)
    weighted = torch.zeros(counts.numel()).index_add_(0, inverse, lengths * scores)
    total = torch.zeros(counts.numel()).index_add_(0, inverse, lengths)
    baseline = torch.where(counts > 1, weighted / total.clamp(min=1), torch.zeros_like(weighted))
    return per_token(scores - baseline[inverse], inputs.response_mask)


@register_adv_estimator("gpg", group_relative=True)
def gpg(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """GPG (Chu et al. 2025): alpha * (r_i - group mean), alpha = rows in the step batch / rows with a
    non-zero score (at least 1), which rescales the gradient for the groups that carry signal. Use
    with actor.policy_loss=gpg (no ratio, no clip). Matches verl's compute_gpg_outcome_advantage (main
    of 2026-01-29) with its defaults (f_norm 1): a group of one has mean 0; alpha counts all ranks' rows.
    """
    scores = inputs.scores
    counts = inputs.all_sum(torch.tensor([float(scores.numel()), float(torch.count_nonzero(scores))]))
    alpha = counts[0] / counts[1].clamp(min=1)
    mean, n = group_means(scores, inputs.group)
    return per_token(alpha * (scores - torch.where(n > 1, mean, torch.zeros_like(mean))), inputs.response_mask)


@register_adv_estimator("grpo_batch_std", group_relative=True)
def grpo_batch_std(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's GRPO with `scale_rewards="batch"` (the Lite PPO recipe): (r_i - group mean) / (std of every
    score in the step batch + 1e-4), the std unbiased and taken over all ranks, as TRL takes it over
    the gathered batch. A group of one has its own score as mean (advantage 0), as in TRL; with a single
    score in the whole batch the std is 0 (TRL's rule). `algorithm.norm_adv_by_std_in_grpo=false` leaves
    the std out (TRL's `scale_rewards="none"`, which is also `grpo` with that key).
    """
    scores = inputs.scores
    mean, _ = group_means(scores, inputs.group)
    centred = scores - mean
    if not inputs.norm_by_std:
        return per_token(centred, inputs.response_mask)
    _, std = batch_mean_std(scores, inputs.all_sum)
    return per_token(centred / (std + TRL_STD_EPS), inputs.response_mask)


def batch_mean_std(
    values: torch.Tensor, all_sum: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std of [N] values over every rank's rows (TRL's over the gathered batch); the
    std is 0 when the whole batch holds a single value, as in TRL."""
    total = all_sum(torch.stack([values.sum(), torch.tensor(float(values.numel()))]))
    count = float(total[1])
    mean = total[0] / count
    squares = all_sum((values - mean).square().sum())
    return mean, torch.sqrt(squares / (count - 1)) if count > 1 else torch.zeros(())


@register_adv_estimator("gdpo", group_relative=True)
def gdpo(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """GDPO (Group reward-Decoupled normalization, 2026): every reward term is normalized within its group
    on its own, (r_k - mean_g(r_k)) / (std_g(r_k) + 1e-4), the normalized terms are summed with their
    weights, and the sum is normalized over the whole step batch, (s - mean) / (std + 1e-4); stds
    unbiased, the batch statistics over all ranks. So a term with a wide range (a length bonus) cannot
    drown a 0/1 correctness term, as it can when the weighted sum is normalized once (`grpo`).

    Matches TRL's GRPOTrainer with multi_objective_aggregation="normalize_then_sum" (TRL main of
    2026-07-24), its eps and its NaN rules: a term that did not apply to a row (a TRL-style function
    returned None: NaN here) is left out of its group's mean and std and adds nothing to the row's sum;
    a term applied to a single row of a group normalizes to nothing (TRL's std is NaN there); a row no
    term applied to gets advantage 0 and stays out of the batch statistics; a group of one normalizes
    to 0. The terms are reward.functions in order (or the one custom / built-in reward), then the
    reward model's, then DAPO's overlong penalty and the tool-use shaping when on, each weight 1.
    """
    if inputs.term_scores is None or inputs.term_weights is None:
        raise ValueError("gdpo needs each reward term's score (AdvantageInputs.term_scores), got None")
    terms = inputs.term_scores.float()
    applied = ~terms.isnan()
    values = torch.where(applied, terms, torch.zeros_like(terms))
    _, inverse, counts = torch.unique(inputs.group, return_inverse=True, return_counts=True)
    n = torch.zeros(len(counts), terms.shape[1]).index_add_(0, inverse, applied.float())
    sums = torch.zeros(len(counts), terms.shape[1]).index_add_(0, inverse, values)
    centred = torch.where(applied, values - (sums / n.clamp(min=1))[inverse], torch.zeros_like(values))
    squares = torch.zeros(len(counts), terms.shape[1]).index_add_(0, inverse, centred.square())
    std = (squares / (n - 1).clamp(min=1)).sqrt()[inverse]
    single_sample = (counts == 1)[inverse][:, None]  # TRL with one generation per prompt: std 0, term 0
    usable = applied & ((n > 1)[inverse] | single_sample)
    normed = torch.where(usable, centred / (std + TRL_STD_EPS), torch.zeros_like(centred))
    combined = (normed * inputs.term_weights.float()).sum(-1)
    scorable = applied.any(-1)
    mean, batch_std = batch_mean_std(combined[scorable], inputs.all_sum)
    adv = torch.where(scorable, (combined - mean) / (batch_std + TRL_STD_EPS), torch.zeros_like(combined))
    return per_token(adv, inputs.response_mask)


@register_adv_estimator("remax", greedy_baseline=True)
def remax(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """ReMax (Li et al. 2023): G_t - b on every valid token, G_t the reward-to-go (sum of the token rewards
    from t on: the score, minus the KL penalties still ahead when KL is in the reward) and b the score
    of the greedy answer to the same prompt, decoded and graded each step with the sampled ones. No
    std, no whitening; works with rollout.n=1 (the paper's setting). Matches verl's
    compute_remax_outcome_advantage (main of 2026-01-29) on valid tokens; both outputs are zeroed on
    mask-0 tokens here (verl leaves the return on a tool observation's tokens, which the loss masks).
    """
    if inputs.baselines is None:
        raise ValueError("remax needs the greedy answers' scores (AdvantageInputs.baselines), got None")
    returns = reward_to_go(inputs)
    return returns - inputs.baselines.float()[:, None] * inputs.response_mask.float(), returns
