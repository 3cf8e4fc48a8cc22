"""Is an extracted answer equal to the ground truth?

Stages, cheapest first: identical normalized text; plain numbers (thousands separators, mixed
numbers, percent) read by a regex into exact Fractions; the safe parser plus exact rational
arithmetic; high-precision evaluation (reward.evaluate) only for what remains (radicals, pi, e,
functions, complex numbers, symbols). Exactness is the point: 0.3333333 is a different number
from 1/3, while 0.25, 1/4 and 25% of 1 are the same.

Structures compare by their meaning: "x = 3" equals "3"; bare comma lists and sets ignore order,
tuples and matrices do not; intervals compare as point sets (open vs closed matters, inequalities
and unions convert to intervals); equations equal up to a non-zero factor; expressions with
symbols are compared at fixed sample points with 80-digit arithmetic (never by a symbolic
simplify(), which has no time bound).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from fractions import Fraction
from functools import lru_cache
from typing import Any

from reward.evaluate import Undefined, context, numeric_value, rational_value, symbols
from reward.limits import MAX_ANSWER_CHARS, MAX_PLUS_MINUS, Unsupported, check_deadline
from reward.normalize import choice_value, normalize_answer, text_key
from reward.parser import Node, parse

_PLAIN_NUMBER_RE = re.compile(r"([-+]?)(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+|\d+)(\.\d+)?(%?)")
_MIXED_RE = re.compile(r"(-?)(\d+) (\d+)/(\d+)")
_COLLECTIONS = {"list", "set", "tuple", "pair", "matrix"}
_NO_PM_EXPANSION = _COLLECTIONS | {"rel", "chain", "union", "interval"}  # their parts expand instead
_INTERVALISH = {"interval", "union", "reals", "empty"}
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
# Fixed sample points for identity testing: irrational-looking rationals of both signs, some with
# |x| < 1 so that a dropped term of low order cannot hide behind a dominant high power.
_POINTS = ("1.3172", "-0.7419", "2.2361", "0.4142", "-1.8563")
# Constants are compared to 60 digits, so a decimal (at most 30 digits after the point, see
# reward.limits) never passes for an irrational value; expressions with symbols to 30 digits.
CONSTANT_DPS, CONSTANT_TOL = 100, 1e-60
POINT_DPS, POINT_TOL = 80, 1e-30


def quick_node(s: str) -> Node | None:
    """Plain numbers without the parser: `1,234.5`, `1 000`, `-3`, `2 1/2`, `45%`."""
    m = _PLAIN_NUMBER_RE.fullmatch(s)
    if m is not None:
        sign, whole, frac, pct = m.groups()
        value = Fraction(whole.replace(",", "").replace(" ", "") + (frac or ""))
        node: Node = ("num", -value if sign == "-" else value, whole + (frac or ""))
        return ("pct", node) if pct else node
    m = _MIXED_RE.fullmatch(s)
    if m is not None:
        sign, whole, num, den = m.groups()
        if int(den) == 0:
            return None
        value = int(whole) + Fraction(int(num), int(den))
        return ("num", -value if sign else value, "mixed")
    return None


@lru_cache(maxsize=8192)
def answer_node(normalized: str) -> Node | None:
    """AST of a normalized answer, or None when it is outside the grammar (then compared as text)."""
    if len(normalized) > MAX_ANSWER_CHARS:
        return None
    node = quick_node(normalized)
    if node is not None:
        return node
    try:
        return parse(normalized)
    except Unsupported:
        return None
    except (ValueError, ZeroDivisionError, OverflowError):
        return None  # e.g. a Fraction literal that Python refuses


@lru_cache(maxsize=16384)
def answers_equal(ground_truth: str, answer: str) -> bool:
    """True when `answer` has the same mathematical meaning as `ground_truth`."""
    if len(answer) > MAX_ANSWER_CHARS:
        return False
    g_text, a_text = normalize_answer(ground_truth), normalize_answer(answer)
    if not a_text:
        return False
    if _texts_equal(g_text, a_text):
        return True
    value = choice_value(a_text)  # "(C) 18": the value of the chosen option is the answer
    return value is not None and choice_value(g_text) is None and _texts_equal(g_text, value)


def _texts_equal(g_text: str, a_text: str) -> bool:
    if g_text.replace(" ", "") == a_text.replace(" ", ""):
        return True
    g, a = answer_node(g_text), answer_node(a_text)
    if g is None or a is None:
        return text_key(g_text) == text_key(a_text)
    try:
        return nodes_equal(g, a)
    except Unsupported:
        return False


# ----------------------------------------------------------------------------------------------
# structure


def _assignment(node: Node) -> tuple[str, Node] | None:
    """`x = 3` (or `3 = x`) as ("x", value)."""
    if node[0] != "rel" or node[1] != "=":
        return None
    if node[2][0] == "sym":
        return node[2][1], node[3]
    if node[3][0] == "sym":
        return node[3][1], node[2]
    return None


def _has_number(node: Any) -> bool:
    if isinstance(node, tuple) and node:
        return node[0] == "num" or any(_has_number(x) for x in node[1:])
    if isinstance(node, list):
        return any(_has_number(x) for x in node)
    return False


def _stated_value(node: Node, truth_symbols: set[str]) -> Node | None:
    """The value an equation chain states, when the truth is a plain value.

    `(x, y) = (2, -1)` states (2, -1); `f(x) = 2x + 3` states 2x + 3; `4 \\cdot 6 = 24` states 24.
    Each side before the last must be a pure label (symbols, no numbers) or a pure computation (no
    symbols), so that an equation to solve (`2x + 3 = 7`) is never read as stating 7.
    """
    if node[0] == "rel" and node[1] == "=":
        sides = [node[2], node[3]]
    elif node[0] == "chain" and set(node[1]) == {"="}:
        sides = list(node[2])
    else:
        return None
    last = sides[-1]
    if not symbols(last) <= truth_symbols:
        return None
    for side in sides[:-1]:
        if symbols(side) and _has_number(side):
            return None
    return last


def _by_label(node: Node) -> Node:
    """A list of assignments to distinct names (`y = -1, x = 2`) as the tuple ordered by name."""
    if node[0] not in ("list", "tuple"):
        return node
    pairs = [_assignment(x) for x in node[1]]
    if len(pairs) < 2 or any(p is None for p in pairs) or len({p[0] for p in pairs}) != len(pairs):
        return node
    return ("tuple", [value for _, value in sorted(pairs, key=lambda p: p[0])])


def _expand_pm(node: Node, budget: list[int]) -> list[Node]:
    """All sign choices of the `\\pm` inside an expression (1 \\pm \\sqrt2 -> two values)."""
    if node[0] == "pm":
        budget[0] += 1
        if budget[0] > MAX_PLUS_MINUS:
            raise Unsupported("too many \\pm")
        rights = [x for r in _expand_pm(node[2], budget) for x in (r, ("neg", r))]
        if node[1] is None:
            return rights
        return [("add", [left, r]) for left in _expand_pm(node[1], budget) for r in rights]
    options: list[list[Any]] = [[node[0]]]
    for part in node[1:]:
        if isinstance(part, tuple):
            choices: list[Any] = _expand_pm(part, budget)
        elif isinstance(part, list):
            choices = [list(c) for c in itertools.product(*(_expand_pm(x, budget) for x in part))]
        else:
            choices = [part]
        options = [[*o, c] for o in options for c in choices]
    return [tuple(o) for o in options]


def _contains_pm(node: Any) -> bool:
    if isinstance(node, tuple):
        return (len(node) > 0 and node[0] == "pm") or any(_contains_pm(x) for x in node[1:])
    if isinstance(node, list):
        return any(_contains_pm(x) for x in node)
    return False


def _items(node: Node) -> list[Node]:
    if node[0] == "pair":
        return [node[1], node[2]]
    if node[0] == "matrix":
        rows = node[1]
        if len(rows) == 1 or all(len(r) == 1 for r in rows):
            return [cell for row in rows for cell in row]  # a row or column vector reads as a tuple
        raise Unsupported("matrix is not a vector")
    return list(node[1])


def _unordered_equal(gs: list[Node], as_: list[Node]) -> bool:
    """Same elements in any order (set semantics: duplicates on either side do not count twice)."""
    g_unique: list[Node] = []
    for x in gs:
        if not any(nodes_equal(x, y) for y in g_unique):
            g_unique.append(x)
    a_unique: list[Node] = []
    for x in as_:
        if not any(nodes_equal(x, y) for y in a_unique):
            a_unique.append(x)
    if len(g_unique) != len(a_unique):
        return False
    remaining = list(a_unique)
    for x in g_unique:
        for k, y in enumerate(remaining):
            if nodes_equal(x, y):
                del remaining[k]
                break
        else:
            return False
    return True


def _is_intervalish(node: Node) -> bool:
    if node[0] in _INTERVALISH:
        return True
    if node[0] == "rel" and node[1] in ("<", ">", "<=", ">=", "!=", "in"):
        return True
    if node[0] == "chain":
        return True
    return node[0] == "list" and all(_is_intervalish(x) for x in node[1])


def nodes_equal(g: Node, a: Node) -> bool:
    """Structural equality of two answer ASTs (ground truth first)."""
    check_deadline()
    if g[0] not in _NO_PM_EXPANSION and _contains_pm(g):
        g = ("list", _expand_pm(g, [0]))  # always >= 2 alternatives, so this cannot recurse forever
    if a[0] not in _NO_PM_EXPANSION and _contains_pm(a):
        a = ("list", _expand_pm(a, [0]))
    ga, aa = _assignment(g), _assignment(a)
    if ga and aa:
        if ga[0] == aa[0]:
            return nodes_equal(ga[1], aa[1])
        return _equations_equal(g, a)
    if aa and g[0] != "rel":
        return nodes_equal(g, aa[1])
    if ga and a[0] != "rel":
        return nodes_equal(ga[1], a)
    if g[0] not in ("rel", "chain"):
        stated = _stated_value(a, symbols(g))
        if stated is not None:
            return nodes_equal(g, stated)
    if _is_intervalish(g) or _is_intervalish(a):
        from reward.intervals import intervals_equal  # only answers that look like sets of reals

        return intervals_equal(g, a, nodes_equal)
    if g[0] == "rel" or a[0] == "rel":
        return g[0] == a[0] == "rel" and g[1] == a[1] == "=" and _equations_equal(g, a)
    if g[0] in _COLLECTIONS or a[0] in _COLLECTIONS:
        if g[0] in ("tuple", "pair", "matrix"):
            a = _by_label(a)
        return _collections_equal(g, a)
    return scalars_equal(g, a)


def _collections_equal(g: Node, a: Node) -> bool:
    if g[0] not in _COLLECTIONS:
        return a[0] in ("set", "list") and len(a[1]) == 1 and nodes_equal(g, a[1][0])
    if a[0] not in _COLLECTIONS:
        return g[0] in ("set", "list") and len(g[1]) == 1 and nodes_equal(g[1][0], a)
    if g[0] == "matrix" and a[0] == "matrix":
        g_rows, a_rows = g[1], a[1]
        if len(g_rows) != len(a_rows) or len(g_rows[0]) != len(a_rows[0]):
            return False
        return all(
            nodes_equal(x, y) for gr, ar in zip(g_rows, a_rows, strict=False) for x, y in zip(gr, ar, strict=False)
        )
    gs, as_ = _items(g), _items(a)
    if g[0] in ("set", "list"):
        return _unordered_equal(gs, as_)
    if a[0] == "set":
        return False  # an ordered truth is not matched by a set
    return len(gs) == len(as_) and all(nodes_equal(x, y) for x, y in zip(gs, as_, strict=False))


# ----------------------------------------------------------------------------------------------
# scalars


def _alternatives(node: Node) -> list[Node]:
    """A percent may be meant as its value or as the bare number: 25% matches 0.25 and 25."""
    return [node, node[1]] if node[0] == "pct" else [node]


def scalars_equal(g: Node, a: Node) -> bool:
    return any(_value_equal(x, y) for x in _alternatives(g) for y in _alternatives(a))


def _value_equal(g: Node, a: Node) -> bool:
    rg, ra = rational_value(g), rational_value(a)
    if rg is not None and ra is not None:
        return rg == ra
    names = symbols(g) | symbols(a)
    if names:
        return _same_at_points(lambda env: (numeric_value(g, *env), numeric_value(a, *env)), names)
    ctx = context(CONSTANT_DPS)
    try:
        x, y = numeric_value(g, ctx, {}), numeric_value(a, ctx, {})
    except Undefined:
        return False
    return _close(ctx, x, y, CONSTANT_TOL)


def _close(ctx: Any, x: Any, y: Any, tol: float) -> bool:
    if not (ctx.isfinite(x) and ctx.isfinite(y)):
        return not (ctx.isnan(x) or ctx.isnan(y)) and x == y  # the same infinity
    return bool(abs(x - y) <= tol * max(1, abs(x), abs(y)))


def _sample_points(ctx: Any, names: set[str]) -> list[dict[str, Any]]:
    ordered = sorted(names)
    n = len(_POINTS)
    return [{s: ctx.mpf(_POINTS[(k + 2 * j) % n]) for j, s in enumerate(ordered)} for k in range(n)]


def _same_at_points(values: Callable[[tuple[Any, dict[str, Any]]], tuple[Any, Any]], names: set[str]) -> bool:
    """Identity test: equal (to POINT_TOL) at every sample point where both sides are defined, and
    defined at two points at least."""
    ctx = context(POINT_DPS)
    valid = 0
    for env in _sample_points(ctx, names):
        try:
            x, y = values((ctx, env))
        except Undefined:
            continue  # outside the domain at this point
        if not (ctx.isfinite(x) and ctx.isfinite(y)):
            continue
        if not _close(ctx, x, y, POINT_TOL):
            return False
        valid += 1
    return valid >= 2


def _equations_equal(g: Node, a: Node) -> bool:
    """Two equations are the same when (lhs - rhs) differ by a non-zero constant factor."""
    fg: Node = ("add", [g[2], ("neg", g[3])])
    fa: Node = ("add", [a[2], ("neg", a[3])])
    names = symbols(fg)
    if not names or names != symbols(fa):
        return False
    ctx = context(POINT_DPS)
    ratio = None
    valid = 0
    for env in _sample_points(ctx, names):
        try:
            vg, va = numeric_value(fg, ctx, env), numeric_value(fa, ctx, env)
        except Undefined:
            continue
        if not (ctx.isfinite(vg) and ctx.isfinite(va)) or abs(vg) < 1e-20:
            continue
        r = va / vg
        if abs(r) < 1e-20 or (ratio is not None and not _close(ctx, r, ratio, POINT_TOL)):
            return False
        ratio = r
        valid += 1
    return valid >= 2
