"""Cleaning an extracted answer into the small LaTeX dialect the parser reads.

Removes what never changes the value: math delimiters, ``\\left``/``\\right``, spacing commands,
``\\text{}`` / ``\\mathrm{}`` wrappers, unit words, degree signs, dollar signs; maps unicode math to
LaTeX; turns "x = 1 or x = 2" into a comma list (so a hedge "either 6 or 8" becomes a list that
cannot equal a single value). Linear-time string work only; runs before any parsing.
"""

from __future__ import annotations

import re

from reward.extract import match_brace

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
_WRAPPERS = ("text", "textbf", "textit", "textrm", "mathrm", "mathbf", "mathit", "mbox", "operatorname", "textnormal")
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
    m = _TRAILING_UNITS_RE.match(s) or _NUMBER_THEN_WORDS_RE.match(s)
    if m is not None:
        s = m.group(1)
    return s.strip().rstrip(".").strip().rstrip(",;").strip()


def text_key(s: str) -> str:
    """Key for comparing answers as plain text: no markup, spacing or case differences."""
    s = s.replace("\\", " ").replace("{", " ").replace("}", " ")
    return " ".join(s.lower().split()).strip(" .,;:")
