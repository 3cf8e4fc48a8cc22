"""Number words and scale words as numbers: "seven", "twenty-one", "three hundred", "2.5 million".

Bounded before anything is built: at most MAX_WORDS words, each scale word (hundred, thousand,
million, billion, trillion) at most once per group and big scales strictly decreasing, so the value
stays below 10^15 and no input makes it grow; a numeric prefix ("2.5 million") is a plain decimal
of at most 20 characters. Anything else returns None and the text is left as it was.
"""

from __future__ import annotations

import re
from decimal import Decimal

MAX_WORDS = 12
_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
NUMBER_WORDS = frozenset({*_UNITS, *_TENS, *_SCALES, "hundred", "and", "minus", "negative"})
_PREFIX_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})*(?:\.\d{1,6})?|[-+]?\d{1,15}(?:\.\d{1,6})?")
_SPLIT_RE = re.compile(r"[\s-]+")


def _words_value(words: list[str]) -> int | None:
    """Value of a run of number words, or None if it is not one (bounded by the scale rules)."""
    total, group, last_scale = 0, 0, None
    seen_any = False
    for word in words:
        if word in _UNITS or word in _TENS:
            value = _UNITS.get(word, _TENS.get(word))
            if (group % 10 and word in _UNITS) or (group % 100 and word in _TENS) or (value >= 10 and group % 100):
                return None  # "seven three", "twenty thirty", "twelve five": not one number
            group += value
        elif word == "hundred":
            if group == 0 or group >= 100:
                return None
            group *= 100
        elif word in _SCALES:
            scale = _SCALES[word]
            if group == 0 or (last_scale is not None and scale >= last_scale):
                return None
            total, group, last_scale = total + group * scale, 0, scale
        elif word == "and" and seen_any:
            continue
        else:
            return None
        seen_any = True
    return total + group if seen_any else None


def words_to_number(text: str) -> str | None:
    """Decimal string for an answer that is a number written in words, else None."""
    words = [w for w in _SPLIT_RE.split(text.strip().lower()) if w]
    if not words or len(words) > MAX_WORDS:
        return None
    sign = ""
    if words[0] in ("minus", "negative"):
        sign, words = "-", words[1:]
    prefix = _PREFIX_RE.fullmatch(words[0]) if words else None
    if prefix is not None:  # "2.5 million", "3 thousand"
        if len(words) != 2 or words[1] not in _SCALES:
            return None
        value = Decimal(words[0].replace(",", "")) * _SCALES[words[1]]
        text_value = format(value.normalize(), "f")
        return text_value if sign == "" or text_value.startswith("-") else sign + text_value
    value = _words_value(words)
    return None if value is None else f"{sign}{value}"
