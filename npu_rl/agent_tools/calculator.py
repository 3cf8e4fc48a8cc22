"""`calculator`: arithmetic for the policy without executing anything.

The expression goes through the reward package's parser (reward.parser) and exact evaluator
(reward.evaluate.rational_value): a hand-written grammar over numbers, + - * / ^ (and **), %,
parentheses and factorials, with the size bounds of reward.limits (digits per literal, tokens,
nesting depth, exponent and result bits). Nothing is eval'd; `__import__('os')` is refused as text.
Results are exact rationals: an integer when whole, else a fraction and its decimal value.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from npu_rl.agent_tools.base import TOOLS, Tool, ToolResult, one_string_parameter
from reward.evaluate import rational_value
from reward.limits import GradeTimeout, Unsupported, time_budget
from reward.parser import parse

DECIMAL_PLACES = 12


@dataclass(frozen=True)
class CalculatorConfig:
    max_chars: int = 500  # longer expressions are refused before parsing
    time_budget_s: float = 0.5  # cooperative deadline polled by the evaluator

    def check(self, where: str) -> None:
        if not isinstance(self.max_chars, int) or self.max_chars <= 0:
            raise ValueError(f"{where}.max_chars: must be a positive integer, got {self.max_chars!r}")
        if not isinstance(self.time_budget_s, int | float) or self.time_budget_s <= 0:
            raise ValueError(f"{where}.time_budget_s: must be positive, got {self.time_budget_s!r}")


def format_value(value: Fraction) -> str:
    """`14`, or `7/3 ≈ 2.333333333333` (the decimal rounded to DECIMAL_PLACES places)."""
    if value.denominator == 1:
        return str(value.numerator)
    scaled = round(value * 10**DECIMAL_PLACES)
    sign = "-" if scaled < 0 else ""
    whole, frac = divmod(abs(scaled), 10**DECIMAL_PLACES)
    decimal = f"{sign}{whole}.{frac:0{DECIMAL_PLACES}d}".rstrip("0").rstrip(".")
    return f"{value.numerator}/{value.denominator} ≈ {decimal}"


@TOOLS.register("calculator")
class CalculatorTool(Tool):
    """Exact arithmetic on one expression; refuses anything that is not plain arithmetic."""

    default_name = "calculator"
    default_description = "Evaluate an arithmetic expression exactly, e.g. (12 + 30) * 3 / 4 or 2^10."
    default_parameters = one_string_parameter("expression", "Numbers with + - * / ^ % ( ) and !")
    config_class = CalculatorConfig

    def execute(self, args: Mapping[str, Any]) -> ToolResult:
        expression = self.string_arg(args, "expression")
        if isinstance(expression, ToolResult):
            return expression
        start = time.perf_counter()
        text, ok = self._evaluate(expression)
        metrics = {"tool/latency_s": time.perf_counter() - start, "tool/error": 0.0 if ok else 1.0}
        return ToolResult(text, metrics=metrics)

    def _evaluate(self, expression: str) -> tuple[str, bool]:
        if len(expression) > self.config.max_chars:
            return f"Error: expression longer than {self.config.max_chars} characters.", False
        try:
            with time_budget(self.config.time_budget_s):
                value = rational_value(parse(expression))
        except Unsupported as e:
            return f"Error: not a supported arithmetic expression ({e}).", False
        except GradeTimeout:
            return "Error: the expression took too long to evaluate.", False
        except (ZeroDivisionError, OverflowError, RecursionError):
            return "Error: the expression has no finite value.", False
        if value is None:
            return "Error: the expression has no finite rational value (use numbers and + - * / ^ only).", False
        return format_value(value), True
