"""Final-answer statements in prose, as the common evaluation harnesses and chat models write them.

    "The answer is 7." / "So the final answer is $\\frac{3}{5}$, since ..."       (OpenCompass, GSM8K)
    "Final Answer: The final answer is $7$. I hope it is correct."                 (Minerva, lm-eval)
    "Answer: 7" / "ANSWER: 7" / "Final answer: 7"                           (Qwen / DeepSeek, lighteval)
    "**Final answer:** 7" / "**Answer:** (C) 18"                                        (chat models)
    "### Final Answer\\nThe number of apples left is **7**."                     (a heading, then a line)

Only the statement itself is read: its boxed answer, else its leading math segment, else the text
up to the end of its sentence. Numbers elsewhere in the reasoning are never taken. Every pattern is
linear (no nested quantifiers) and works on the bounded response tail.
"""

from __future__ import annotations

import re

_ANSWER_IS_RE = re.compile(
    r"\banswer\s*(?:\*\*)?\s*(?:is\b|:|=)\s*(?:\*\*)?\s*:?[ \t]*([^\n]+)",
    re.IGNORECASE,
)
# A line that is only a "Final Answer" heading (markdown heading, bold, or plain with a colon).
_HEADING_RE = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?[ \t]*final[ \t]+answer[ \t]*:?[ \t]*(?:\*\*)?[ \t]*:?[ \t]*\n",
    re.IGNORECASE | re.MULTILINE,
)
# A period ends the sentence unless it follows a lone choice letter ("B. 25" is option B, value 25).
_SENTENCE_END_RE = re.compile(r"(?<!\b[A-E])\.(?:\s|$)")
_LEADING_MATH_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_BOLD_RE = re.compile(r"\*\*([^*\n]{1,200})\*\*")
_IS_TAIL_RE = re.compile(r"\b(?:is|are|equals|=)\s+([^\n]{1,200})$", re.IGNORECASE)
_MAX_STATEMENT = 400  # characters of one statement that are read
# Prose that is not part of the answer but often follows it on the same line.
_REMARK_RE = re.compile(r"\s+\([^()\\]*[a-zA-Z]{3,}[^()\\]*\)$")  # "0.5 (one half)": a remark in words
_CONTINUATION_RE = re.compile(r",\s+(?:which|since|because|so|as|and\s+(?:this|that|the))\b.*$", re.IGNORECASE)


def cut_sentence(s: str) -> str:
    """Text up to the end of its first sentence, without a trailing period."""
    m = _SENTENCE_END_RE.search(s)
    if m is not None:
        s = s[: m.start()]
    return s.strip().rstrip(".").strip()


def statement_answer(raw: str) -> str:
    """The answer inside a statement's text: its leading math segment, else its first sentence."""
    from reward.extract import find_boxed  # the extractor imports this module

    raw = raw[:_MAX_STATEMENT].replace("**", "").strip()
    found, unclosed = find_boxed(raw)
    if unclosed:
        return ""
    if found:
        return found[-1][2].strip()
    m = _LEADING_MATH_RE.match(raw)
    if m is not None:
        return next(g for g in m.groups() if g is not None).strip()
    return _REMARK_RE.sub("", _CONTINUATION_RE.sub("", cut_sentence(raw)).strip())


def answer_is(text: str) -> tuple[str, int, int, int] | None:
    """(answer, start, end, count) of the last "answer is / Answer:" statement."""
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    raw = last.group(1)
    for _ in range(4):  # "Final Answer: The final answer is $7$." states the answer in its inner sentence
        inner = _ANSWER_IS_RE.search(raw)
        if inner is None:
            break
        raw = inner.group(1)
    return statement_answer(raw), last.start(), last.end(), len(matches)


def heading(text: str) -> tuple[str, int, int, int] | None:
    """(answer, start, end, count) from the line after the last "Final Answer" heading."""
    matches = list(_HEADING_RE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    rest = text[last.end() : last.end() + _MAX_STATEMENT].lstrip("\n")
    block = rest.split("\n\n", 1)[0].strip()
    if not block:
        return None
    from reward.extract import find_boxed

    found, unclosed = find_boxed(block)
    if unclosed:
        return None
    if found:
        answer = found[-1][2]
    elif bold := _BOLD_RE.findall(block):
        answer = bold[-1]
    elif math := [next(g for g in m.groups() if g is not None) for m in _LEADING_MATH_RE.finditer(block)]:
        answer = math[-1]
    else:
        sentence = cut_sentence(block.split("\n", 1)[0])
        tail = _IS_TAIL_RE.search(sentence)
        answer = tail.group(1) if tail else sentence
    return answer.strip(), last.start(), last.end() + len(block), len(matches)
