"""The policy side of a GRPO step: log-probabilities of responses and the PPO update.

A batch is laid out as verl does: each row is the left-padded prompt followed by the
right-padded response, so every response starts at the same column and per-token tensors are
simply [N, T]. The update follows the configured mini-batch / micro-batch split and normalises
each micro-batch's loss by mini-batch totals, so gradient accumulation and data parallelism give
the same gradient as one big batch.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from npu_rl import core_algos, distributed, optim, packing, prefix, seqlen
from npu_rl.algos import high_entropy, off_policy_mask, rollout_correction
from npu_rl.algos.adaptive_entropy import AdaptiveEntropy
from npu_rl.compute import ComputePlan
from npu_rl.config import ActorConfig
from npu_rl.config.objective import RolloutCorrectionConfig
from npu_rl.metrics import StepStats
from npu_rl.rollout.batch import RolloutBatch
from npu_rl.token_stats import TokenStats, chunked_stats, on_grid, token_stats


@dataclass
class PolicyBatch:
    """Per-sequence tensors of one rank's share of a step (N rows, T response columns).

    `group` is each row's prompt (GRPO group) as in the rollout batch: prompt sharing and
    mini-batch slicing read it, so nothing here assumes a number of samples per prompt.
    """

    input_ids: torch.Tensor  # [N, P + T]
    attention_mask: torch.Tensor  # [N, P + T]
    position_ids: torch.Tensor  # [N, P + T]
    response_mask: torch.Tensor  # [N, T] float
    group: torch.Tensor  # [N] long
    advantages: torch.Tensor | None = None  # [N, T]
    old_logprobs: torch.Tensor | None = None  # [N, T]
    ref_logprobs: torch.Tensor | None = None  # [N, T]
    rollout_logprobs: torch.Tensor | None = None  # [N, T], as the generation engine reported them
    values: torch.Tensor | None = None  # [N, T], the critic's at rollout (PPO with GAE)
    returns: torch.Tensor | None = None  # [N, T], the critic's regression targets

    @property
    def response_width(self) -> int:
        return self.response_mask.shape[1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> PolicyBatch:
        return PolicyBatch(
            **{f.name: (fn(v) if (v := getattr(self, f.name)) is not None else None) for f in fields(self)}
        )

    def slice(self, start: int, stop: int) -> PolicyBatch:
        return self._map(lambda v: v[start:stop])

    def select(self, rows: torch.Tensor) -> PolicyBatch:
        return self._map(lambda v: v[rows])

    def to(self, device: torch.device) -> PolicyBatch:
        return self._map(lambda v: v.to(device))

    def split_groups(self, groups_per_part: int) -> list[PolicyBatch]:
        """Consecutive parts of `groups_per_part` whole groups each (in order of first appearance):
        the mini-batches, whose sizes in rows follow the groups' sizes."""
        order = torch.unique_consecutive(self.group)
        parts = []
        for start in range(0, len(order), groups_per_part):
            rows = torch.isin(self.group, order[start : start + groups_per_part]).nonzero().squeeze(-1)
            parts.append(self.select(rows))
        return parts


