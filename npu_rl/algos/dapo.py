"""DAPO's data-side pieces (Yu et al. 2025): dynamic sampling and the soft overlong punishment.

Dynamic sampling drops groups whose rewards are all equal (they have zero GRPO advantage, so they
only dilute the batch) and samples more prompts until the step has `train_batch_size` informative
groups. The filter is a pure function of the graded rows; `dynamic_sampling` is the loop, given a
callable that generates and grades one more batch of this rank's prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from npu_rl.reward_manager import RewardBatch
from npu_rl.rollout.batch import RolloutBatch


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer_len: int, factor: float) -> torch.Tensor:
    """Soft overlong punishment, added to the score: 0 up to max_new_tokens - buffer_len tokens, then
    falling linearly to -factor at max_new_tokens: min(-(L - (max - buffer)) / buffer * factor, 0).

    Matches verl 0.9.1's DAPO reward manager (reward.overlong_buffer.{len,penalty_factor}); a response
    cut at the limit gets exactly -factor.
    """
    exceed = lengths.float() - (max_new_tokens - buffer_len)
    return (-exceed / buffer_len * factor).clamp(max=0.0)


def informative_groups(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[num_groups] bool: groups whose metric values are not all equal (population std > 0).

    Matches verl 0.9.1's filter_groups: a group of one is kept (it has no spread to lose), and a
    group with no rows is dropped.
    """
    values = values.double()
    counts = torch.bincount(group, minlength=num_groups)
    sums = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, values)
    means = sums / counts.clamp(min=1)
    spread = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, (values - means[group]).abs())
    return (counts == 1) | ((counts > 1) & (spread > 0))


def metric_values(graded: RewardBatch, metric: str) -> torch.Tensor:
    """The per-row value filter_groups compares: `acc` (1/0; unjudged rows count as 0) or the score with
    its shaping terms (`score`, verl's `seq_reward`; also `seq_final_reward`, which differs from it in verl
    only by a KL penalty in the reward, not yet applied when groups are filtered here)."""
    if metric == "acc":
        return torch.tensor([float(bool(a)) for a in graded.acc])
    return torch.tensor(graded.scores, dtype=torch.float64)


def _padded(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))


def take_groups(
    parts: Sequence[tuple[RolloutBatch, RewardBatch, torch.Tensor]], limit: int, row_components: bool = False
) -> tuple[RolloutBatch, RewardBatch]:
    """The first `limit` kept groups over `parts` (each a batch, its grades and its [num_groups] keep
    mask), as one batch whose groups are renumbered 0..limit-1 in order and whose rows are ordered by
    group; response columns are right-padded (values past `lengths` are never read) to the widest
    part. Reward components and the timeout and error counts cover every graded row (they describe
    the grader's work, not the kept rows); with `row_components` the components come per kept row
    instead, only those with one value per row in every part (npu_rl.balance)."""
    width = max(p[0].response_ids.shape[1] for p in parts)
    pieces: list[RolloutBatch] = []
    records, scores, acc, baselines, terms = [], [], [], [], []
    aligned = [{k for k, v in p[1].components.items() if len(v) == len(p[0])} for p in parts]
    per_row: dict[str, list[float]] = {name: [] for name in sorted(set.intersection(*aligned))}
    for batch, graded, keep in parts:
        for g in keep.nonzero().squeeze(-1).tolist():
            if len(records) == limit:
                break
            rows = (batch.group == g).nonzero().squeeze(-1)
            piece = batch.select(rows)
            piece.group = torch.full((len(rows),), len(records), dtype=torch.long)
            if piece.token_mask is None and any(p[0].token_mask is not None for p in parts):
                cols = torch.arange(piece.response_ids.shape[1])[None, :]
                piece.token_mask = (cols < piece.lengths[:, None]).float()  # every real token is the policy's
            pieces.append(piece)
            scores.extend(graded.scores[i] for i in rows.tolist())
            acc.extend(graded.acc[i] for i in rows.tolist())
            if graded.baselines is not None:
                baselines.extend(graded.baselines[i] for i in rows.tolist())
            if graded.terms:
                terms.extend(graded.terms[i] for i in rows.tolist())
            for name, values in per_row.items():
                values.extend(graded.components[name][i] for i in rows.tolist())
            records.append(batch.records[g])
    metric_names = set.intersection(*(set(p.row_metrics) for p in pieces))  # one engine: the same names
    merged = RolloutBatch(
        response_ids=torch.cat([_padded(p.response_ids, width) for p in pieces]),
        logprobs=torch.cat([_padded(p.logprobs, width) for p in pieces]),
        lengths=torch.cat([p.lengths for p in pieces]),
        finish_reasons=[reason for p in pieces for reason in p.finish_reasons],
        group=torch.cat([p.group for p in pieces]),
        sample=torch.cat([p.sample for p in pieces]),
        token_mask=None if pieces[0].token_mask is None else torch.cat([_padded(p.token_mask, width) for p in pieces]),
        row_metrics={name: torch.cat([p.row_metrics[name] for p in pieces]) for name in sorted(metric_names)},
        records=records,
    )
    components: dict[str, list[float]] = {}
    for _, graded, _ in parts:
        for name, values in graded.components.items():
            components.setdefault(name, []).extend(values)
    components = per_row if row_components else components
    timeouts = sum(p[1].timeouts for p in parts)
    errors = sum(p[1].errors for p in parts)
    kept_baselines = baselines if parts[0][1].baselines is not None else None
    weights = parts[0][1].term_weights
    return merged, RewardBatch(scores, acc, components, timeouts, errors, kept_baselines, terms, weights)


class DynamicSamplingError(RuntimeError):
    """The generation-batch cap was reached before the step had enough informative groups."""


def dynamic_sampling(
    first: tuple[RolloutBatch, RewardBatch],
    need: int,
    metric: str,
    max_num_gen_batches: int,
    more: Callable[[], tuple[RolloutBatch, RewardBatch]],
    any_rank_short: Callable[[bool], bool],
) -> tuple[RolloutBatch, RewardBatch, int]:
    """DAPO dynamic sampling on this rank: keep groups whose `metric` differs between samples, call
    `more()` for further graded batches until every rank holds `need` of them (`any_rank_short(short)`
    is the caller's collective, one per batch, so ranks generate in lockstep), keep the first `need`;
    also return how many generation batches it took (`batch/num_gen_batches`); `max_num_gen_batches` > 0
    caps them.

    Filtering per rank keeps the mini-batches whole groups with the same count on every rank, with
    no gather of rollouts; the price is that the kept set depends on the world size (verl filters the
    gathered batch)."""
    rollout, graded = first
    parts, kept, num_gen = [], 0, 1
    while True:
        keep = informative_groups(metric_values(graded, metric), rollout.group, rollout.num_groups)
        parts.append((rollout, graded, keep))
        kept += int(keep.sum())
        if not any_rank_short(kept < need):
            return (*take_groups(parts, need), num_gen)
        if 0 < max_num_gen_batches <= num_gen:
            raise DynamicSamplingError(
                f"dynamic sampling found {kept} of {need} groups with unequal rewards on this rank after "
                f"{num_gen} generation batches (algorithm.filter_groups.max_num_gen_batches="
                f"{max_num_gen_batches}): the prompts are too easy or too hard for the policy; raise "
                "algorithm.filter_groups.max_num_gen_batches (0: no cap), raise rollout.n, or filter the data"
            )
        rollout, graded = more()
        num_gen += 1
