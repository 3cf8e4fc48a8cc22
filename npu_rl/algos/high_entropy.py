"""Train on the high-entropy minority of tokens (Wang et al. 2025, "Beyond the 80/20 Rule:
High-Entropy Minority Tokens Drive Effective Reinforcement Learning for LLM Reasoning").

In chain-of-thought the few tokens where the policy is uncertain ("forking" tokens) carry most of
what RL changes; restricting the policy gradient to the top 20% of tokens by entropy matched or beat
full-gradient training in the paper. This is TRL's `top_entropy_quantile` (`actor.top_entropy_quantile`
here): the other tokens keep their place in the loss's normaliser, only their policy term is zeroed.
"""

from __future__ import annotations

import torch


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, keep: float) -> torch.Tensor:
    """[N, T] bool: valid tokens whose entropy is at least the (1 - keep) quantile of the valid tokens'
    entropies (linear interpolation, as torch.quantile and TRL). keep = 1 keeps every valid token, 0
    only the highest-entropy one(s); no valid token: all False."""
    valid = mask > 0
    entropy = entropy.detach().float()
    values = entropy[valid].sort().values
    if values.numel() == 0:
        return valid
    position = (1.0 - keep) * (values.numel() - 1)  # sorting avoids torch.quantile's input-size limit
    low = int(position)
    high = min(low + 1, values.numel() - 1)
    threshold = values[low] + (values[high] - values[low]) * (position - low)
    return valid & (entropy >= threshold)
