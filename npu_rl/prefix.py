"""Shared-prompt forward: each distinct prompt is run once, its responses reuse its key/values.

GRPO scores n responses per prompt, and the prompt is often as long as a response or longer.
A plain forward over [prompt | response] rows recomputes every prompt n times in the reference,
old-logprob and training passes. Here the distinct prompts go through the model once with a KV
cache, the cache rows are gathered back to one per response (a differentiable index, so the
prompt's gradient is the sum over its responses), and the responses run on top of it. The
result equals the plain forward up to floating-point reassociation; only the FLOPs of the
repeated prompts are gone. With the `fused` plan Llama-family models take npu_rl.llama (prompts
and responses packed into one token matrix); `shared_prefix` runs twice through transformers.

Which rows share a prompt comes from the batch's own group ids (`PolicyBatch.group`), so any
slicing of a batch into micro-batches works unchanged, and groups may have any size.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from npu_rl import llama
from npu_rl.compute import ComputePlan


def group_starts(group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(one representative row per distinct group, each row's index into those representatives)."""
    uniq, inverse = torch.unique(group, return_inverse=True)
    first = torch.full((len(uniq),), len(group), dtype=torch.long, device=group.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(group), device=group.device), reduce="amin")
    return first, inverse


def response_logits(
    model: nn.Module,
    plan: ComputePlan,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    group: torch.Tensor,
    width: int,
) -> torch.Tensor | None:
    """Logits predicting the last `width` columns of each row ([N, width, V]), each distinct
    prompt (by `group`) run once; None where the plain forward is as cheap (no prompt columns, or
    `shared_prefix` with no prompt shared by two rows). Rows are left-padded prompts followed by
    `width` response columns, as in `PolicyBatch`; `plan.forward` is `shared_prefix` or `fused`."""
    prompt_width = input_ids.shape[1] - width
    if prompt_width <= 0 or width <= 0:
        return None
    starts, inverse = group_starts(group)
    # Sharded (FSDP) weights: every rank must make the same model calls, whatever its rows, or the
    # ranks' all-gathers stop pairing up; so no data-dependent shortcut, and the tail always runs.
    sharded = any(hasattr(p, "device_mesh") for p in model.parameters())
    if len(starts) == len(input_ids) and plan.forward != "fused" and not sharded:
        return None
    # Columns that are padding in every distinct prompt carry nothing: drop them.
    first_col = int(attention_mask[starts, :prompt_width].any(0).nonzero()[0])
    cols = slice(first_col, prompt_width)
    tail = slice(prompt_width, prompt_width + width - 1 + sharded)  # the last response token predicts nothing
    if plan.forward == "fused":
        return llama.shared_prompt_logits(
            model,
            input_ids[starts, cols],
            attention_mask[starts, cols],
            position_ids[starts, cols],
            input_ids[:, tail],
            attention_mask[:, tail],
            position_ids[:, tail],
            inverse,
            linear=plan.linears.linear,
            checkpoint=plan.checkpoint,
            offload=plan.offload,
        )
    with plan.linears.around():
        cache = DynamicCache()
        head = model(
            input_ids=input_ids[starts, cols],
            attention_mask=attention_mask[starts, cols],
            position_ids=position_ids[starts, cols],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        first = head.logits[:, -1:][inverse]  # the last prompt token predicts response token 0
        if width == 1 and not sharded:
            return first
        cache = head.past_key_values
        cache.batch_select_indices(inverse)
        tail_out = model(
            input_ids=input_ids[:, tail],
            attention_mask=attention_mask[:, first_col : tail.stop],
            position_ids=position_ids[:, tail],
            past_key_values=cache,
            use_cache=True,
        )
    return torch.cat([first, tail_out.logits[:, : width - 1]], dim=1)
