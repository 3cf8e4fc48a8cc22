"""verl-compatible `compute_score`: route on data_source, extract, compare, apply the tiers.

Routing (case-insensitive substring of data_source, first match wins):

    gsm8k                                  -> number grader, requested form "#### N"
    math, math500, math-lighteval, aime,
    amc, synthetic/arith, numina, ...      -> math grader, requested form \\boxed{}
    mmlu, gpqa, arc, aqua, multiple_choice,
    mc, ...                                -> letter grader, requested form \\boxed{}
    anything else                          -> math grader, requested form \\boxed{}

`extra_info["answer_format"]` (boxed | hash | answer_tag | answer_is) overrides the requested
form per row; `extra_info["truncated"]` or `finish_reason == "length"` marks a response that hit
the token limit, which is graded incorrect (a cut-off answer is not an answer).
"""

from __future__ import annotations

import re
from typing import Any

from reward.equivalence import answers_equal
from reward.extract import FORMS, Extraction, extract_answer, find_boxed
from reward.limits import MAX_ANSWER_CHARS, GradeTimeout, time_budget
from reward.normalize import normalize_answer
from reward.tiers import Tiers, in_requested_form, reasoning_completeness

DEFAULT_TIERS = Tiers()
_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("gsm8k", "gsm8k", "hash"),
    ("mmlu", "choice", "boxed"),
    ("gpqa", "choice", "boxed"),
    ("aqua", "choice", "boxed"),
    ("commonsense", "choice", "boxed"),
    ("arc", "choice", "boxed"),
    ("multiple_choice", "choice", "boxed"),
    ("multiple-choice", "choice", "boxed"),
    ("mcq", "choice", "boxed"),
)
_MC_SOURCES = {"mc", "choice", "choices"}
_LETTER_RE = re.compile(r"\(?([A-J])\)?(?:[.:)]?\s.*|[.:)])?|\(?([a-j])\)?")
_TRUTH_LETTER_RE = re.compile(r"\(?([A-J])\)?")
# Digits separated by a space in plain text (not 3-digit thousands groups): "9 6" is two numbers.
# Inside LaTeX math spaces are ignored ("\boxed{9 6}" renders as 96), so only plain forms are checked.
_SPLIT_DIGITS_RE = re.compile(r"\d +(?!\d{3}(?!\d))\d")
_PLAIN_FORMS = ("hash",)


def route(data_source: str, extra_info: dict[str, Any] | None = None) -> tuple[str, str]:
    """(grader kind, requested answer form) for a data source; see the module docstring."""
    source = (data_source or "").lower()
    kind, form = "math", "boxed"
    if source in _MC_SOURCES:
        kind = "choice"
    else:
        for needle, route_kind, route_form in _ROUTES:
            if needle in source and not (needle == "arc" and "arith" in source):
                kind, form = route_kind, route_form
                break
    override = (extra_info or {}).get("answer_format")
    if override:
        if override not in FORMS:
            raise ValueError(f"extra_info['answer_format']={override!r}: expected one of {', '.join(FORMS)}")
        form = override
    return kind, form


def _truth_text(ground_truth: str, kind: str) -> str:
    """The answer part of a ground truth that may be a whole reference solution."""
    if kind == "gsm8k" and "####" in ground_truth:
        return ground_truth.rsplit("####", 1)[1].strip()
    if "\\boxed" in ground_truth or "\\fbox" in ground_truth:
        found, _ = find_boxed(ground_truth)
        if found:
            return found[-1][2]
    return ground_truth.strip()


def _letter(answer: str) -> str | None:
    m = _LETTER_RE.fullmatch(normalize_answer(answer))
    return (m.group(1) or m.group(2)).upper() if m else None


def _is_correct(kind: str, truth: str, answer: str) -> bool:
    if len(answer) > MAX_ANSWER_CHARS:
        return False
    if kind == "choice":
        letter = _letter(answer)
        return letter is not None and letter == _letter(truth)
    return answers_equal(truth, answer)


def _truncated(extra_info: dict[str, Any] | None) -> bool:
    if not extra_info:
        return False
    return bool(extra_info.get("truncated")) or extra_info.get("finish_reason") == "length"


def _truths(ground_truth: Any) -> list[str]:
    """verl passes a string; lists (several accepted answers) and numbers are accepted too."""
    if isinstance(ground_truth, (list, tuple)):
        return [str(g) for g in ground_truth]
    return [str(ground_truth)]


def grade(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    *,
    strict: bool = False,
    tiers: Tiers = DEFAULT_TIERS,
) -> dict[str, Any]:
    """Tiered grade of one response; raises GradeTimeout when this thread's budget runs out."""
    kind, form = route(data_source, extra_info)
    if kind == "math" and any(_TRUTH_LETTER_RE.fullmatch(t.strip()) for t in _truths(ground_truth)):
        kind = "choice"  # an unknown source whose truth is a choice letter
    found: Extraction | None = None
    if not _truncated(extra_info):
        found = extract_answer(str(solution_str), requested=form, strict=strict)
    split = found is not None and found.form in _PLAIN_FORMS and _SPLIT_DIGITS_RE.search(found.answer) is not None
    acc = (
        found is not None
        and not split
        and any(_is_correct(kind, _truth_text(t, kind), found.answer) for t in _truths(ground_truth))
    )
    formatted = acc and found is not None and in_requested_form(found, form)
    reasoning = reasoning_completeness(found, tiers.reasoning_min_steps) if acc and found is not None else 0.0
    return {
        "score": tiers.score(acc, formatted, reasoning),
        "acc": acc,
        "format": float(formatted),
        "reasoning": reasoning,
        "has_answer": float(found is not None),
        "timeout": 0.0,
        "error": 0.0,
        "pred": found.answer if found is not None else "",
    }


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    *,
    strict: bool = False,
    tiers: Tiers = DEFAULT_TIERS,
    timeout_s: float | None = 5.0,
) -> dict[str, Any]:
    """verl's reward signature; never raises on model output and returns within ~timeout_s.

    The budget here is cooperative (checked between bounded steps), so it holds in any thread;
    reward.pool adds hard preemption for user functions that ignore it.
    """
    route(data_source, extra_info)  # a bad answer_format is a data error: raise it, do not score 0
    try:
        with time_budget(timeout_s):
            return grade(data_source, solution_str, ground_truth, extra_info, strict=strict, tiers=tiers)
    except GradeTimeout:
        result = _failed(tiers)
        result["timeout"] = 1.0
        return result
    except (ArithmeticError, RecursionError, MemoryError, TypeError, ValueError, AttributeError):
        # Defence in depth: the fuzz tests call grade() directly so that such a bug still fails a test.
        result = _failed(tiers)
        result["error"] = 1.0
        return result


def _failed(tiers: Tiers) -> dict[str, Any]:
    return {
        "score": tiers.incorrect,
        "acc": False,
        "format": 0.0,
        "reasoning": 0.0,
        "has_answer": 0.0,
        "timeout": 0.0,
        "error": 0.0,
        "pred": "",
    }
