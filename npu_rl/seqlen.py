"""Token-budget micro-batches (verl's `use_dynamic_bsz`): rows grouped by token count, not by number.

With a long tail of response lengths, a fixed number of rows per micro-batch is either too few
for short rows (many small, inefficient passes) or too many for long ones (memory). Here each
micro-batch holds about `max_tokens` tokens: the number of parts is the least that fits the
budget on average (the same on every rank, so FSDP's collectives pair up), and rows are spread
over the parts by longest-processing-time-first: longest first, each into the part with the
fewest tokens so far (ties to the lower index), which balances the parts' totals. What is spread
is a prompt's responses together (cut into chunks only where they exceed the budget), costed
with the prompt once: GRPO's shared-prompt saving survives. Deterministic for given lengths;
each part keeps its rows in batch order.

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


def prompt_units(
    group: list[int], prompt: list[int], response: list[int], max_tokens: int
) -> list[tuple[list[int], int]]:
    """Rows gathered into units that keep a prompt's responses together: each group's rows in
    batch order, cut into consecutive chunks whose cost (the prompt once, as the shared-prompt and
    packed passes run it, plus the responses) stays within `max_tokens`. (rows, cost) per unit."""
    rows_of: list[list[int]] = []
    cost_of: list[int] = []
    open_unit: dict[int, int] = {}  # group -> index of its unit still being filled
    for row, (g, p, r) in enumerate(zip(group, prompt, response, strict=True)):
        unit = open_unit.get(g)
        if unit is not None and cost_of[unit] + r <= max_tokens:
            rows_of[unit].append(row)
            cost_of[unit] += r
            continue
        open_unit[g] = len(rows_of)
        rows_of.append([row])
        cost_of.append(p + r)
    return list(zip(rows_of, cost_of, strict=True))


def num_parts(costs: list[int], max_tokens: int) -> int:
    """Parts for this rank's units: enough for the budget on average, agreed across ranks (the
    largest count, capped by the fewest units any rank holds so no rank gets an empty part)."""
    local = max(1, math.ceil(sum(costs) / max_tokens))
    agreed = distributed.all_reduce(torch.tensor([local, -len(costs)], dtype=torch.float32), "max")
    return int(min(agreed[0], -agreed[1]))


def token_budget_rows(group: list[int], prompt: list[int], response: list[int], max_tokens: int) -> list[list[int]]:
    """The rows of each micro-batch under a `max_tokens` budget (a collective under torchrun):
    prompt units (`prompt_units`) balanced over the agreed number of parts, rows in batch order."""
    if not group:
        return []
    units = prompt_units(group, prompt, response, max_tokens)
    costs = [cost for _, cost in units]
    parts = balanced_parts(costs, num_parts(costs, max_tokens))
    return sorted((sorted(row for u in part for row in units[u][0]) for part in parts), key=lambda rows: rows[0])
