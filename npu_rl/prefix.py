"""Shared-prompt forward: each distinct prompt is run once, its n responses reuse its key/values.

GRPO scores n responses per prompt, and the prompt is often as long as a response or longer.
A plain forward over [prompt | response] rows recomputes every prompt n times in the reference,
old-logprob and training passes. Here the distinct prompts go through the model once with a KV
cache, the cache rows are gathered back to one per response (a differentiable index, so the
prompt's gradient is the sum over its responses), and the responses run on top of it. The
result equals the plain forward up to floating-point reassociation; only the FLOPs of the
repeated prompts are gone. Llama-family models take the fused path of npu_rl.llama (prompts and
responses packed into one token matrix); others run twice through transformers with a KV cache.

Rows sharing a prompt are found from the batch itself (consecutive rows with the same prompt
columns), so any slicing of a prompt-major batch into micro-batches works unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from npu_rl import cpu_linear, llama


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each run of identical consecutive prompts, run index of every row)."""
    same = (prompt_ids[1:] == prompt_ids[:-1]).all(-1) & (prompt_mask[1:] == prompt_mask[:-1]).all(-1)
    starts = torch.cat([same.new_ones(1), ~same])
    return starts.nonzero().squeeze(-1), starts.long().cumsum(0) - 1


def can_share_prompts(model: nn.Module) -> bool:
    """The cache path needs a cache that survives the forward: gradient checkpointing drops it in training."""
    return not (model.training and getattr(model, "is_gradient_checkpointing", False))


def response_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    width: int,
) -> torch.Tensor | None:
    """Logits predicting the last `width` columns of each row ([N, width, V]), or None when the
    plain forward is as cheap (a model without the fused path and no shared prompt).

    Rows are left-padded prompts followed by `width` response columns, as in `PolicyBatch`.
    """
    prompt_width = input_ids.shape[1] - width
    fused = llama.supports(model)
    if prompt_width <= 0 or width <= 0:
        return None
    starts, group = prompt_groups(input_ids[:, :prompt_width], attention_mask[:, :prompt_width])
    if len(starts) == len(input_ids) and not fused:
        return None
    # Columns that are padding in every distinct prompt carry nothing: drop them.
    first_col = int(attention_mask[starts, :prompt_width].any(0).nonzero()[0])
    cols = slice(first_col, prompt_width)
    tail = slice(prompt_width, prompt_width + width - 1)  # the last response token predicts nothing
    if fused:
        return llama.shared_prompt_logits(
            model,
            input_ids[starts, cols],
            attention_mask[starts, cols],
            position_ids[starts, cols],
            input_ids[:, tail],
            attention_mask[:, tail],
            position_ids[:, tail],
            group,
        )
    with cpu_linear.linear_mode():
        cache = DynamicCache()
        head = model(
            input_ids=input_ids[starts, cols],
            attention_mask=attention_mask[starts, cols],
            position_ids=position_ids[starts, cols],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        first = head.logits[:, -1:][group]  # the last prompt token predicts response token 0
        if width == 1:
            return first
        cache = head.past_key_values
        cache.batch_select_indices(group)
        tail_out = model(
            input_ids=input_ids[:, tail],
            attention_mask=attention_mask[:, first_col : tail.stop],
            position_ids=position_ids[:, tail],
            past_key_values=cache,
            use_cache=True,
        )
    return torch.cat([first, tail_out.logits], dim=1)
