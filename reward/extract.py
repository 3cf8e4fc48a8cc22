"""Finding the final answer in a response.

Forms: the last ``\\boxed{}`` / ``\\fbox{}`` (nested braces), ``<answer>...</answer>``, GSM8K's
``#### 1,234``, final-answer statements in prose as the common harnesses write them ("The answer
is ...", Minerva's "Final Answer: The final answer is ...", "Answer:" lines, a "Final Answer"
heading; see reward.statements), and a response that is nothing but a short formula.

By default any clearly stated final answer counts (correctness is graded by meaning; whether it
came in the requested form is the format tier's business). `strict=True` accepts only the
requested form, for users who want the form as a gate.

Deliberate refusals: an answer whose marker was opened but never closed (the response was cut off
mid-answer), or a `<think>` block that never closed, yields nothing rather than an earlier
intermediate result; several boxed answers joined by "or" / "," are returned together so that a
hedge cannot match a single truth. Nothing here scrapes numbers out of the reasoning.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from reward.limits import MAX_RESPONSE_CHARS
from reward.numwords import NUMBER_WORDS
from reward.statements import answer_is, heading

FORMS = ("boxed", "answer_tag", "hash", "answer_is")


@dataclass(frozen=True)
class Extraction:
    """The extracted answer and where it sits in the (possibly tail-trimmed) response."""

    answer: str
    form: str  # one of FORMS or "bare"
    start: int  # offset of the final answer marker in `text`
    end: int  # offset just past it
    count: int  # markers of this form in the response (1 = a single final answer)
    text: str  # the searched text, so that offsets stay meaningful


_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
# Text allowed between boxed answers that are read together ("\boxed{2} or x = \boxed{-2}").
_JOINER_RE = re.compile(
    r"[\s$,;]*(?:(?:\\text\{\s*)?(?:or|and)(?:\s*\})?)?[\s$,;]*(?:[a-zA-Z]\s*=\s*)?[\s$]*",
    re.IGNORECASE,
)


def match_brace(text: str, open_idx: int) -> int:
    """Index of the brace closing the one at `open_idx`, or -1; `\\{` and `\\}` do not count."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def find_boxed(text: str) -> tuple[list[tuple[int, int, str]], bool]:
    """All complete boxed answers as (start, end, content) and whether an unclosed one follows them."""
    found: list[tuple[int, int, str]] = []
    unclosed_after = False
    pos = 0
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            break
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            close = match_brace(text, j)
            if close < 0:
                unclosed_after = True
                break
            found.append((m.start(), close + 1, text[j + 1 : close]))
            pos = close + 1
            continue
        # `\boxed 5`: the argument is the next run of non-space characters
        tail = re.match(r"[^\s$]+", text[j:])
        if tail is None or j == m.end():
            pos = m.end()
            continue
        found.append((m.start(), j + tail.end(), tail.group(0)))
        pos = j + tail.end()
    return found, unclosed_after


def _from_boxed(text: str) -> Extraction | None:
    found, unclosed = find_boxed(text)
    if unclosed or not found:
        return None
    start, end, content = found[-1]
    parts = [content]
    k = len(found) - 1
    while k > 0:  # walk back over boxed answers joined to the last one by "or", "," ...
        prev_start, prev_end, prev_content = found[k - 1]
        gap = text[prev_end:start]
        if len(gap) > 40 or _JOINER_RE.fullmatch(gap) is None:
            break
        parts.insert(0, prev_content)
        start = prev_start
        k -= 1
    answer = ", ".join(dict.fromkeys(p.strip() for p in parts))  # the same box twice is one answer
    return Extraction(answer.strip(), "boxed", start, end, len(found), text)


def _from_tag(text: str) -> Extraction | None:
    """Last `<answer>...</answer>`; found with rfind, as a lazy regex is quadratic on `<answer>` spam."""
    lower = text.lower()
    close = lower.rfind("</answer>")
    if close < 0:
        return None
    start = lower.rfind("<answer>", 0, close)
    if start < 0 or lower.find("<answer>", close) >= 0:
        return None  # no answer, or a later answer tag never closed (truncated)
    content = text[start + len("<answer>") : close]
    boxed = _from_boxed(content)
    answer = boxed.answer if boxed else content.strip()
    end = close + len("</answer>")
    return Extraction(answer, "answer_tag", start, end, lower.count("</answer>"), text)


