"""Correctness-first reward tiers.

    incorrect (or no answer)  -> incorrect score (0.0), no bonus of any kind
    correct                   -> correct score (1.0)
                                 + format bonus (0.1) if the answer is in the requested form
                                 + reasoning bonus (0.1 x completeness) for worked steps before it

Bonuses only ever separate correct answers from each other, so no amount of formatting or
padding can outscore a correct bare answer with a wrong one. They are kept small on purpose: a
policy must never prefer a well-formatted wrong answer to a terse right one, and on the tiny CPU
demo a large or easy reasoning bonus would dominate the correctness signal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reward.extract import Extraction


@dataclass(frozen=True)
class Tiers:
    incorrect: float = 0.0
    correct: float = 1.0
    format_bonus: float = 0.1
    reasoning_bonus: float = 0.1
    reasoning_min_steps: int = 2  # distinct worked steps for the full reasoning bonus

    def score(self, acc: bool, formatted: bool, reasoning: float) -> float:
        if not acc:
            return self.incorrect
        return round(self.correct + self.format_bonus * formatted + self.reasoning_bonus * reasoning, 9)


_TRAILER_RE = re.compile(r"[\s$.\\\])]*(?:</answer>)?[\s$.]*")
_PLAIN_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
# A worked step: an operation or relation between two operands, with at least one digit around it.
_STEP_RE = re.compile(
    r"[\w)}\]]\s*(?:=|\+|-|\*|/|\\times|\\cdot|\\div|×|÷|−)\s*[\w(\\{\[]",
)
_SPLIT_RE = re.compile(r"\n+|\.\s+|;\s*")


def in_requested_form(found: Extraction, requested: str) -> bool:
    """The single final answer, in the requested form, with nothing substantial after it."""
    if found.form != requested or found.count != 1:
        return False
    if requested == "hash" and _PLAIN_NUMBER_RE.fullmatch(found.answer.replace(",", "")) is None:
        return False  # GSM8K asks for a bare number after ####
    trailer = found.text[found.end :]
    return len(trailer) <= 200 and len(_TRAILER_RE.sub("", trailer, count=1)) <= 40


def reasoning_steps(before_answer: str) -> int:
    """Distinct worked steps (segments with an operation and a number) written before the answer."""
    seen = set()
    for segment in _SPLIT_RE.split(before_answer[-4000:]):
        seg = " ".join(segment.split())
        if len(seg) >= 5 and any(c.isdigit() for c in seg) and _STEP_RE.search(seg):
            seen.add(seg)
    return len(seen)


def reasoning_completeness(found: Extraction, min_steps: int) -> float:
    """Fraction in [0, 1] of the worked steps needed for the full reasoning bonus."""
    steps = reasoning_steps(found.text[: found.start])
    return min(1.0, steps / max(1, min_steps))
