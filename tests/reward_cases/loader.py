"""Reads cases.yaml (hand-written labelled grading cases) into flat records.

Shared by tests/test_reward_cases.py and bench/grader_compare.py so both grade exactly the same set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CASES_FILE = Path(__file__).with_name("cases.yaml")
DEFAULT_SOURCE = "lighteval/MATH"


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    data_source: str
    response: str
    ground_truth: str
    label: bool
    mode: str = "lenient"  # strict cases check training-mode extraction; the bench skips them
    extra_info: dict[str, Any] = field(default_factory=dict)


def load_cases(path: Path = CASES_FILE) -> list[Case]:
    """Flatten the grouped YAML; a malformed entry is reported with its group and position."""
    groups = yaml.safe_load(path.read_text(encoding="utf-8"))
    cases: list[Case] = []
    counts: dict[str, int] = {}
    for g, group in enumerate(groups):
        kind, gt = group["kind"], str(group["gt"])
        for k, entry in enumerate(group["cases"]):
            where = f"{path.name}: group {g} ({kind}), case {k}"
            if isinstance(entry, list) and len(entry) == 2:
                entry = {"r": entry[0], "ok": entry[1]}
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("r"), str)
                or not isinstance(entry.get("ok"), bool)
            ):
                raise ValueError(f"{where}: expected [response, label] or {{r: response, ok: label}}, got {entry!r}")
            counts[kind] = counts.get(kind, 0) + 1
            cases.append(
                Case(
                    id=f"{kind}-{counts[kind]}",
                    kind=kind,
                    data_source=group.get("source", DEFAULT_SOURCE),
                    response=entry["r"],
                    ground_truth=gt,
                    label=entry["ok"],
                    mode=entry.get("mode", "lenient"),
                    extra_info=dict(entry.get("extra", {})),
                )
            )
    return cases
