"""Values of parsed expressions: exact rationals first, bounded high-precision numbers second.

`rational_value` covers the bulk of graded answers (integers, decimals, fractions, percents,
powers of numbers) with Python's Fraction in microseconds and decides them exactly.

Everything else (radicals, pi, e, i, functions, symbols) is evaluated straight from our AST with
mpmath at a chosen precision. We deliberately do not build sympy objects: sympy's constructors
simplify eagerly and without a time bound (a 60-character expression inside Abs() took 15 s in
our fuzzing), whereas here every node costs microseconds and every operation whose cost grows
with its arguments (powers, exponentials, trigonometry, factorials) is checked against the bounds
in reward.limits first, so `9^{9^{9^9}}` is refused instead of computed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from reward.limits import MAX_EXPONENT, MAX_FACTORIAL, MAX_RESULT_BITS, Unsupported, check_deadline
from reward.parser import Node

_ARITH = {"num", "add", "neg", "mul", "div", "pow", "pct", "fact", "abs"}
MAX_MAGNITUDE_BITS = 4096  # |x| < 2**4096 for arguments of exp, trig, gamma and exponents
MAX_POWER_LOG = 2.0**20  # |exponent * ln|base|| of a power: beyond it the result is refused, not computed


class Undefined(ArithmeticError):
    """The expression has no finite value here (pole, log 0, overflow): skip this sample point."""


def _bits(q: Fraction) -> int:
    return max(q.numerator.bit_length(), q.denominator.bit_length())


def _rational_power(base: Fraction, exp: Fraction) -> Fraction | None:
    if exp.denominator != 1:
        return None
    e = exp.numerator
    if base in (0, 1) or base == -1:
        if base == 0 and e < 0:
            return None
        return base**e
    if abs(e) > MAX_EXPONENT or _bits(base) * abs(e) > MAX_RESULT_BITS:
        raise Unsupported("power too large")
    return base**e


def rational_value(node: Node) -> Fraction | None:
    """Exact value when `node` is plain rational arithmetic, else None (not rational or not a number)."""
    kind = node[0]
    if kind not in _ARITH:
        return None
    if kind == "num":
        return node[1]
    if kind in ("neg", "pct", "abs"):
        v = rational_value(node[1])
        if v is None:
            return None
        return -v if kind == "neg" else v / 100 if kind == "pct" else abs(v)
    if kind == "fact":
        v = rational_value(node[1])
        if v is None or v.denominator != 1 or v < 0:
            return None
        if v > MAX_FACTORIAL:
            raise Unsupported("factorial too large")
        return Fraction(math.factorial(int(v)))
    if kind in ("add", "mul"):
        total = Fraction(0) if kind == "add" else Fraction(1)
        for item in node[1]:
            v = rational_value(item)
            if v is None:
                return None
            total = total + v if kind == "add" else total * v
            if _bits(total) > MAX_RESULT_BITS:
                raise Unsupported("number too large")
        return total
    if kind == "div":
        a, b = rational_value(node[1]), rational_value(node[2])
        if a is None or b is None or b == 0:
            return None
        return a / b
    base, exp = rational_value(node[1]), rational_value(node[2])
    if base is None or exp is None:
        return None
    return _rational_power(base, exp)


# ----------------------------------------------------------------------------------------------
# high-precision numbers

_local = threading.local()


def context(dps: int) -> Any:
    """This thread's mpmath context at `dps` digits (mpmath's global context is not thread-safe)."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        import mpmath  # deferred: most answers never need it

        ctx = _local.ctx = mpmath.MPContext()
    ctx.dps = dps
    return ctx


def symbols(node: Any) -> set[str]:
    """Names of the free symbols in an AST (e and i are constants)."""
    if isinstance(node, tuple) and node:
        if node[0] == "sym":
            return set() if node[1] in ("e", "i") else {node[1]}
        return set().union(*(symbols(x) for x in node[1:]))
    if isinstance(node, list):
        return set().union(*(symbols(x) for x in node))
    return set()


def _bounded(ctx: Any, x: Any, what: str) -> Any:
    if not ctx.isfinite(x):
        raise Undefined(f"{what} of a non-finite value")
    if x != 0 and ctx.mag(x) > MAX_MAGNITUDE_BITS:
        raise Undefined(f"{what} of a huge value")
    return x


