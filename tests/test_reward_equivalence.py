"""Equivalence classes of answers_equal(ground_truth, answer), one table per class, plus the parser."""

from __future__ import annotations

from fractions import Fraction

import pytest

from reward import answers_equal
from reward.equivalence import quick_node
from reward.evaluate import rational_value
from reward.limits import Unsupported
from reward.parser import parse, repeating_decimal

CLASSES: dict[str, list[tuple[str, str, bool]]] = {
    "numbers": [
        ("0.25", r"\frac{1}{4}", True),
        ("2", "2.0", True),
        ("2", "2.000001", False),
        ("-3", "−3", True),
        ("1234", "1,234", True),
        ("1234", r"1\,234", True),
        ("1234", "1 234", True),
        ("1,234", "1.234", False),
        ("2.5", r"2\frac{1}{2}", True),
        ("2.5", "2 1/2", True),
        ("-2.5", r"-2\frac12", True),
        ("1.5", r"\frac{3}{2}", True),
        ("7", "7/1", True),
        ("0", "-0", True),
    ],
    "percent": [
        ("25", r"25\%", True),
        ("0.25", "25%", True),
        (r"25\%", "0.25", True),
        ("25", "0.25", False),
        (r"50\%", r"\frac{1}{2}", True),
        (r"5\%", "0.5", False),
    ],
    "scientific": [
        ("32000", r"3.2\times 10^4", True),
        ("32000", "3.2e4", True),
        ("0.0032", "3.2E-3", True),
        ("32000", r"3.2 \cdot 10^{3}", False),
        ("2e", "5.43656", False),
    ],
    "repeating decimals": [
        (r"\frac{1}{3}", r"0.\overline{3}", True),
        (r"\frac{1}{6}", r"0.1\overline{6}", True),
        (r"\frac{1}{3}", "0.33333333", False),
        (r"\frac{1}{11}", r"0.\overline{09}", True),
    ],
    "latex normalization": [
        (r"\frac{1}{2}", r"\dfrac{1}{2}", True),
        (r"\frac{1}{2}", r"\tfrac12", True),
        ("(1,2)", r"\left( 1 , 2 \right)", True),
        ("5", r"\text{5}", True),
        ("5", r"\mathrm{5}", True),
        ("5", r"\displaystyle 5", True),
        ("5", r"5\!", True),
        (r"\text{yes}", "Yes", True),
        (r"\text{yes}", "no", False),
    ],
    "units, degrees, dollars": [
        ("5", r"5\text{ cm}", True),
        ("5", "5 meters", True),
        ("90", r"90^\circ", True),
        ("90", r"90^{\circ}", True),
        ("9.5", r"\$9.50", True),
        ("12", "12 marbles", True),
        ("5", r"6\text{ cm}", False),
        ("2m", "2", False),
    ],
    "radicals": [
        (r"\sqrt{8}", r"2\sqrt{2}", True),
        (r"\frac{1}{\sqrt{3}}", r"\frac{\sqrt{3}}{3}", True),
        (r"\sqrt{2}", "1.41421356237", False),
        (r"\sqrt[3]{16}", r"2\sqrt[3]{2}", True),
        ("-2", r"\sqrt[3]{-8}", True),
        (r"\sqrt{2}+\sqrt{3}", r"\sqrt{5+2\sqrt{6}}", True),
    ],
    "expressions": [
        ("(x+2)(x-2)", "x^2-4", True),
        ("x^2-4", "x^2+4", False),
        ("2(a+b)", "2a+2b", True),
        (r"\frac{x}{2}", "0.5x", True),
        ("x^2", "x^3", False),
        ("ab", "ba", True),
        ("ab", "a+b", False),
        (r"x_1 + x_2", r"x_{2} + x_{1}", True),
        (r"\sin^2 x + \cos^2 x", "1", True),
        (r"e^{\ln 2}", "2", True),
        ("x", "y", False),
        (r"\frac{1}{x}", "x^{-1}", True),
    ],
    "equations": [
        ("x=3", "3", True),
        ("3", "x=3", True),
        ("x=3", "y=3", False),
        ("y=2x+3", "2x-y+3=0", True),
        ("y=2x+3", "y=3x+2", False),
        ("y=2x+3", "2x+3", True),
        ("x+y=1", "2x+2y=2", True),
    ],
    "intervals": [
        ("(0,1]", "(0, 1]", True),
        ("(0,1]", "[0,1]", False),
        ("(0,1]", "(0,1)", False),
        (r"[0,1]\cup[2,3]", r"[2,3]\cup[0,1]", True),
        (r"[0,2)\cup[2,3]", "[0,3]", True),
        (r"(0,2)\cup(2,3)", "(0,3)", False),
        (r"(-\infty,0)", "x<0", True),
        (r"(-\infty,0]", "x<0", False),
        (r"(1,\infty)", r"x \in (1, \infty)", True),
        (r"(-\infty, 1)\cup(1,\infty)", r"x \neq 1", True),
        ("[-1,1]", r"-1 \leq x \leq 1", True),
        ("[-1,1]", r"1 \ge x \ge -1", True),
        (r"\mathbb{R}", r"(-\infty,\infty)", True),
    ],
    "sets and root lists": [
        ("1,2,3", "3,2,1", True),
        (r"\{1,2\}", "2,1", True),
        ("1,2", "1,2,2", True),
        ("1,2", "1", False),
        (r"\pm 3", "3,-3", True),
        (r"\pm 3", "3", False),
        (r"2 \pm \sqrt{5}", r"2+\sqrt5, 2-\sqrt5", True),
        ("1,2", "x=1, x=2", True),
        (r"\emptyset", r"\{\}", True),
        (r"\emptyset", r"\{0\}", False),
    ],
    "tuples": [
        ("(1,2)", "(1, 2)", True),
        ("(1,2)", "(2,1)", False),
        ("(1,2,3)", "(1,2,3)", True),
        ("(1,2,3)", "(3,2,1)", False),
        ("(1,2)", r"\{1,2\}", False),
        ("(1,2)", "1, 2", True),
    ],
    "matrices": [
        (r"\begin{pmatrix}1&0\\0&1\end{pmatrix}", r"\begin{bmatrix}1 & 0 \\ 0 & 1\end{bmatrix}", True),
        (r"\begin{pmatrix}1&0\\0&1\end{pmatrix}", r"\begin{pmatrix}0&1\\1&0\end{pmatrix}", False),
        (r"\begin{pmatrix}1\\2\end{pmatrix}", "(1,2)", True),
        (r"\begin{pmatrix}1&2\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", False),
        (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\left(\begin{array}{cc}1&2\\3&4\end{array}\right)", True),
    ],
    "complex numbers": [
        ("1+i", "i+1", True),
        ("1+i", "1-i", False),
        ("2i", r"\sqrt{-4}", True),
        ("-1", "i^2", True),
        ("5", "(2+i)(2-i)", True),
    ],
    "pi and e": [
        (r"2\pi", r"\pi+\pi", True),
        (r"\pi", "3.1416", False),
        (r"\frac{\pi}{4}", r"\arctan 1", True),
        ("e", "2.718281828", False),
        (r"e^{2}", r"\exp(2)", True),
        (r"\pi^2", "π^2", True),
    ],
    "infinity": [
        (r"\infty", r"\infty", True),
        (r"\infty", "∞", True),
        (r"\infty", r"-\infty", False),
        (r"-\infty", r"-\infty", True),
    ],
}


@pytest.mark.parametrize(
    ("truth", "answer", "expected"),
    [case for cases in CLASSES.values() for case in cases],
    ids=[f"{name}-{k}" for name, cases in CLASSES.items() for k in range(len(cases))],
)
def test_equivalence_class(truth: str, answer: str, expected: bool) -> None:
    assert answers_equal(truth, answer) is expected


def test_parser_reads_latex_conventions() -> None:
    assert rational_value(parse(r"\frac12")) == Fraction(1, 2)  # one-token arguments
    assert rational_value(parse(r"3\frac{1}{4}")) == Fraction(13, 4)  # mixed number
    assert rational_value(parse(r"3\cdot\frac{1}{4}")) == Fraction(3, 4)  # explicit product is not mixed
    assert rational_value(parse("2^-1")) == Fraction(1, 2)
    assert rational_value(parse("2**3**2")) == 512  # right-associative power
    assert rational_value(parse("5!")) == 120
    assert rational_value(parse("|-3|")) == 3
    assert parse("(1,2]")[0] == "interval" and parse("(1,2)")[0] == "pair" and parse("(1,2,3)")[0] == "tuple"
    assert repeating_decimal("0.1", "6") == Fraction(1, 6)
    assert quick_node("12%") == ("pct", ("num", Fraction(12), "12"))


@pytest.mark.parametrize(
    "text",
    [
        r"9^{9^{9^9}}",  # exponent bound
        "10**10**10",
        "(2^{2000})^{2000}",  # result size bound
        "301!",  # factorial bound
        "{" * 60 + "1" + "}" * 60,  # nesting bound
        "1+" * 500 + "1",  # token bound
        r"\input{/etc/passwd}",  # unknown command
        "__import__('os')",  # not math
        "Monday",  # prose is compared as text, never as a product of symbols
        "1" * 201,  # literal size bound
        "(1,2",  # unbalanced
    ],
)
def test_parser_refuses_out_of_bounds_input(text: str) -> None:
    with pytest.raises(Unsupported):
        rational_value(parse(text))


def test_word_answers_compare_as_text_not_as_symbol_products() -> None:
    assert answers_equal("dynamo", "Monday") is False  # same letters, different word
    assert answers_equal(r"\text{Monday}", "monday") is True