def _from_hash(text: str) -> Extraction | None:
    matches = list(_HASH_RE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return Extraction(last.group(1).strip(), "hash", last.start(), last.end(), len(matches), text)


def _from_answer_is(text: str) -> Extraction | None:
    found = answer_is(text)
    return None if found is None else Extraction(found[0], "answer_is", found[1], found[2], found[3], text)


def _from_heading(text: str) -> Extraction | None:
    found = heading(text)
    return None if found is None else Extraction(found[0], "answer_is", found[1], found[2], found[3], text)


def _from_bare(text: str) -> Extraction | None:
    """A response that is only a short formula ("42", "$x=3$") is its own answer."""
    stripped = text.strip()
    if not stripped or len(stripped) > 100 or "\n" in stripped:
        return None
    if re.search(r"(?<!\\)\b[a-zA-Z]{3,}", stripped.replace("\\", " \\")):
        return None  # prose, not a formula
    return Extraction(stripped.strip("$ ").rstrip("."), "bare", 0, len(text), 1, text)


_EXTRACTORS = {"boxed": _from_boxed, "answer_tag": _from_tag, "hash": _from_hash, "answer_is": _from_answer_is}
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_PROSE_RE = re.compile(r"[a-zA-Z]{3,}")
_OVERRIDE_RE = re.compile(r"[\\\d]|^\(?[A-J]\)?$")


def _answer_like(found: Extraction) -> bool:
    """A statement's answer, not a sentence that merely mentions "the answer" (at most 3 words)."""
    words = _PROSE_RE.findall(found.answer.replace("\\", " \\"))
    return 0 < len(found.answer) <= 200 and sum(w.lower() not in NUMBER_WORDS for w in words) <= 3


def _cut_off(text: str) -> bool:
    """A final answer marker that was opened and never closed: the response stopped mid-answer."""
    if find_boxed(text)[1]:
        return True
    lower = text.lower()
    return lower.rfind("<answer>") > lower.rfind("</answer>")


def extract_answer(response: str, requested: str = "boxed", strict: bool = False) -> Extraction | None:
    """The final answer in the requested form (strict) or in any clearly stated form (default).

    Default (lenient): the requested form, unless a later final-answer statement in another form
    gives a different mathematical-looking answer (the model revised itself: "... \\boxed{10}.
    Wait, ... so the final answer is 12."); the latest other statement when the requested form is
    absent; a response that is nothing but a short formula last. Never: an answer after a cut-off
    (an unclosed box or answer tag, or a `<think>` block that never closed), a number from prose.
    """
    if requested not in _EXTRACTORS:
        raise ValueError(f"unknown answer form {requested!r}; expected one of {', '.join(FORMS)}")
    text = response[-MAX_RESPONSE_CHARS:]
    base = 0
    if _THINK_CLOSE in text:
        base = text.rindex(_THINK_CLOSE) + len(_THINK_CLOSE)  # reasoning inside <think> states nothing
    elif _THINK_OPEN in text:
        return None  # still thinking when the response ended
    found = _select(text[base:], requested, strict)
    if found is None or base == 0:
        return found
    return dataclasses.replace(found, start=found.start + base, end=found.end + base, text=text)


def _select(text: str, requested: str, strict: bool) -> Extraction | None:
    if _cut_off(text):
        return None
    wanted = _EXTRACTORS[requested](text)
    wanted = wanted if wanted is not None and wanted.answer else None
    if strict:
        return wanted
    others = [f(text) for form, f in (*_EXTRACTORS.items(), ("heading", _from_heading)) if form != requested]
    statements = [f for f in others if f is not None and (f.form != "answer_is" or _answer_like(f))]
    latest = max(statements, key=lambda f: f.start, default=None)
    if wanted is None:
        return latest if latest is not None else _from_bare(text)
    revised = (
        latest is not None
        and latest.start > wanted.end
        and _OVERRIDE_RE.search(latest.answer) is not None
        and "".join(latest.answer.split()) != "".join(wanted.answer.split())
    )
    return latest if revised and latest is not None else wanted
