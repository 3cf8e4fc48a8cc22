"""Hypothesis strategies for adversarial numerals and nesting, shared by the bound test
(tests/test_reward_bounds.py) and the worst-case timing script (bench/grader_fuzz.py).

Each strategy builds a response in one of the answer conventions around an expression whose
naive conversion would be huge or deep: long digit strings, scientific notation with enormous
exponents, power towers, factorial chains, nested fractions, roots, brackets and boxes, and
scale words multiplied together.
"""

from __future__ import annotations

from hypothesis import strategies as st

WRAPPERS = (
    "\\boxed{{{}}}",
    "So the answer is $\\boxed{{{}}}$.",
    "The answer is {}.",
    "Final Answer: The final answer is ${}$. I hope it is correct.",
    "<answer>{}</answer>",
    "#### {}",
    "**Final answer:** {}",
    "Answer: {}",
    "{}",
)
# The huge-numeral family of the issue, one fixed example of each shape.
HUGE = [
    r"\boxed{1e9999999}",
    "The answer is 1e" + "9" * 100_000 + ".",
    r"\boxed{2.5E+999999999}",
    r"\boxed{3 \times 10^{99999999}}",
    "Final Answer: The final answer is $10^{10^{10^{10}}}$. I hope it is correct.",
    r"\boxed{9^9^9}",
    r"<answer>10^{10^{e^{99^{10^{10^{n}}}}}}</answer>",  # symbolic tower: mpmath's integer power was slow
    r"\boxed{9^{9^{9}}!}",
    r"\boxed{99999999!!}",
    "<answer>" + "9" * 500 + "e" + "9" * 50 + "</answer>",
    r"\boxed{" + r"\frac{1}{" * 2_000 + "2" + "}" * 2_001,
    r"\boxed{\frac" + r"\frac" * 500 + "1" * 502 + "}",
    "The answer is " + " ".join(["nine hundred ninety nine thousand"] * 200) + ".",
    r"\boxed{5" + r"\text{ million}" * 300 + "}",
]
TRUTHS = ("1", "7", "\\frac{1}{3}", "10^{100}", "x + 1", "(1, 2)", "3, -3")

_digits = st.integers(1, 6_000).map(lambda n: "9" * n)
_exponent = st.one_of(st.integers(-(10**9), 10**9).map(str), st.integers(1, 3_000).map(lambda n: "9" * n))
_small = st.integers(0, 10**6).map(str)


def _tower(parts: list[str]) -> str:
    return "^{".join(parts) + "}" * (len(parts) - 1)


def _nest(opener: str, closer: str, core: str, depth: int) -> str:
    return opener * depth + core + closer * depth


_atoms = st.one_of(
    _digits,
    st.builds(lambda m, e: f"{m}e{e}", _digits, _exponent),
    st.builds(lambda m, e: f"{m}E+{e}", _small, _exponent),
    st.builds(lambda m, e: f"{m}\\times 10^{{{e}}}", _small, _exponent),
    st.builds(lambda m, e: f"{m} \\cdot 10^{e}", _small, _exponent),
    st.builds(lambda b, e: f"{b}**{e}", _small, _exponent),
    st.lists(st.sampled_from(["9", "99", "10", "2", "1.0001", "e", "\\pi", "n"]), min_size=2, max_size=8).map(_tower),
    st.builds(lambda n, k: n + "!" * k, _small, st.integers(1, 6)),
    st.builds(lambda n, k: f"\\binom{{{n}}}{{{k}}}", _exponent, _exponent),
    st.builds(lambda e: f"\\sqrt[{e}]{{2}}", _exponent),
    st.builds(lambda e: f"\\sin({e})", _digits),
    st.builds(lambda e: f"e^{{{e}}}", _exponent),
    st.builds(lambda e: f"0.\\overline{{{e}}}", _digits),
    st.builds(lambda n: "\\frac{1}{" * n + "2" + "}" * n, st.integers(1, 3_000)),
    st.builds(lambda n: "\\frac" + "\\frac" * n + "1" * (n + 2), st.integers(1, 3_000)),
    st.builds(lambda c, d: _nest("(", ")", c, d), _small, st.integers(1, 5_000)),
    st.builds(lambda c, d: _nest("{", "}", c, d), _small, st.integers(1, 5_000)),
    st.builds(lambda c, d: _nest("\\sqrt{", "}", c, d), _small, st.integers(1, 3_000)),
    st.builds(lambda c, d: _nest("\\boxed{", "}", c, d), _small, st.integers(1, 3_000)),
    st.builds(lambda c, d: _nest("\\left(", "\\right)", c, d), _small, st.integers(1, 2_000)),
    st.builds(lambda n, k: n + " million" * k, _small, st.integers(1, 400)),
    st.builds(lambda k: " ".join(["nine hundred ninety nine"] * k), st.integers(1, 300)),
    st.builds(lambda k: "one " + "thousand " * k, st.integers(1, 400)),
    st.builds(lambda s, k: s * k, st.sampled_from(["1+", "1,", "-", "x^", "2\\cdot", "\\pm 1", "1/"]),
              st.integers(1, 5_000)),
)  # fmt: skip
responses = st.builds(lambda wrap, atom: wrap.format(atom), st.sampled_from(WRAPPERS), _atoms)
truths = st.sampled_from(TRUTHS)
