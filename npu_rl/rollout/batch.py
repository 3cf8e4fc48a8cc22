"""A step's sampled responses as data that knows its own structure.

Each row is one response; `group` says which prompt (GRPO group) it answers and `sample` which
sample of that prompt it is. Reward, policy batch, advantages, mini-batch slicing, prompt sharing
and metrics read the groups from here, so groups may have unequal sizes and rows may be dropped
(dynamic sampling, multi-turn, packing) without any code outside the rollout knowing `rollout.n`.
verl carries the same information as a `uid` per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from npu_rl.data import PromptRecord
from npu_rl.rollout.base import RolloutOutput


@dataclass
class RolloutBatch(RolloutOutput):
    """An engine's `RolloutOutput` bound to the prompt records it answers.

    `records[g]` is the prompt of group g; `group[i]` is row i's group; a record's `index` is its
    dataset-wide uid (the same prompt in another step or on another rank has the same uid).
    """

    records: Sequence[PromptRecord] = ()

    @classmethod
    def bind(cls, records: Sequence[PromptRecord], out: RolloutOutput) -> RolloutBatch:
        if len(out.group) and int(out.group.max()) >= len(records):
            raise ValueError(
                f"rollout rows name group {int(out.group.max())} but only {len(records)} prompts were given"
            )
        return cls(**{f.name: getattr(out, f.name) for f in fields(RolloutOutput)}, records=list(records))

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_groups(self) -> int:
        return len(self.records)

    @property
    def row_records(self) -> list[PromptRecord]:
        """The prompt record of every row."""
        return [self.records[g] for g in self.group.tolist()]

    @property
    def uids(self) -> torch.Tensor:
        """[rows] the dataset-wide uid of each row's prompt (verl's `uid`)."""
        return torch.tensor([self.records[g].index for g in self.group.tolist()], dtype=torch.long)

    @property
    def group_sizes(self) -> torch.Tensor:
        """[num_groups] rows per group (groups may differ, and may be empty after a selection)."""
        return torch.bincount(self.group, minlength=self.num_groups)

    @property
    def prompt_lengths(self) -> torch.Tensor:
        """[rows] prompt tokens of each row."""
        sizes = torch.tensor([len(r.prompt_ids) for r in self.records], dtype=torch.long)
        return sizes[self.group] if len(self.records) else sizes

    def select(self, rows: torch.Tensor | Sequence[int]) -> RolloutBatch:
        """The batch restricted to `rows` (indices or a boolean mask), groups and records unchanged."""
        rows = torch.as_tensor(rows)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(-1)
        rows_list = rows.tolist()
        return RolloutBatch(
            response_ids=self.response_ids[rows],
            logprobs=self.logprobs[rows],
            lengths=self.lengths[rows],
            finish_reasons=[self.finish_reasons[i] for i in rows_list],
            group=self.group[rows],
            sample=self.sample[rows],
            token_mask=None if self.token_mask is None else self.token_mask[rows],
            row_metrics={name: values[rows] for name, values in self.row_metrics.items()},
            records=self.records,
        )
