"""The hand-written labelled case set (tests/reward_cases/cases.yaml) graded end to end."""

from __future__ import annotations

import importlib.util
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from reward import compute_score

_spec = importlib.util.spec_from_file_location(
    "reward_cases_loader", Path(__file__).parent / "reward_cases" / "loader.py"
)
assert _spec is not None and _spec.loader is not None
loader = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = loader  # dataclasses look their module up there
_spec.loader.exec_module(loader)
CASES = loader.load_cases()

# Every kind of answer the issue lists must be present with both correct and incorrect responses.
REQUIRED_KINDS = {
    "integer", "fraction", "approximation", "mixed_number", "thousands", "percent", "scientific",
    "repeating", "latex", "units", "radicals", "expression", "equation", "interval", "set", "tuple",
    "matrix", "complex", "constants", "infinity", "multiple_choice", "extraction", "final_answer_only",
    "hedge", "truncation", "adversarial", "strict",
}  # fmt: skip


def test_case_set_is_large_and_covers_every_kind_with_hard_negatives() -> None:
    assert len(CASES) >= 300
    labels: dict[str, set[bool]] = defaultdict(set)
    for case in CASES:
        labels[case.kind].add(case.label)
    assert set(labels) >= REQUIRED_KINDS
    mixed = {"final_answer_only", "hedge", "truncation", "adversarial"}  # negative-heavy by nature
    assert all(labels[k] == {True, False} for k in REQUIRED_KINDS - mixed)
    assert sum(not c.label for c in CASES) >= 0.35 * len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_is_graded_as_labelled(case: loader.Case) -> None:
    result = compute_score(
        case.data_source, case.response, case.ground_truth, case.extra_info, strict=case.mode == "strict"
    )
    assert result["timeout"] == 0.0 and result["error"] == 0.0
    assert result["acc"] is case.label, f"pred={result['pred']!r} truth={case.ground_truth!r}"


def test_loader_names_the_malformed_entry(tmp_path: Path) -> None:
    bad = tmp_path / "cases.yaml"
    bad.write_text("- kind: integer\n  gt: '1'\n  cases:\n  - ['1', true]\n  - ['2']\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"group 0 \(integer\), case 1"):
        loader.load_cases(bad)
