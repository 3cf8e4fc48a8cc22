"""Cleaning an extracted answer into the small LaTeX dialect the parser reads.

Removes what never changes the value: math delimiters, ``\\left``/``\\right``, spacing commands,
``\\text{}`` / ``\\mathrm{}`` wrappers, unit words, degree signs, dollar signs; maps unicode math to
LaTeX; turns "x = 1 or x = 2" into a comma list (so a hedge "either 6 or 8" becomes a list that
cannot equal a single value). Linear-time string work only; runs before any parsing.
"""

from __future__ import annotations

import re

from reward.extract import match_brace
from reward.numwords import MAX_WORDS, words_to_number

_UNICODE = {
    "−": "-",
    "–": "-",
    "×": r"\times ",
    "÷": r"\div ",
    "·": r"\cdot ",
    "⋅": r"\cdot ",
    "π": r"\pi ",
    "∞": r"\infty ",
    "√": r"\sqrt ",
    "≤": r"\le ",
    "≥": r"\ge ",
    "≠": r"\ne ",
    "∪": r"\cup ",
    "∩": r"\cap ",
    "∈": r"\in ",
    "±": r"\pm ",
    "²": "^2",
    "³": "^3",
    "°": "",
    "\u00a0": " ",
}
_WRAPPERS = (
    "boxed", "fbox", "text", "textbf", "textit", "textrm", "mathrm", "mathbf", "mathit", "mbox", "operatorname",
    "textnormal",
)  # fmt: skip
_WRAP_RE = re.compile(r"\\(?:" + "|".join(_WRAPPERS) + r")\s*\{")
# A matrix row break (two backslashes) is matched first, so that it is not read as a backslash
# followed by the spacing command backslash-space.
_SPACING_RE = re.compile(r"\\\\|\\(?:[,;:! ]|quad|qquad|displaystyle|textstyle|limits|nolimits)|~")
_LEFT_RIGHT_RE = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)\s*(\\?[()\[\].|{}]|\\[lr]?[vV]ert|\\lbrace|\\rbrace)"
)
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|\^\s*\{\s*\\text\{\s*o\s*\}\s*\}")
_UNIT_WORDS = (
    "cm|mm|km|meters?|metres?|inch(?:es)?|feet|foot|ft|yards?|yd|miles?|mi|units?|square|sq|cubic|"
    "hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|dollars?|cents?|"
    "degrees?|deg|radians?|rad|kg|grams?|kilograms?|pounds?|lbs?|ounces?|oz|liters?|litres?|ml|"
    "mph|km/h|kmh|gallons?|cups?|people|persons?|students?|apples?|cookies?|books?|marbles?|pages?|"
    "points?|tickets?|times|ways|coins?|boxes|eggs?|cars?|trees?|pieces?|items?"
)
# One-letter units (m, s, g, l) and "in" only count after a space: "2m" may be the product 2*m.
_UNIT = r"(?:\s*(?:" + _UNIT_WORDS + r")|\s+(?:m|s|g|l|in))\b\.?(?:\s*\^\s*\{?\d\}?)?"
_TRAILING_UNITS_RE = re.compile(r"^(.*?[\d}%)])(?:" + _UNIT + r"(?:\s*(?:/|per))?)+$", re.IGNORECASE)
# "18 pears": a plain number followed only by words is the number (the words name what is counted).
_NUMBER_THEN_WORDS_RE = re.compile(r"^([-+]?\d[\d,]*(?:\.\d+)?%?)\s+[a-zA-Z][a-zA-Z' -]*$")
_FRACTION_WORDS_RE = re.compile(
    r"^(?:halves|half|thirds?|quarters?|fourths?|fifths?|sixths?|sevenths?|eighths?|ninths?|tenths?|hundredths?|"
    r"thousandths?|percent|times|plus|minus|over|divided)\b",
    re.IGNORECASE,
)
_WORD_RE = re.compile(r"[a-zA-Z][a-zA-Z']*$")
# A choice label before the value, as AMC solutions write it: "(C) 18", "C. 18", "C) 18".
_CHOICE_LABEL_RE = re.compile(r"\(([A-E])\)\s*[.:]?\s*(.+)|([A-E])[.):]\s+(.+)")
_HEDGE_RE = re.compile(r"\b(?:either|maybe|possibly|perhaps|probably)\b", re.IGNORECASE)
_OR_AND_RE = re.compile(r"\s+(?:or|and)\s+|,\s*(?:or|and)\s+", re.IGNORECASE)


