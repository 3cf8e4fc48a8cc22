"""Answers that denote subsets of the real line: intervals, unions, inequalities, R and the empty set.

Both sides are turned into a sorted list of disjoint intervals and compared endpoint by endpoint
(exactly, through the caller's equality) together with open/closed ends, so
``[1,2] \\cup (2,3)`` equals ``[1, 3)`` and ``x > 3`` equals ``(3, \\infty)`` but ``(1, 2]`` is not
``[1, 2]``. A two-element parenthesized pair is read as an open interval here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from reward.evaluate import Undefined, context, numeric_value, rational_value, symbols
from reward.limits import Unsupported
from reward.parser import Node

Interval = tuple[Node, Node, bool, bool]  # low, high, low closed, high closed
_INF: Node = ("const", "oo")
_NEG_INF: Node = ("neg", _INF)


def _has_symbol(node: Node) -> bool:
    return bool(symbols(node))


def _bound(op: str, value: Node) -> list[Interval]:
    """The set {x : x op value}."""
    return {
        "<": [(_NEG_INF, value, False, False)],
        "<=": [(_NEG_INF, value, False, True)],
        ">": [(value, _INF, False, False)],
        ">=": [(value, _INF, True, False)],
        "=": [(value, value, True, True)],
        "!=": [(_NEG_INF, value, False, False), (value, _INF, False, False)],
    }[op]


def to_intervals(node: Node) -> list[Interval] | None:
    """The subset of R that `node` denotes, or None when it is not such a set."""
    kind = node[0]
    if kind in ("interval", "pair"):
        if _has_symbol(node):
            return None  # endpoints must be numbers: (a, b) with symbols is a point, not an interval
        return [(node[1], node[2], node[3], node[4])] if kind == "interval" else [(node[1], node[2], False, False)]
    if kind == "reals":
        return [(_NEG_INF, _INF, False, False)]
    if kind == "empty":
        return []
    if kind in ("union", "list", "set"):
        parts: list[Interval] = []
        for item in node[1]:
            if kind == "set" and not _has_symbol(item) and item[0] not in ("interval", "pair", "rel"):
                parts.append((item, item, True, True))
                continue
            sub = to_intervals(item)
            if sub is None:
                return None
            parts.extend(sub)
        return parts
    if kind == "rel":
        op, left, right = node[1], node[2], node[3]
        if op == "in":
            return to_intervals(right) if left[0] == "sym" else None
        if left[0] == "sym" and not _has_symbol(right):
            return _bound(op, right)
        if right[0] == "sym" and not _has_symbol(left):
            flipped = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "=", "!=": "!="}[op]
            return _bound(flipped, left)
        return None
    if kind == "chain" and len(node[1]) == 2:
        (op1, op2), (low, var, high) = node[1], node[2]
        if var[0] != "sym" or _has_symbol(low) or _has_symbol(high):
            return None
        if op1 in ("<", "<=") and op2 in ("<", "<="):
            return [(low, high, op1 == "<=", op2 == "<=")]
        if op1 in (">", ">=") and op2 in (">", ">="):
            return [(high, low, op2 == ">=", op1 == ">=")]
    return None


def _float(node: Node) -> float:
    if node == _INF:
        return math.inf
    if node == _NEG_INF:
        return -math.inf
    q = rational_value(node)
    if q is not None:
        return float(q)
    ctx = context(30)
    try:
        value = numeric_value(node, ctx, {})
    except Undefined as err:
        raise Unsupported("undefined interval endpoint") from err
    if ctx.im(value) != 0:
        raise Unsupported("non-real interval endpoint")
    return float(ctx.re(value))


def _canonical(parts: list[Interval], same: Callable[[Node, Node], bool]) -> list[tuple[Interval, float, float]]:
    """Sorted, merged, non-empty intervals with their float endpoints."""
    items = []
    for lo, hi, lc, hc in parts:
        flo, fhi = _float(lo), _float(hi)
        lc, hc = lc and math.isfinite(flo), hc and math.isfinite(fhi)
        if flo > fhi or (flo == fhi and not (lc and hc)):
            continue
        items.append(((lo, hi, lc, hc), flo, fhi))
    items.sort(key=lambda t: (t[1], not t[0][2]))
    merged: list[tuple[Interval, float, float]] = []
    for (lo, hi, lc, hc), flo, fhi in items:
        if merged:
            (mlo, mhi, mlc, mhc), mflo, mfhi = merged[-1]
            touching = math.isclose(flo, mfhi, rel_tol=1e-12, abs_tol=1e-15) and same(lo, mhi)
            if (flo < mfhi and not touching) or (touching and (mhc or lc)):
                if fhi > mfhi or (math.isclose(fhi, mfhi) and same(hi, mhi) and hc):
                    merged[-1] = ((mlo, hi, mlc, hc), mflo, fhi)
                continue
        merged.append(((lo, hi, lc, hc), flo, fhi))
    return merged


def intervals_equal(g: Node, a: Node, same: Callable[[Node, Node], bool]) -> bool:
    """Whether `g` and `a` denote the same subset of R (False if either is not such a set)."""
    gi, ai = to_intervals(g), to_intervals(a)
    if gi is None or ai is None:
        return False
    gc, ac = _canonical(gi, same), _canonical(ai, same)
    if len(gc) != len(ac):
        return False
    for ((glo, ghi, glc, ghc), _, _), ((alo, ahi, alc, ahc), _, _) in zip(gc, ac, strict=False):
        if glc != alc or ghc != ahc or not same(glo, alo) or not same(ghi, ahi):
            return False
    return True
