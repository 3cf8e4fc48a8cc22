"""Bridge from the trainer to the reward package: grades a batch of responses.

Placeholder until the tiered reward lands: exact match of the last \\boxed{} against the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from npu_rl.config import RewardConfig


@dataclass
class RewardItem:
    data_source: str
    solution_str: str
    ground_truth: str
    extra_info: dict[str, Any] | None = None


@dataclass
class RewardBatch:
    scores: list[float]  # what the policy optimizes
    acc: list[bool]  # correctness, for val-core/<source>/acc
    components: dict[str, list[float]] = field(default_factory=dict)  # logged as reward/<name>/mean
    timeouts: int = 0


class RewardManager:
    def __init__(self, cfg: RewardConfig, strict: bool | None = None) -> None:
        self.cfg = cfg
        self.strict = cfg.strict if strict is None else strict

    def score(self, items: list[RewardItem]) -> RewardBatch:
        from reward import compute_score

        results = [compute_score(i.data_source, i.solution_str, i.ground_truth, i.extra_info) for i in items]
        return RewardBatch(scores=[r["score"] for r in results], acc=[bool(r["acc"]) for r in results])

    def close(self) -> None:
        return None
