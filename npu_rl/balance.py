"""verl's `trainer.balance_batch`: the ranks' shares of a step balanced in tokens.

Each rank generates its own prompts' rollouts, so a long tail of response lengths leaves the ranks
with different token totals, and every training pass then waits at each FSDP collective for the
rank with the most. After grading, the ranks exchange whole groups (GRPO groups stay together: their
advantages are per group) so that within every mini-batch each rank holds the same number of groups
with token totals as even as a greedy partition makes them. Mini-batch k holds the same groups as
before, only on other ranks, and losses are normalised by mini-batch totals over all ranks, so the
update does not change (the 1-vs-2-rank training equality tests run with it on).

verl partitions the whole batch once (Karmarkar-Karp into equal-sized parts) before dispatching it;
here the same objective is met per mini-batch, longest group first into the lightest rank with room.
The step logs verl's global_seqlen/* (`seqlen_balance`), counted as verl counts them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from npu_rl import distributed
from npu_rl.algos.dapo import take_groups
from npu_rl.reward_manager import RewardBatch
from npu_rl.rollout.batch import RolloutBatch

Gather = Callable[[object], list[object]]


def equal_size_parts(costs: list[int], parts: int) -> list[list[int]]:
    """Indices of `costs` split into `parts` sets of equal size with balanced sums: longest first,
    each into the set with the smallest sum that still has room (ties to the lower set); each set
    ascending. Deterministic; len(costs) must be a multiple of `parts`."""
    size, rest = divmod(len(costs), parts)
    if rest:
        raise ValueError(f"{len(costs)} groups cannot be split into {parts} equal parts")
    totals, members = [0] * parts, [[] for _ in range(parts)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        part = min((p for p in range(parts) if len(members[p]) < size), key=lambda p: (totals[p], p))
        members[part].append(i)
        totals[part] += costs[i]
    return [sorted(m) for m in members]


def group_costs(batch: RolloutBatch, per_row: bool = False) -> list[int]:
    """Each group's tokens as the packed passes run them: its prompt once plus its responses; with
    `per_row`, as rows count them (the prompt once per row: verl's attention-mask sum)."""
    responses = torch.zeros(batch.num_groups, dtype=torch.long).index_add_(0, batch.group, batch.lengths.long())
    prompts = batch.group_sizes if per_row else torch.ones(batch.num_groups, dtype=torch.long)
    return [len(r.prompt_ids) * int(k) + int(n) for r, k, n in zip(batch.records, prompts, responses, strict=True)]


def seqlen_balance(before: list[int], after: list[int]) -> dict[str, float]:
    """verl's global_seqlen/* (log_seqlen_unbalance) from each rank's tokens (rows' prompt and response
    tokens) before and after the exchange: min, max, minmax_diff and mean of the former, balanced_min and
    balanced_max of the latter."""
    return {
        "min": min(before),
        "max": max(before),
        "minmax_diff": max(before) - min(before),
        "balanced_min": min(after),
        "balanced_max": max(after),
        "mean": sum(before) / len(before),
    }


def balance_groups(
    rollout: RolloutBatch,
    graded: RewardBatch,
    mini_groups: int,
    rank: int,
    world: int,
    gather: Gather = distributed.all_gather_object,
) -> tuple[RolloutBatch, RewardBatch, dict[str, float]]:
    """This rank's rows after the exchange (one all-gather of every rank's rollouts and grades), and
    `seqlen_balance`'s metrics (the same on every rank): in each block of `mini_groups` groups (a
    mini-batch), the world's groups are split into equal-sized, token-balanced sets and this rank takes
    set `rank`, in mini-batch order. Per-row grades and the reward components with one value per row
    follow their rows; the timeout and error counts stay with the rank that graded them. Alone, a rank
    keeps its rows (and logs verl's trivial global_seqlen)."""
    if world == 1:
        total = sum(group_costs(rollout, per_row=True))
        return rollout, graded, seqlen_balance([total], [total])
    everyone = gather((rollout, graded))
    costs = [group_costs(batch) for batch, _ in everyone]  # type: ignore[misc]
    row_tokens = [group_costs(batch, per_row=True) for batch, _ in everyone]  # type: ignore[misc]
    after = [0] * world
    num = rollout.num_groups  # the same on every rank (shard_prompts, dynamic sampling's limit)
    parts: list[tuple[RolloutBatch, RewardBatch, torch.Tensor]] = []
    for start in range(0, num, mini_groups):
        owners = [(r, g) for r in range(world) for g in range(start, min(start + mini_groups, num))]
        sets = equal_size_parts([costs[r][g] for r, g in owners], world)
        for p, members in enumerate(sets):
            after[p] += sum(row_tokens[r][g] for r, g in (owners[i] for i in members))
        mine = [owners[i] for i in sets[rank]]
        for r, (batch, grades) in enumerate(everyone):  # type: ignore[misc]
            keep = torch.zeros(batch.num_groups, dtype=torch.bool)
            keep[[g for owner, g in mine if owner == r]] = True
            parts.append((batch, grades, keep))
    merged, merged_grades = take_groups(parts, num, row_components=True)
    # components without one value per row on every rank (they cover rows dynamic sampling dropped)
    # stay this rank's own, as its grader produced them
    merged_grades.components = {**graded.components, **merged_grades.components}
    merged_grades.timeouts, merged_grades.errors = graded.timeouts, graded.errors
    return merged, merged_grades, seqlen_balance([sum(tokens) for tokens in row_tokens], after)
