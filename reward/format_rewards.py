"""Format rewards in the style of the TRL GSM8K recipe, for use as terms of a weighted reward.

They look only at the shape of the response (`<reasoning>...</reasoning><answer>...</answer>`,
integer answer), never at correctness, so they belong next to a correctness term with a smaller
weight, e.g. ``reward.functions=[{name: math, weight: 1.0}, {name: format_soft_xml, weight: 0.2}]``.
All take verl's four arguments and return a float in [0, 1].
"""

from __future__ import annotations

import re
from typing import Any

from reward.extract import extract_answer
from reward.limits import MAX_RESPONSE_CHARS

_STRICT_XML_RE = re.compile(r"\s*<reasoning>\n.+?\n</reasoning>\n<answer>\n.+?\n</answer>\s*", re.DOTALL)
_SOFT_XML_RE = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
_INT_RE = re.compile(r"[-+]?\d+")
_TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")


def format_strict_xml(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """1.0 when the whole response is exactly the reasoning block then the answer block, one per line."""
    text = solution_str[-MAX_RESPONSE_CHARS:]
    return 1.0 if _STRICT_XML_RE.fullmatch(text) else 0.0


def format_soft_xml(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """1.0 when a reasoning block is followed by an answer block anywhere, whitespace free-form."""
    return 1.0 if _SOFT_XML_RE.search(solution_str[-MAX_RESPONSE_CHARS:]) else 0.0


def int_answer(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """1.0 when the `<answer>` content is a bare integer (what GSM8K asks for)."""
    found = extract_answer(solution_str, requested="answer_tag", strict=True)
    return 1.0 if found is not None and _INT_RE.fullmatch(found.answer.replace(",", "")) else 0.0


def xml_tags(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """Partial credit for structure: 0.25 per tag used exactly once, minus a little per character after
    the closing answer tag (so that text after the answer does not pay)."""
    text = solution_str[-MAX_RESPONSE_CHARS:]
    score = sum(0.25 for tag in _TAGS if text.count(tag) == 1)
    if text.count("</answer>") == 1:
        trailing = len(text.split("</answer>", 1)[1].strip())
        score -= min(0.25, 0.001 * trailing)
    return max(0.0, score)
