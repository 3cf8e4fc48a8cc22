"""Off-policy sequence masking (DeepSeek-V3.2, eq. 9): drop the policy term of a sequence whose
advantage is negative and whose tokens the current policy has drifted far from.

A negative-advantage sequence sampled long ago (or by an engine that disagrees with the trainer)
pushes the policy away from text it no longer produces; its gradient is noise that can destabilise
long off-policy runs. The drift is the sequence's mean of log pi_sampler - log pi_theta over its valid
tokens (a KL estimate: the sampler's log-probs are the engine's). TRL's `off_policy_mask_threshold`
(`actor.off_policy_mask_threshold` here): masked tokens keep their place in the loss normaliser.
"""

from __future__ import annotations

import torch


def off_policy_keep(
    advantages: torch.Tensor,
    logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """[N, T] float: 1 where the policy term is kept, i.e. the advantage is >= 0 or the row's mean drift
    log pi_sampler - log pi_theta is <= threshold (TRL's get_off_policy_mask, main of 2026-07-24; with
    token-level advantages, e.g. GAE's, the sign is read per token). An empty row keeps its (masked) tokens."""
    mask = mask.float()
    drift = ((sampler_logprobs - logprobs.detach()) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return ((advantages >= 0) | (drift <= threshold)[:, None]).to(mask.dtype)
