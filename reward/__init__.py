"""Placeholder reward: 1.0 when the last \\boxed{...} equals the ground truth string."""

from __future__ import annotations

import re
from typing import Any


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None) -> dict:
    found = re.findall(r"\\boxed\{([^{}]*)\}", solution_str)
    acc = bool(found) and found[-1].strip() == str(ground_truth).strip()
    return {"score": 1.0 if acc else 0.0, "acc": acc}