def _unwrap_commands(s: str) -> str:
    """Replace `\\text{...}` and friends by their content (spaced), innermost structure kept."""
    for _ in range(20):  # bounded: each pass removes at least one wrapper
        m = _WRAP_RE.search(s)
        if m is None:
            return s
        close = match_brace(s, m.end() - 1)
        if close < 0:
            return s[: m.start()] + " " + s[m.end() :]
        s = s[: m.start()] + " " + s[m.end() : close] + " " + s[close + 1 :]
    return s


def _strip_delimiters(s: str) -> str:
    s = s.strip()
    for _ in range(3):
        before = s
        if s.startswith("$$") and s.endswith("$$") and len(s) >= 4:
            s = s[2:-2].strip()
        elif s.startswith("$") and s.endswith("$") and len(s) >= 2:
            s = s[1:-1].strip()
        elif (s.startswith(r"\(") and s.endswith(r"\)")) or (s.startswith(r"\[") and s.endswith(r"\]")):
            s = s[2:-2].strip()
        if s == before:
            break
    return s


def normalize_answer(answer: str) -> str:
    """Canonical text for parsing and for the string fast path."""
    s = _strip_delimiters(answer)
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    s = s.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac").replace(r"\cfrac", r"\frac")
    s = s.replace(r"\$", " ").replace("$", " ")
    s = s.replace(r"\%", "%").replace(r"\!", "").replace("{,}", "")
    s = _LEFT_RIGHT_RE.sub(lambda m: "" if m.group(1) == "." else m.group(1), s)
    s = _SPACING_RE.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else " ", s)
    s = _DEGREE_RE.sub(" ", s)
    s = _unwrap_commands(s)
    s = re.sub(r"\s*\bpercent\b", "%", s, flags=re.IGNORECASE)
    s = _HEDGE_RE.sub(" ", s)
    s = _OR_AND_RE.sub(", ", s)
    s = " ".join(s.split())
    s = _number_words(s)
    m = _TRAILING_UNITS_RE.match(s) or _NUMBER_THEN_WORDS_RE.match(s)
    if m is not None:
        s = m.group(1)
    return s.strip().rstrip(".").strip().rstrip(",;").strip()


def _number_words(s: str) -> str:
    """ "seven", "3 million", "twenty-one apples" as numbers; other text unchanged (bounded word count)."""
    words = s.split(" ")
    if len(words) > 2 * MAX_WORDS or not any(c.isalpha() for c in s):
        return s
    for k in range(min(len(words), MAX_WORDS), 0, -1):
        value = words_to_number(" ".join(words[:k]))
        if value is None:
            continue
        rest = words[k:]
        if all(_WORD_RE.match(w) for w in rest) and not (rest and _FRACTION_WORDS_RE.match(rest[0])):
            return value  # the words after the number name what is counted
        return s
    return s


def choice_value(normalized: str) -> str | None:
    """The value after a choice label ("(C) 18" -> "18"), or None when there is no label."""
    m = _CHOICE_LABEL_RE.fullmatch(normalized)
    if m is None:
        return None
    return (m.group(2) or m.group(4)).strip()


def text_key(s: str) -> str:
    """Key for comparing answers as plain text: no markup, spacing or case differences."""
    s = s.replace("\\", " ").replace("{", " ").replace("}", " ")
    return " ".join(s.lower().split()).strip(" .,;:")
