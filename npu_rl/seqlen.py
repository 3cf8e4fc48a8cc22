"""Token-budget micro-batches (verl's `use_dynamic_bsz`): rows grouped by token count, not by number.

With a long tail of response lengths, a fixed number of rows per micro-batch is either too few
for short rows (many small, inefficient passes) or too many for long ones (memory). Here each
micro-batch holds about `max_tokens` tokens: the number of parts is the least that fits the
budget on average (the same on every rank, so FSDP's collectives pair up), and rows are spread
over the parts by longest-processing-time-first: longest row first, each into the part with the
fewest tokens so far (ties to the lower index), which balances the parts' totals. Deterministic
for given lengths; each part keeps its rows in batch order, so rows of one prompt that land in
the same part still share that prompt's pass.

The loss of every micro-batch is normalised by mini-batch totals (actor.update_policy), so the
summed gradient does not depend on how rows are split: it equals the fixed-size path's.
"""

from __future__ import annotations

import heapq
import math

import torch

from npu_rl import distributed


def balanced_parts(costs: list[int], parts: int) -> list[list[int]]:
    """Row indices in `parts` groups with balanced cost sums (LPT), each group in ascending order,
    groups ordered by their first row. `parts` must be between 1 and len(costs)."""
    if not 1 <= parts <= len(costs):
        raise ValueError(f"cannot split {len(costs)} rows into {parts} non-empty parts")
    heap = [(0, part) for part in range(parts)]
    members: list[list[int]] = [[] for _ in range(parts)]
    for row in sorted(range(len(costs)), key=lambda r: (-costs[r], r)):
        total, part = heapq.heappop(heap)
        members[part].append(row)
        heapq.heappush(heap, (total + costs[row], part))
    return sorted((sorted(m) for m in members), key=lambda m: m[0])


def num_parts(costs: list[int], max_tokens: int) -> int:
    """Parts for this rank's rows: enough for the budget on average, agreed across ranks (the
    largest count, capped by the fewest rows any rank holds so no rank gets an empty part)."""
    local = max(1, math.ceil(sum(costs) / max_tokens))
    agreed = distributed.all_reduce(torch.tensor([local, -len(costs)], dtype=torch.float32), "max")
    return int(min(agreed[0], -agreed[1]))


def token_budget_rows(costs: list[int], max_tokens: int) -> list[list[int]]:
    """The rows of each micro-batch under a `max_tokens` budget (a collective under torchrun)."""
    if not costs:
        return []
    return balanced_parts(costs, num_parts(costs, max_tokens))