_FUNCS = {
    "sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc", "arcsin": "asin",
    "arccos": "acos", "arctan": "atan", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "exp": "exp",
}  # fmt: skip


def numeric_value(node: Node, ctx: Any, env: Mapping[str, Any]) -> Any:
    """Value of a scalar AST node with symbols bound by `env`; raises Undefined or Unsupported."""
    check_deadline()
    kind = node[0]
    if kind == "num":
        return ctx.mpf(node[1].numerator) / node[1].denominator
    if kind == "sym":
        if node[1] == "e":
            return ctx.e
        if node[1] == "i":
            return ctx.j
        if node[1] not in env:
            raise Unsupported(f"symbol {node[1]} has no value here")
        return env[node[1]]
    if kind == "const":
        return +ctx.pi if node[1] == "pi" else ctx.inf
    if kind in ("neg", "pct", "abs"):
        v = numeric_value(node[1], ctx, env)
        return -v if kind == "neg" else v / 100 if kind == "pct" else abs(v)
    if kind in ("floor", "ceil"):
        v = _bounded(ctx, numeric_value(node[1], ctx, env), kind)
        return ctx.floor(v) if kind == "floor" else ctx.ceil(v)
    if kind in ("add", "mul"):
        values = [numeric_value(x, ctx, env) for x in node[1]]
        return ctx.fsum(values) if kind == "add" else ctx.fprod(values)
    if kind == "div":
        num, den = numeric_value(node[1], ctx, env), numeric_value(node[2], ctx, env)
        if den == 0:
            raise Undefined("division by zero")
        return num / den
    if kind == "pow":
        return _power(ctx, numeric_value(node[1], ctx, env), numeric_value(node[2], ctx, env))
    if kind == "root":
        index, arg = numeric_value(node[1], ctx, env), numeric_value(node[2], ctx, env)
        if index == 0:
            raise Undefined("zeroth root")
        if ctx.isint(index) and int(index) % 2 == 1 and ctx.im(arg) == 0 and ctx.re(arg) < 0:
            return -_power(ctx, -arg, 1 / index)  # the real odd root: the cube root of -8 is -2
        return _power(ctx, arg, 1 / index)
    if kind in ("fact", "binom"):
        args = [_bounded(ctx, numeric_value(x, ctx, env), kind) for x in node[1:]]
        if kind == "fact" and ctx.isint(args[0]) and ctx.re(args[0]) > 10 * MAX_FACTORIAL:
            raise Undefined("factorial too large")
        try:
            return ctx.factorial(args[0]) if kind == "fact" else ctx.binomial(*args)
        except (ValueError, ZeroDivisionError) as err:
            raise Undefined(str(err)) from err
    if kind == "func":
        arg = _bounded(ctx, numeric_value(node[2], ctx, env), node[1])
        return _call(getattr(ctx, _FUNCS[node[1]]), arg)
    if kind == "log":
        arg = numeric_value(node[2], ctx, env)
        if arg == 0:
            raise Undefined("log of zero")
        if node[1] is None:
            return _call(ctx.ln, arg)
        base = numeric_value(node[1], ctx, env)
        if base in (0, 1):
            raise Undefined("log base")
        return _call(ctx.ln, arg) / _call(ctx.ln, base)
    raise Unsupported(f"{kind} is not a scalar")


def _call(fn: Any, arg: Any) -> Any:
    try:
        return fn(arg)
    except (ValueError, ZeroDivisionError) as err:
        raise Undefined(str(err)) from err


def _power(ctx: Any, base: Any, exp: Any) -> Any:
    if base == 0:
        if ctx.re(exp) <= 0:
            raise Undefined("zero to a non-positive power")
        return ctx.mpf(0)
    if not (ctx.isfinite(base) and ctx.isfinite(exp)):
        raise Undefined("power of a non-finite value")
    if exp != 0 and ctx.mag(exp) > MAX_MAGNITUDE_BITS:
        raise Undefined("exponent too large")  # the result's exponent would not fit in memory
    if abs(exp) * abs(ctx.log(abs(base))) > MAX_POWER_LOG:
        raise Undefined("power too large")  # mpmath's exact integer powers take time in the exponent's size
    return ctx.power(base, exp)
