"""Named reward presets that reproduce a published recipe's reward, selectable as reward terms.

`ascend_sample_math` is the reward of the Ascend single-card GRPO sample (cann-recipes-train,
llm_rl/qwen2_5/verl_npu_demo/new_math_reward.py, used by run_qwen2_5_1_5b_single.sh):

    incorrect (or no answer)                        -> 0.0, nothing else counts
    correct                                          -> correct_weight (0.7)
      + tags_weight (0.2) x tag score                   `<think>\\n`, `\\n</think>\\n`, `\\n<answer>\\n`,
                                                        `\\n</answer>` each present exactly once: 1/4 each;
                                                        text before `<think>` or after `</answer>` costs
                                                        1/200 per character (at most 1/2 each side);
                                                        tags out of order: 0
      + steps_weight (0.1) x step score                 numbered steps inside <think>: 1 for >= 3
                                                        consecutive steps with >= 2 using a reasoning word,
                                                        1/2 for >= 2 steps with >= 1, else 0

This is the sample's rule expressed as fractions of each weight (so the weights are configurable:
`reward.functions=[{name: ascend_sample_math, kwargs: {correct_weight: 1.0}}]`). Correctness uses
math-verify with the sample's extraction settings when it is installed (`grader="auto"`, the
default, or `"math_verify"`), and our semantic grader otherwise (`"builtin"`); the result's `mv`
component says which one graded (1.0 = math-verify).
"""

from __future__ import annotations

import re
from typing import Any

from reward.grader import grade
from reward.math_verify_adapter import available, math_verify_correct

_TAG_COUNTS = ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>")
_STEP_RES = (
    re.compile(r"^step\s*([1-9]\d*)\s*[:.]\s*(.+)$", re.IGNORECASE),
    re.compile(r"^([1-9]\d*)\s*[.)]\s*(.+)$"),
    re.compile(r"^[(\[]?\s*([1-9]\d*)\s*[)\]]\s*(.+)$"),
)
_REASONING_WORDS = (
    "solve",
    "equation",
    "calculate",
    "substitute",
    "therefore",
    "because",
    "thus",
    "sum",
    "product",
    "derivative",
    "integral",
)
_STRAY_COST = 0.005  # per character outside the tags, as a fraction of the tag score
_STRAY_MAX = 0.5


def tag_score(text: str) -> float:
    """Fraction in [0, 1] of the sample's format credit (see the module docstring)."""
    score = 0.25 * sum(text.count(tag) == 1 for tag in _TAG_COUNTS)
    think, answer_end = text.find("<think>"), text.find("</answer>")
    if think > 0 and text[:think].strip():
        score = max(0.0, score - min(_STRAY_MAX, _STRAY_COST * len(text[:think].strip())))
    if answer_end != -1:
        after = text[answer_end + len("</answer>") :].strip()
        if after:
            score = max(0.0, score - min(_STRAY_MAX, _STRAY_COST * len(after)))
    positions = [text.find(t) for t in ("<think>", "</think>", "<answer>", "</answer>")]
    for a, b in ((0, 1), (1, 2), (2, 3)):
        if positions[a] != -1 and positions[b] != -1 and positions[b] < positions[a]:
            return 0.0
    return score


def step_score(text: str) -> float:
    """1, 1/2 or 0 for the numbered steps inside the <think> block (see the module docstring)."""
    start, end = text.find("<think>"), text.find("</think>")
    if start == -1 or end == -1:
        return 0.0
    steps: list[tuple[int, str]] = []
    for line in text[start + len("<think>") : end].strip().split("\n"):
        line = line.strip()
        for pattern in _STEP_RES:
            m = pattern.match(line)
            if m:
                if len(m.group(2).strip()) > 3:
                    steps.append((int(m.group(1)), m.group(2).strip().lower()))
                break
    sequential, expected = 0, 1
    for number, _ in steps:
        if number == expected:
            sequential += 1
            expected += 1
    worded = sum(any(w in body for w in _REASONING_WORDS) for _, body in steps)
    if sequential >= 3 and worded >= 2:
        return 1.0
    if sequential >= 2 and worded >= 1:
        return 0.5
    return 0.0


def ascend_sample_math(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    *,
    correct_weight: float = 0.7,
    tags_weight: float = 0.2,
    steps_weight: float = 0.1,
    grader: str = "auto",
) -> dict[str, Any]:
    """The Ascend sample's correctness-first reward; returns score, acc and its components."""
    if grader not in ("auto", "math_verify", "builtin"):
        raise ValueError(f"ascend_sample_math: grader={grader!r}; use auto, math_verify or builtin")
    text = str(solution_str)
    use_mv = grader == "math_verify" or (grader == "auto" and available())
    if (extra_info or {}).get("truncated"):
        acc = False  # a response cut off at max_new_tokens has no final answer
    elif use_mv:
        acc = math_verify_correct(text, ground_truth)
    else:
        acc = bool(grade(data_source, text, ground_truth, extra_info, strict=False)["acc"])
    tags, steps = (tag_score(text), step_score(text)) if acc else (0.0, 0.0)
    score = correct_weight + tags_weight * tags + steps_weight * steps if acc else 0.0
    return {"score": round(score, 9), "acc": acc, "tags": tags, "steps": steps, "mv": float(use_mv)}