def build_policy_batch(batch: RolloutBatch, pad_token_id: int) -> PolicyBatch:
    """Join each row's prompt (read through its group) with its sampled response."""
    prompts = [r.prompt_ids for r in batch.records]
    width = batch.response_ids.shape[1]
    prompt_width = max((len(p) for p in prompts), default=0)
    prompt_ids = torch.full((len(prompts), prompt_width), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), prompt_width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        prompt_ids[row, prompt_width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[row, prompt_width - len(prompt) :] = 1
    attended = (torch.arange(width)[None, :] < batch.lengths[:, None]).long()  # tool answers are attended
    input_ids = torch.cat([prompt_ids[batch.group], batch.response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask[batch.group], attended], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    # The loss mask is the rollout's: 0 at tool answers inside a multi-turn response.
    return PolicyBatch(input_ids, attention_mask, position_ids, batch.response_mask.float(), batch.group.clone())


def forward_logprobs(
    model: nn.Module,
    batch: PolicyBatch,
    temperature: float,
    plan: ComputePlan,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    with_sum_pi_squared: bool = False,
) -> TokenStats:
    """Log-probabilities (and entropies, and sums of squared probabilities) of the response tokens
    under temperature-scaled logits.

    The entropy is only differentiated when it is part of the loss (`entropy_grad`): as a metric it
    would otherwise keep a second vocabulary-sized graph alive through backward.
    `plan` (npu_rl.compute) says how the forward runs: `plain` is one forward over the rows (the
    reference path); `shared_prefix` / `fused` run each distinct prompt once (npu_rl.prefix),
    `packed` runs only the real tokens (npu_rl.packing); all give the same numbers up to fp32
    reassociation. Response columns that are padding in every
    row are not run (they are returned as 0).
    """
    width = batch.response_width
    extras = (with_entropy, entropy_grad, with_sum_pi_squared)
    # Responses are left-aligned; the attention mask also covers tool answers (the loss mask does not).
    used = max(1, int(batch.attention_mask[:, -width:].sum(-1).max().item()))
    keep = batch.input_ids.shape[1] - width + used
    ids, mask, pos = batch.input_ids[:, :keep], batch.attention_mask[:, :keep], batch.position_ids[:, :keep]
    if plan.forward == "packed":
        layout = packing.build_layout(ids, mask, pos, batch.response_mask[:, :used], batch.group)
        if layout is not None:
            linear = plan.linears.linear
            if plan.head_chunk:  # the head and its statistics chunk by chunk, each recomputed in backward
                head = functools.partial(
                    chunked_stats, model, layout.targets, temperature, extras, plan.head_chunk, linear=linear
                )
                stats = packing.packed_logits(
                    model, layout, plan.attention, linear, plan.checkpoint, head, offload=plan.offload
                )
            else:
                logits = packing.packed_logits(
                    model, layout, plan.attention, linear, plan.checkpoint, offload=plan.offload
                )
                stats = token_stats(logits, layout.targets, temperature, *extras)
            return on_grid(stats, layout, width)
    logits = None
    if plan.forward not in ("plain", "packed"):
        logits = prefix.response_logits(model, plan, ids, mask, pos, batch.group, used)
    if logits is None:
        with plan.linears.around():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=used + 1)
        logits = out.logits[:, :-1]  # position t predicts token t + 1
    stats = token_stats(logits, ids[:, -used:], temperature, *extras)
    if used < width:
        stats = TokenStats(*(None if t is None else nn.functional.pad(t, (0, width - used)) for t in stats))
    return stats


@torch.no_grad()
def compute_logprobs(
    model: nn.Module,
    batch: PolicyBatch,
    temperature: float,
    micro_batch_size: int,
    plan: ComputePlan,
    device: torch.device | None = None,
    max_tokens: int | None = None,
    with_sum_pi_squared: bool = False,
) -> TokenStats:
    """Logprobs of a whole batch without gradients, in micro-batches (old policy or reference), and
    with `with_sum_pi_squared` each token's sum over the vocabulary of pi^2 (optimal token baselines).

    Micro-batches hold `micro_batch_size` rows, or about `max_tokens` tokens when that is given
    (npu_rl.seqlen; a collective under torchrun). `device` is where the model computes (default:
    where its parameters are), which with offloaded FSDP shards is not where its parameters rest.
    """
    device = device or next(model.parameters()).device
    logprobs = torch.zeros(batch.response_mask.shape)
    sum_pi_squared = torch.zeros(batch.response_mask.shape) if with_sum_pi_squared else None
    for rows in micro_batch_rows(batch, micro_batch_size, max_tokens):
        micro = batch.select(rows).to(device)
        stats = forward_logprobs(model, micro, temperature, plan, with_sum_pi_squared=with_sum_pi_squared)
        logprobs[rows] = stats.logprobs.cpu()
        if sum_pi_squared is not None:
            sum_pi_squared[rows] = stats.sum_pi_squared.cpu()
    return TokenStats(logprobs, sum_pi_squared=sum_pi_squared)


def without_truncated(batch: PolicyBatch, truncated: list[bool]) -> PolicyBatch:
    """The batch with the loss mask of truncated rows zeroed (TRL's mask_truncated_completions): they
    keep their place, attention and advantages (computed with their group), but add no loss and no
    tokens to the loss normalisers; in the seq-mean modes they are no sequence (verl's rule for a
    fully masked row; TRL's `grpo` loss still counts them in its mean over sequences)."""
    keep = torch.tensor([not t for t in truncated], dtype=batch.response_mask.dtype)
    return replace(batch, response_mask=batch.response_mask * keep[:, None])


def micro_batch_rows(batch: PolicyBatch, size: int, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Row indices of each micro-batch: consecutive runs of `size` rows, or, with a token budget
    (`use_dynamic_bsz`), parts of about `max_tokens` tokens (each prompt counted once) balanced by
    npu_rl.seqlen (the same number of parts on every rank)."""
    if max_tokens is None:
        return [torch.arange(start, min(start + size, len(batch))) for start in range(0, len(batch), size)]
    width = batch.response_width
    prompt = batch.attention_mask[:, :-width].sum(-1).tolist()
    # what the forward runs: tool answers and loss-masked rows included
    response = batch.attention_mask[:, -width:].sum(-1).long().tolist()
    parts = seqlen.token_budget_rows(batch.group.tolist(), prompt, response, max_tokens)
    return [torch.tensor(rows) for rows in parts]


def clipped_step(model: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip the (sharded) gradient norm and take the optimizer step; a NaN/inf gradient skips the
    step instead of destroying the weights. Returns the norm before clipping."""
    grad_norm = distributed.clip_grad_norm_(model, max_norm)
    if torch.isfinite(grad_norm):
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def _micro_step(
    model: nn.Module,
    micro: PolicyBatch,
    cfg: ActorConfig,
    temperature: float,
    plan: ComputePlan,
    num_tokens: torch.Tensor,
    num_seqs: torch.Tensor,
    horizon: int,
    world_size: int,
    bypass: RolloutCorrectionConfig | None = None,
    entropy_coeff: float = 0.0,
) -> dict[str, float]:
    """Forward + backward of one micro-batch; its loss is its share of the mini-batch loss.

    With `bypass` (rollout correction's bypass mode) the old log-probs are the engine's and the policy
    term is rollout_correction.bypass_loss, over the tokens it does not reject.
    Returns this rank's additive shares of the mini-batch's statistics (summed over micro-batches
    and ranks they give the mini-batch's value).
    """
    mask = micro.response_mask
    logprobs, entropy, _ = forward_logprobs(
        model, micro, temperature, plan, with_entropy=True, entropy_grad=entropy_coeff != 0
    )
    old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
    if bypass is not None:
        pg_mat, pg_stats, pg_mask = rollout_correction.bypass_loss(logprobs, old, micro.advantages, mask, cfg, bypass)
    else:
        policy_loss = core_algos.POLICY_LOSSES.get(cfg.policy_loss, key="actor.policy_loss")
        (pg_mat, pg_stats), pg_mask = policy_loss(logprobs, old, micro.advantages, mask, cfg), mask
    if cfg.off_policy_mask_threshold is not None and micro.rollout_logprobs is not None:
        keep = off_policy_mask.off_policy_keep(
            micro.advantages, logprobs, micro.rollout_logprobs, mask, cfg.off_policy_mask_threshold
        )
        pg_mat = pg_mat * keep
        pg_stats["off_policy_masked_fraction"] = core_algos.masked_mean(1.0 - keep, mask.float())
    if cfg.top_entropy_quantile < 1.0:  # only the uncertain ("forking") tokens keep a policy term
        assert entropy is not None
        selected = high_entropy.high_entropy_mask(entropy, mask, cfg.top_entropy_quantile)
        pg_mat = pg_mat * selected
        pg_stats["entropy_selected_fraction"] = core_algos.masked_mean(selected.float(), mask.float())
    pg_agg = core_algos.policy_agg_mode(cfg.policy_loss, cfg.loss_agg_mode)
    pg_loss = core_algos.aggregate_loss(pg_mat, pg_mask, pg_agg, num_tokens, num_seqs, horizon)
    entropy_loss = core_algos.aggregate_loss(entropy, mask, cfg.loss_agg_mode, num_tokens, num_seqs, horizon)
    loss = pg_loss - entropy_coeff * entropy_loss
    weight = mask.sum().item() / max(1.0, float(num_tokens))
    stats = {"actor/pg_loss": pg_loss.item(), "actor/entropy": entropy_loss.item()}
    stats.update({f"actor/{key}": value.item() * weight for key, value in pg_stats.items()})
    if cfg.use_kl_loss and micro.ref_logprobs is not None:
        kl_mat = core_algos.kl_estimate(logprobs, micro.ref_logprobs, cfg.kl_loss_type)
        if cfg.kl_loss_bias_correction:  # the ratio carries gradient too, as in TRL
            kl_mat = kl_mat * torch.exp(logprobs - old)
        kl_loss = core_algos.aggregate_loss(kl_mat, mask, cfg.loss_agg_mode, num_tokens, num_seqs, horizon)
        loss = loss + cfg.kl_loss_coef * kl_loss
        stats["actor/kl_loss"] = kl_loss.item()
    stats["_entropy_sum"] = float((entropy.detach() * mask).sum())  # adaptive entropy's measurement
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
    plan: ComputePlan,
    mini_batch_groups: int,
    horizon: int,
    stats: StepStats,
    device: torch.device | None = None,
    world_size: int = 1,
    bypass: RolloutCorrectionConfig | None = None,
    entropy_control: AdaptiveEntropy | None = None,
) -> None:
    """PPO epochs over mini-batches with micro-batch accumulation; one optimizer step per mini-batch.

    A mini-batch is `mini_batch_groups` whole groups (prompts) of this rank, whatever their sizes;
    its micro-batches are fixed in rows or, with `actor.use_dynamic_bsz`, in tokens (micro_batch_rows).
    When `batch.old_logprobs` is None the update is on-policy (one update per rollout), so the old
    policy is the current one and its logprobs are the detached current logprobs: no extra
    forward pass. The first mini-batch's forward, made before any weight changes, is also compared
    with the engine's logprobs (rollout/logprob_diff) to expose a mismatch between generation and
    training numerics. Statistics go into `stats` (averaged over the mini-batches), reduced over
    ranks with the step's other metrics.
    """
    device = device or next(model.parameters()).device
    model.train()
    sums: dict[str, float] = defaultdict(float)  # this rank's share, summed over mini-batches
    grad_norms: list[float] = []
    minis = batch.split_groups(mini_batch_groups)
    for epoch in range(cfg.ppo_epochs):
        for mini_index, mini in enumerate(minis):
            # Mini-batch totals across ranks normalise every micro-batch's loss (see aggregate_loss).
            # A fully masked row is no sequence for the seq-mean modes (verl 0.9.1).
            seqs = float(core_algos.count_sequences(mini.response_mask))
            totals = distributed.all_reduce(torch.tensor([mini.response_mask.sum().item(), seqs]), "sum")
            optimizer.zero_grad(set_to_none=True)
            budget = cfg.ppo_max_token_len_per_device if cfg.use_dynamic_bsz else None
            coeff = cfg.entropy_coeff if entropy_control is None else entropy_control.applied()
            entropy_sum = 0.0
            for rows in micro_batch_rows(mini, cfg.ppo_micro_batch_size_per_device, budget):
                micro = mini.select(rows).to(device)
                micro_stats = _micro_step(
                    model, micro, cfg, temperature, plan, totals[0], totals[1], horizon, world_size, bypass, coeff
                )
                entropy_sum += micro_stats["_entropy_sum"]
                for key, value in micro_stats.items():
                    if not key.startswith("_") or (epoch == 0 and mini_index == 0):
                        sums[key] += value
            grad_norms.append(clipped_step(model, optimizer, cfg.grad_clip))
            if entropy_control is not None:  # the mini-batch's mean token entropy over all ranks
                entropy_sum = float(distributed.all_reduce(torch.tensor([entropy_sum]), "sum")[0])
                entropy_control.update(entropy_sum / max(float(totals[0]), 1.0))
    updates = max(1, len(grad_norms))  # the same count on every rank
    for key, value in sums.items():
        if not key.startswith("_"):
            stats.add_sum(key, value / updates)
    stats.add_max("actor/grad_norm", sum(grad_norms) / updates)  # a global norm: equal on every rank
    if entropy_control is not None:  # equal on every rank
        stats.add_max("actor/entropy_coeff", entropy_control.coef)
    stats.add_max("actor/lr", scheduler.get_last_lr()[0])
    optim.advance_schedule(scheduler)
    stats.add_max("actor/nonfinite_skipped", float(sum(not math.isfinite(g) for g in grad_norms)))  # same on all ranks
    if batch.rollout_logprobs is not None:
        stats.add_ratio("rollout/logprob_diff", sums["_diff_sum"], sums["_diff_tokens"])
