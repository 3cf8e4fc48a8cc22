"""Tokens of the answer grammar: numbers, one-letter symbols, known names and LaTeX commands.

The lexer is the first line of defence: anything that is not on its lists (unknown commands such
as ``\\input``, words, quotes, underscores-as-identifiers, Python syntax like ``__import__``)
raises Unsupported, and the answer is then only ever compared as text.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from reward.limits import MAX_EXPONENT, MAX_FRACTION_DIGITS, MAX_INT_DIGITS, MAX_TOKENS, Unsupported


class Token(NamedTuple):
    kind: str  # num, sym, const, func, cmd, op, begin, end, eof
    value: str
    spaced: bool  # whitespace before this token (matters for `\boxed 5`-style arguments and mixed numbers)


FUNCTIONS = {
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
    "log", "ln", "exp", "sqrt", "lg",
}  # fmt: skip
CONSTANTS = {"pi": "pi", "infty": "oo", "infinity": "oo", "inf": "oo", "varnothing": "empty", "emptyset": "empty"}
GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota",
    "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi",
    "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega",
}  # fmt: skip
# LaTeX commands and what they mean to the parser.
COMMANDS = {
    "cdot": ("op", "*"), "times": ("op", "*"), "ast": ("op", "*"), "div": ("op", "/"),
    "pm": ("op", "pm"), "mp": ("op", "mp"),
    "le": ("op", "<="), "leq": ("op", "<="), "leqslant": ("op", "<="), "lt": ("op", "<"),
    "ge": ("op", ">="), "geq": ("op", ">="), "geqslant": ("op", ">="), "gt": ("op", ">"),
    "ne": ("op", "!="), "neq": ("op", "!="), "cup": ("op", "cup"), "in": ("op", "in"),
    "{": ("op", "\\{"), "}": ("op", "\\}"), "lbrace": ("op", "\\{"), "rbrace": ("op", "\\}"),
    "|": ("op", "|"), "vert": ("op", "|"), "lvert": ("op", "|"), "rvert": ("op", "|"), "mid": ("op", "|"),
    "lfloor": ("op", "lfloor"), "rfloor": ("op", "rfloor"), "lceil": ("op", "lceil"), "rceil": ("op", "rceil"),
    "frac": ("cmd", "frac"), "sqrt": ("func", "sqrt"), "binom": ("cmd", "binom"), "dbinom": ("cmd", "binom"),
    "tbinom": ("cmd", "binom"), "overline": ("cmd", "overline"), "mathbb": ("cmd", "mathbb"),
    "\\": ("op", "rowsep"),
}  # fmt: skip
_TOKEN_RE = re.compile(
    r"(?P<space>\s+)"
    r"|(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+(?![\d.]))?|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<cmd>\\(?:[a-zA-Z]+|[{}|\\]))"
    r"|(?P<word>[a-zA-Z]+)"
    r"|(?P<op>\*\*|<=|>=|!=|[-+*/^()\[\]{},=<>!|&_%;])"
)
_ENV_RE = re.compile(r"\{\s*([a-zA-Z*]+)\s*\}")


def _num_ok(text: str) -> None:
    """Bound a literal before anything converts it: `1e999999` would be a million-digit Fraction."""
    mantissa, _, exponent = text.replace("E", "e").partition("e")
    whole, _, frac = mantissa.partition(".")
    if len(whole) > MAX_INT_DIGITS or len(frac) > MAX_FRACTION_DIGITS:
        raise Unsupported("number literal too long")
    digits = exponent.lstrip("+-").lstrip("0")
    if len(digits) > len(str(MAX_EXPONENT)) or (digits and int(digits) > MAX_EXPONENT):
        raise Unsupported("exponent of a number literal too large")


def _word_tokens(word: str, spaced: bool) -> list[Token]:
    """A run of letters: a known name, or at most two one-letter symbols (`xy`); prose is refused."""
    lower = word.lower()
    if lower in FUNCTIONS:
        return [Token("func", lower, spaced)]
    if lower in CONSTANTS:
        return [Token("const", CONSTANTS[lower], spaced)]
    if len(word) > 2:
        raise Unsupported(f"word {word[:20]!r} is text, not math")
    return [Token("sym", ch, spaced and k == 0) for k, ch in enumerate(word)]


def tokenize(s: str) -> list[Token]:
    """Split normalized answer text into tokens; raise Unsupported on anything outside the grammar."""
    tokens: list[Token] = []
    pos = 0
    spaced = False
    n = len(s)
    while pos < n:
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            raise Unsupported(f"unexpected character {s[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        text = m.group(0)
        if kind == "space":
            spaced = True
            continue
        if kind == "num":
            _num_ok(text)
            tokens.append(Token("num", text, spaced))
        elif kind == "word":
            tokens.extend(_word_tokens(text, spaced))
        elif kind == "op":
            tokens.append(Token("op", "^" if text == "**" else text, spaced))
        else:
            name = text[1:]
            if name in ("begin", "end"):
                env = _ENV_RE.match(s, pos)
                if env is None:
                    raise Unsupported(f"\\{name} without an environment name")
                pos = env.end()
                tokens.append(Token(name, env.group(1), spaced))
            elif name in COMMANDS:
                tokens.append(Token(*COMMANDS[name], spaced))
            elif name in FUNCTIONS:
                tokens.append(Token("func", name, spaced))
            elif name in CONSTANTS:
                tokens.append(Token("const", CONSTANTS[name], spaced))
            elif name in GREEK:
                tokens.append(Token("sym", name, spaced))
            else:
                raise Unsupported(f"unsupported command \\{name[:20]}")
        spaced = False
        if len(tokens) > MAX_TOKENS:
            raise Unsupported("answer too long")
    tokens.append(Token("eof", "", spaced))
    return tokens
