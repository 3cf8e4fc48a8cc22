"""The policy side of a GRPO step: log-probabilities of responses and the PPO update.

A batch is laid out as verl does: each row is the left-padded prompt followed by the
right-padded response, so every response starts at the same column and per-token tensors are
simply [N, T]. The update follows the configured mini-batch / micro-batch split and normalises
each micro-batch's loss by mini-batch totals, so gradient accumulation and data parallelism give
the same gradient as one big batch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
from torch import nn

from npu_rl import core_algos, cpu_linear, distributed, prefix
from npu_rl.config import ActorConfig, OptimConfig


@dataclass
class PolicyBatch:
    """Per-sequence tensors of one rank's share of a step (N rows, T response columns)."""

    input_ids: torch.Tensor  # [N, P + T]
    attention_mask: torch.Tensor  # [N, P + T]
    position_ids: torch.Tensor  # [N, P + T]
    response_mask: torch.Tensor  # [N, T] float
    advantages: torch.Tensor | None = None  # [N, T]
    old_logprobs: torch.Tensor | None = None  # [N, T]
    ref_logprobs: torch.Tensor | None = None  # [N, T]
    rollout_logprobs: torch.Tensor | None = None  # [N, T], as the generation engine reported them

    @property
    def response_width(self) -> int:
        return self.response_mask.shape[1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> PolicyBatch:
        return PolicyBatch(
            **{f.name: (v[start:stop] if (v := getattr(self, f.name)) is not None else None) for f in fields(self)}
        )

    def to(self, device: torch.device) -> PolicyBatch:
        return PolicyBatch(
            **{f.name: (v.to(device) if (v := getattr(self, f.name)) is not None else None) for f in fields(self)}
        )


def build_policy_batch(
    prompts: list[list[int]], responses: torch.Tensor, lengths: torch.Tensor, pad_token_id: int, n: int
) -> PolicyBatch:
    """Join each prompt (repeated n times, prompt-major) with its sampled responses."""
    num_rows, width = responses.shape
    prompt_width = max(len(p) for p in prompts)
    prompt_ids = torch.full((len(prompts), prompt_width), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), prompt_width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        prompt_ids[row, prompt_width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[row, prompt_width - len(prompt) :] = 1
    response_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    input_ids = torch.cat([prompt_ids.repeat_interleave(n, dim=0), responses], dim=1)
    attention_mask = torch.cat([prompt_mask.repeat_interleave(n, dim=0), response_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    assert input_ids.shape[0] == num_rows
    return PolicyBatch(input_ids, attention_mask, position_ids, response_mask.float())


def forward_logprobs(
    model: nn.Module,
    batch: PolicyBatch,
    temperature: float,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    *,
    share_prompts: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (and entropies) of the response tokens under temperature-scaled logits.

    The entropy is only differentiated when it is part of the loss (`entropy_grad`): as a metric it
    would otherwise keep a second vocabulary-sized graph alive through backward.
    Two shortcuts give the same numbers as one plain forward over the rows: response columns that
    are padding in every row are not run (they are returned as 0), and with `share_prompts` each
    distinct prompt is run once for all its responses (npu_rl.prefix) and CPU fp32 matmuls run on
    oneDNN (npu_rl.cpu_linear); `share_prompts=False` is the straightforward reference path.
    """
    width = batch.response_width
    used = max(1, int(batch.response_mask.sum(-1).max().item()))  # responses are left-aligned
    keep = batch.input_ids.shape[1] - width + used
    ids, mask, pos = batch.input_ids[:, :keep], batch.attention_mask[:, :keep], batch.position_ids[:, :keep]
    fast = share_prompts and prefix.can_share_prompts(model)  # not under gradient checkpointing
    logits = prefix.response_logits(model, ids, mask, pos, used) if fast else None
    if logits is None:
        with cpu_linear.linear_mode(fast):
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=used + 1)
        logits = out.logits[:, :-1]  # position t predicts token t + 1
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    logprobs = core_algos.logprobs_from_logits(logits, ids[:, -used:])
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = core_algos.entropy_from_logits(logits if entropy_grad else logits.detach())
    if used < width:
        logprobs = nn.functional.pad(logprobs, (0, width - used))
        entropy = None if entropy is None else nn.functional.pad(entropy, (0, width - used))
    return logprobs, entropy


@torch.no_grad()
def compute_logprobs(
    model: nn.Module,
    batch: PolicyBatch,
    temperature: float,
    micro_batch_size: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Logprobs of a whole batch without gradients, in micro-batches (old policy or reference).

    `device` is where the model computes (default: where its parameters are), which with
    offloaded FSDP shards is not where its parameters rest.
    """
    device = device or next(model.parameters()).device
    parts = [
        forward_logprobs(model, batch.slice(i, i + micro_batch_size).to(device), temperature)[0].cpu()
        for i in range(0, len(batch), micro_batch_size)
    ]
    return torch.cat(parts)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_multiplier(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Linear warmup, then constant / cosine / linear decay down to `min_lr_ratio`."""
    warmup = cfg.lr_warmup_steps or int(cfg.lr_warmup_steps_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.lr_scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_scheduler == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, cfg))


def _micro_batches(batch: PolicyBatch, size: int) -> Iterator[PolicyBatch]:
    for start in range(0, len(batch), size):
        yield batch.slice(start, start + size)


def _micro_step(
    model: nn.Module,
    micro: PolicyBatch,
    cfg: ActorConfig,
    temperature: float,
    num_tokens: torch.Tensor,
    num_seqs: torch.Tensor,
    horizon: int,
    world_size: int,
) -> dict[str, float]:
    """Forward + backward of one micro-batch; its loss is its share of the mini-batch loss."""
    mask = micro.response_mask
    logprobs, entropy = forward_logprobs(
        model, micro, temperature, with_entropy=True, entropy_grad=cfg.entropy_coeff != 0
    )
    old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
    pg_mat, pg_stats = core_algos.ppo_policy_loss(
        logprobs, old, micro.advantages, mask, cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c
    )
    pg_loss = core_algos.aggregate_loss(pg_mat, mask, cfg.loss_agg_mode, num_tokens, num_seqs, horizon)
    entropy_loss = core_algos.aggregate_loss(entropy, mask, cfg.loss_agg_mode, num_tokens, num_seqs, horizon)
    loss = pg_loss - cfg.entropy_coeff * entropy_loss
    weight = mask.sum().item() / max(1.0, float(num_tokens))
    stats = {"actor/pg_loss": pg_loss.item(), "actor/entropy": entropy_loss.item()}
    stats.update({f"actor/{key}": value.item() * weight for key, value in pg_stats.items()})
    if cfg.use_kl_loss and micro.ref_logprobs is not None:
        kl_mat = core_algos.kl_estimate(logprobs, micro.ref_logprobs, cfg.kl_loss_type)
        kl_loss = core_algos.aggregate_loss(kl_mat, mask, cfg.loss_agg_mode, num_tokens, num_seqs, horizon)
        loss = loss + cfg.kl_loss_coef * kl_loss
        stats["actor/kl_loss"] = kl_loss.item()
    if micro.rollout_logprobs is not None:
        stats["_diff_sum"] = float(((logprobs.detach() - micro.rollout_logprobs).abs() * mask).sum())
        stats["_diff_tokens"] = float(mask.sum())
    # Data-parallel gradients are averaged over ranks; the loss is already a global mean.
    (loss * world_size).backward()
    return stats


def update_policy(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: PolicyBatch,
    cfg: ActorConfig,
    temperature: float,
    mini_batch_rows: int,
    horizon: int,
    device: torch.device | None = None,
    world_size: int = 1,
) -> dict[str, float]:
    """PPO epochs over mini-batches with micro-batch accumulation; one optimizer step per mini-batch.

    `mini_batch_rows` is this rank's rows per mini-batch. When `batch.old_logprobs` is None the
    update is on-policy (one update per rollout), so the old policy is the current one and its
    logprobs are the detached current logprobs: no extra forward pass. The first mini-batch's
    forward, made before any weight changes, is also compared with the engine's logprobs
    (rollout/logprob_diff) to expose a mismatch between generation and training numerics.
    """
    device = device or next(model.parameters()).device
    model.train()
    history: dict[str, list[float]] = defaultdict(list)
    diff = torch.zeros(2, dtype=torch.float64)  # sum of |logprob differences|, tokens compared
    for epoch in range(cfg.ppo_epochs):
        for mini_index, mini in enumerate(_micro_batches(batch, mini_batch_rows)):
            # Mini-batch totals across ranks normalise every micro-batch's loss (see aggregate_loss).
            totals = distributed.all_reduce(torch.tensor([mini.response_mask.sum().item(), float(len(mini))]), "sum")
            stats: dict[str, float] = defaultdict(float)
            optimizer.zero_grad(set_to_none=True)
            for micro in _micro_batches(mini, cfg.ppo_micro_batch_size_per_device):
                micro_stats = _micro_step(
                    model, micro.to(device), cfg, temperature, totals[0], totals[1], horizon, world_size
                )
                for key, value in micro_stats.items():
                    stats[key] += value
            if epoch == 0 and mini_index == 0:
                diff += torch.tensor([stats.get("_diff_sum", 0.0), stats.get("_diff_tokens", 0.0)])
            grad_norm = distributed.clip_grad_norm_(model, cfg.grad_clip)
            if torch.isfinite(grad_norm):
                optimizer.step()
            else:  # a NaN/inf gradient skips the step instead of destroying the weights
                optimizer.zero_grad(set_to_none=True)
            history["actor/grad_norm"].append(float(grad_norm))
            for key, value in stats.items():
                if not key.startswith("_"):
                    history[key].append(float(distributed.all_reduce(torch.tensor(value), "sum")))
    history["actor/lr"].append(scheduler.get_last_lr()[0])
    scheduler.step()
    metrics = {key: sum(values) / len(values) for key, values in history.items()}
    metrics["actor/nonfinite_skipped"] = float(sum(not math.isfinite(g) for g in history["actor/grad_norm"]))
    if batch.rollout_logprobs is not None:
        diff = distributed.all_reduce(diff, "sum")
        metrics["rollout/logprob_diff"] = float(diff[0] / diff[1].clamp(min=1))
    return metrics
