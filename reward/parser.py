"""Recursive-descent parser from answer tokens to a small tuple AST (no eval, no sympify).

The grammar is deliberately small: numbers, symbols, + - * / ^ ! %, ``\\pm``, fractions, roots,
binomials, a few functions, absolute value / floor / ceiling, relations (=, <, <=, \\in, chains),
comma lists, tuples, intervals, sets, unions and matrices. Every recursion is depth-bounded and
the token count is bounded by the lexer, so parsing is linear and cannot blow the stack.

AST nodes are tuples whose first element names the kind:
``("num", Fraction, literal)``, ``("sym", name)``, ``("const", "pi"|"oo")``, ``("add", [terms])``,
``("neg", x)``, ``("mul", [factors])``, ``("div", a, b)``, ``("pow", base, exp)``, ``("fact", x)``,
``("pct", x)``, ``("pm", a|None, b)``, ``("func", name, arg)``, ``("log", base|None, arg)``,
``("root", n, x)``, ``("binom", n, k)``, ``("abs"|"floor"|"ceil", x)``, ``("rel", op, a, b)``,
``("chain", ops, exprs)``, ``("list"|"tuple"|"set"|"union", [items])``, ``("pair", a, b)``,
``("interval", lo, hi, lo_closed, hi_closed)``, ``("matrix", rows)``, ``("empty",)``, ``("reals",)``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from reward.lexer import Token, tokenize
from reward.limits import MAX_DEPTH, MAX_LIST_ITEMS, Unsupported, check_deadline

Node = tuple[Any, ...]
RELOPS = {"=", "<", ">", "<=", ">=", "!=", "in"}
MATRIX_ENVS = {"pmatrix", "bmatrix", "Bmatrix", "matrix", "smallmatrix", "array"}
_CLOSERS = {"(": ")", "[": "]"}


def repeating_decimal(literal: str, period: str) -> Fraction:
    """Value of `literal` followed by `period` repeated forever: 0.1 and 6 give 1/6."""
    whole, _, frac = literal.partition(".")
    base = Fraction(f"{whole or 0}.{frac}") if frac else Fraction(int(whole or 0))
    scale = 10 ** len(frac)
    return base + Fraction(int(period), scale * (10 ** len(period) - 1))


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.toks = tokens
        self.i = 0
        self.depth = 0
        self.abs_depth = 0

    # -- token helpers -------------------------------------------------------------------
    def peek(self) -> Token:
        return self.toks[self.i]

    def next(self) -> Token:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def at(self, kind: str, value: str | None = None) -> bool:
        tok = self.toks[self.i]
        return tok.kind == kind and (value is None or tok.value == value)

    def accept(self, kind: str, value: str | None = None) -> Token | None:
        return self.next() if self.at(kind, value) else None

    def expect(self, kind: str, value: str) -> None:
        if not self.accept(kind, value):
            raise Unsupported(f"expected {value!r}, found {self.peek().value!r}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Unsupported("nesting too deep")
        check_deadline()

    # -- grammar ---------------------------------------------------------------------------
    def answer(self) -> Node:
        items = self.sequence()
        if not self.at("eof"):
            raise Unsupported(f"unexpected {self.peek().value!r}")
        return items[0] if len(items) == 1 else ("list", items)

    def sequence(self) -> list[Node]:
        items = [self.relation()]
        while self.accept("op", ",") or self.accept("op", ";"):
            if self.at("eof") or self.at("op", ")") or self.at("op", "]") or self.at("op", "}"):
                break  # trailing comma
            items.append(self.relation())
            if len(items) > MAX_LIST_ITEMS:
                raise Unsupported("too many items")
        return items

    def relation(self) -> Node:
        self.enter()
        exprs = [self.union()]
        ops: list[str] = []
        while self.peek().kind == "op" and self.peek().value in RELOPS:
            ops.append(self.next().value)
            exprs.append(self.union())
        self.depth -= 1
        if not ops:
            return exprs[0]
        if len(ops) == 1:
            return ("rel", ops[0], exprs[0], exprs[1])
        return ("chain", tuple(ops), tuple(exprs))

    def union(self) -> Node:
        parts = [self.additive()]
        while self.accept("op", "cup"):
            parts.append(self.additive())
        return parts[0] if len(parts) == 1 else ("union", parts)

    def additive(self) -> Node:
        if self.accept("op", "pm") or self.accept("op", "mp"):
            terms: list[Node] = [("pm", None, self.term())]
        else:
            terms = [self.term()]
        while self.peek().kind == "op" and self.peek().value in ("+", "-", "pm", "mp"):
            op = self.next().value
            right = self.term()
            if op == "+":
                terms.append(right)
            elif op == "-":
                terms.append(("neg", right))
            else:
                terms = [("pm", _combine("add", terms), right)]
        return _combine("add", terms)

    def starts_factor(self) -> bool:
        tok = self.peek()
        if tok.kind in ("sym", "const", "func", "begin") or (tok.kind == "cmd" and tok.value != "overline"):
            return True
        if tok.kind == "op":
            return tok.value in ("(", "{", "\\{", "lfloor", "lceil") or (tok.value == "|" and self.abs_depth == 0)
        return False

    def term(self) -> Node:
        factors = [self.unary()]
        while True:
            if self.accept("op", "*"):
                factors.append(self.unary())
            elif self.accept("op", "/"):
                factors = [("div", _combine("mul", factors), self.unary())]
            elif self.at("num"):
                raise Unsupported("two numbers side by side")
            elif self.starts_factor():
                is_frac = self.at("cmd", "frac")
                factor = self.power()
                if is_frac and len(factors) == 1 and _is_mixed(factors[0], factor):
                    whole = factors[0]
                    factors = (
                        [("neg", ("add", [whole[1], factor]))] if whole[0] == "neg" else [("add", [whole, factor])]
                    )
                else:
                    factors.append(factor)
            else:
                break
            if len(factors) > MAX_LIST_ITEMS:
                raise Unsupported("product too long")
        return _combine("mul", factors)

    def unary(self) -> Node:
        self.enter()
        if self.accept("op", "-"):
            node: Node = ("neg", self.unary())
        elif self.accept("op", "+"):
            node = self.unary()
        else:
            node = self.power()
        self.depth -= 1
        return node

    def power(self) -> Node:
        base = self.postfix()
        if self.accept("op", "^"):
            return ("pow", base, self.exponent())
        return base

    def exponent(self) -> Node:
        self.enter()
        if self.accept("op", "{"):
            node = self.group_rest("}")
        elif self.accept("op", "-"):
            node = ("neg", self.exponent())
        elif self.accept("op", "+"):
            node = self.exponent()
        else:
            node = self.power()  # right-associative: 10^10^10 is 10^(10^10)
        self.depth -= 1
        return node

    def postfix(self) -> Node:
        node = self.primary()
        while True:
            if self.accept("op", "!"):
                node = ("fact", node)
            elif self.accept("op", "%"):
                node = ("pct", node)
            else:
                return node

    def group_rest(self, closer: str) -> Node:
        items = self.sequence()
        self.expect("op", closer)
        return items[0] if len(items) == 1 else ("set", items)

    def latex_arg(self) -> Node:
        """One argument of \\frac / \\sqrt / \\binom: a braced group or a single token (`\\frac12`)."""
        self.enter()
        tok = self.peek()
        if self.accept("op", "{"):
            node = self.group_rest("}")
        elif tok.kind == "num" and tok.value.isdigit() and len(tok.value) > 1:
            self.toks[self.i] = Token("num", tok.value[1:], False)  # `\frac12`: the arguments are 1 and 2
            node = ("num", Fraction(int(tok.value[0])), tok.value[0])
        else:
            node = self.postfix()
        self.depth -= 1
        return node

    def primary(self) -> Node:
        self.enter()
        node = self._primary(self.next())
        self.depth -= 1
        return node

    def _primary(self, tok: Token) -> Node:
        if tok.kind == "num":
            return self.number(tok.value)
        if tok.kind == "sym":
            return ("sym", tok.value + self.subscript())
        if tok.kind == "const":
            return ("empty",) if tok.value == "empty" else ("const", tok.value)
        if tok.kind == "func":
            return self.function(tok.value)
        if tok.kind == "cmd":
            if tok.value == "frac":
                return ("div", self.latex_arg(), self.latex_arg())
            if tok.value == "binom":
                return ("binom", self.latex_arg(), self.latex_arg())
            if tok.value == "mathbb":
                arg = self.latex_arg()
                if arg == ("sym", "R"):
                    return ("reals",)
            raise Unsupported(f"\\{tok.value} here")
        if tok.kind == "begin":
            return self.matrix(tok.value)
        if tok.kind == "op":
            if tok.value in _CLOSERS:
                return self.bracket(tok.value)
            if tok.value == "{":
                return self.group_rest("}")
            if tok.value == "\\{":
                if self.accept("op", "\\}"):
                    return ("empty",)
                items = self.sequence()
                self.expect("op", "\\}")
                return ("set", items)
            if tok.value == "|":
                self.abs_depth += 1
                inner = self.additive()
                self.expect("op", "|")
                self.abs_depth -= 1
                return ("abs", inner)
            if tok.value in ("lfloor", "lceil"):
                inner = self.additive()
                self.expect("op", "r" + tok.value[1:])
                return (tok.value[1:], inner)
        raise Unsupported(f"unexpected {tok.value!r}")

    def number(self, literal: str) -> Node:
        if self.accept("cmd", "overline"):
            period = self.latex_arg()
            if period[0] != "num" or not period[2].isdigit() or "." not in literal:
                raise Unsupported("\\overline is only read as a repeating decimal")
            return ("num", repeating_decimal(literal, period[2]), literal + "r")
        return ("num", Fraction(literal), literal)

    def subscript(self) -> str:
        if not self.accept("op", "_"):
            return ""
        if self.accept("op", "{"):
            parts = []
            while self.peek().kind in ("num", "sym"):
                parts.append(self.next().value)
            self.expect("op", "}")
            return "_" + "".join(parts)
        tok = self.next()
        if tok.kind not in ("num", "sym"):
            raise Unsupported("bad subscript")
        return "_" + tok.value

    def bracket(self, opener: str) -> Node:
        items = self.sequence()
        closer = self.next()
        if closer.kind != "op" or closer.value not in (")", "]"):
            raise Unsupported("unclosed bracket")
        matched = closer.value == _CLOSERS[opener]
        if len(items) == 1:
            if not matched:
                raise Unsupported("mismatched brackets")
            return items[0]
        if len(items) == 2 and not (opener == "(" and matched):
            return ("interval", items[0], items[1], opener == "[", closer.value == "]")
        if len(items) == 2:
            return ("pair", items[0], items[1])
        if not matched:
            raise Unsupported("mismatched brackets")
        return ("tuple", items)

    def function(self, name: str) -> Node:
        if name == "sqrt":
            index = None
            if self.accept("op", "["):
                index = self.additive()
                self.expect("op", "]")
            arg = self.latex_arg()
            return ("root", index, arg) if index is not None else ("root", ("num", Fraction(2), "2"), arg)
        base = None
        if name in ("log", "lg") and self.accept("op", "_"):
            base = self.latex_arg()
        power = ("pow", None, self.exponent()) if self.accept("op", "^") else None
        arg = self.function_arg()
        node: Node = ("log", base, arg) if name in ("log", "ln", "lg") else ("func", name, arg)
        if name == "lg" and base is None:
            node = ("log", ("num", Fraction(10), "10"), arg)
        if power is None:
            return node
        if power[2] == ("neg", ("num", Fraction(1), "1")) and name in ("sin", "cos", "tan"):
            return ("func", "arc" + name, arg)  # \sin^{-1} x is arcsin x
        return ("pow", node, power[2])

    def function_arg(self) -> Node:
        """`\\sin(x)`, `\\sin{x}`, or LaTeX juxtaposition `\\sin 2x` (the factors up to an operator)."""
        if self.at("op", "(") or self.at("op", "{"):
            return self.power()
        factors = [self.power()]
        while self.at("num") or (self.starts_factor() and not self.at("func")):
            factors.append(self.power())
            if len(factors) > MAX_LIST_ITEMS:
                raise Unsupported("argument too long")
        return _combine("mul", factors)

    def matrix(self, env: str) -> Node:
        if env not in MATRIX_ENVS:
            raise Unsupported(f"environment {env}")
        if env == "array" and self.accept("op", "{"):
            while not self.accept("op", "}"):  # column spec such as {cc}
                if self.next().kind == "eof":
                    raise Unsupported("unclosed array spec")
        rows: list[list[Node]] = [[]]
        while True:
            rows[-1].append(self.relation())
            if self.accept("op", "&"):
                continue
            if self.accept("op", "rowsep"):
                if self.at("end"):
                    break
                rows.append([])
                if sum(len(r) for r in rows) > MAX_LIST_ITEMS:
                    raise Unsupported("matrix too large")
                continue
            break
        end = self.next()
        if end.kind != "end" or end.value != env:
            raise Unsupported("unclosed matrix")
        if len({len(r) for r in rows}) != 1:
            raise Unsupported("ragged matrix")
        return ("matrix", rows)


def _is_mixed(whole: Node, frac: Node) -> bool:
    """`2\\frac{1}{2}` is two and a half: an integer literal followed by a fraction of integer literals."""
    if whole[0] == "neg":
        whole = whole[1]
    if whole[0] != "num" or not whole[2].isdigit() or frac[0] != "div":
        return False
    return all(part[0] == "num" and part[2].isdigit() for part in frac[1:])


def _combine(kind: str, items: list[Node]) -> Node:
    return items[0] if len(items) == 1 else (kind, items)


def parse(text: str) -> Node:
    """AST of a normalized answer; raises Unsupported for anything outside the grammar or bounds."""
    return _Parser(tokenize(text)).answer()
