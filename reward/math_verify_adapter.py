"""Correctness by Hugging Face's math-verify, when it is installed, for comparison with our grader.

math-verify is what the Ascend GRPO sample's reward (and many published evaluations) use, so a user
who wants to put a number next to theirs grades with it: `python -m npu_rl.eval --grader math_verify`,
or the `ascend_sample_math` reward preset. It is optional (`pip install math-verify`); `available()`
says whether it can be used and `MathVerifyUnavailable` carries the install hint.

The extraction settings are the sample's: the gold answer is parsed as LaTeX or a plain expression;
the response is searched for LaTeX only, `\\boxed{}` first, without the anchor-less fallback that
picks numbers out of the reasoning. math-verify's own signal-based time limits only work in the main
thread, so elsewhere they are switched off (our worker pool bounds the wall-clock time instead).
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

INSTALL_HINT = "pip install math-verify"


class MathVerifyUnavailable(ImportError):
    """math-verify is not installed; the message says how to install it."""


def available() -> bool:
    return importlib.util.find_spec("math_verify") is not None


def _timeout(seconds: int) -> int | None:
    return seconds if threading.current_thread() is threading.main_thread() else None


def math_verify_correct(solution_str: str, ground_truth: Any) -> bool:
    """True when math-verify finds the response's final answer equal to one of the ground truths."""
    try:
        from latex2sympy2_extended import NormalizationConfig
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    except ImportError as err:
        raise MathVerifyUnavailable(f"grading with math-verify needs it installed ({err}): {INSTALL_HINT}") from err
    truths = ground_truth if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    answer_config = LatexExtractionConfig(
        normalization_config=NormalizationConfig(
            nits=False, malformed_operators=False, basic_latex=True, boxed="all", units=True
        ),
        boxed_match_priority=0,
        try_extract_without_anchor=False,
    )
    answer = parse(
        str(solution_str),
        extraction_config=[answer_config],
        extraction_mode="first_match",
        parsing_timeout=_timeout(5),
    )
    if not answer:
        return False
    for truth in truths:
        gold = parse(
            f"${truth}$",
            extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
            extraction_mode="first_match",
            parsing_timeout=_timeout(5),
        )
        if gold and verify(gold, answer, timeout_seconds=_timeout(5)):
            return True
    return False


def math_verify_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Reward term `math_verify`: 1.0 / 0.0 by math-verify alone (what `npu_rl.eval --grader math_verify`
    uses). A response cut off at the token limit is graded as written, as external harnesses do."""
    acc = math_verify_correct(solution_str, ground_truth)
    return {"score": float(acc), "acc": acc}
