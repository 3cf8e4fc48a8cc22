"""Built-in tools: a sandboxed Python interpreter and a calculator that never executes code."""

from __future__ import annotations

import shutil
import threading
from fractions import Fraction
from typing import Any, ClassVar

from npu_rl.agent_tools.base import TOOLS, Tool, ToolResult
from npu_rl.agent_tools.sandbox import SandboxLimits, run_python

MAX_CODE_CHARS = 20_000
MAX_EXPRESSION_CHARS = 500


def _string_arg(args: dict[str, Any], key: str, limit: int) -> str | ToolResult:
    value = args.get(key) if isinstance(args, dict) else None
    if not isinstance(value, str) or not value.strip():
        return ToolResult(f"Error: the `{key}` argument must be a non-empty string.", ok=False)
    if len(value) > limit:
        return ToolResult(f"Error: `{key}` is longer than {limit} characters.", ok=False)
    return value


@TOOLS.register("code_interpreter", "python")
class PythonTool(Tool):
    """Runs the given code in the sandbox (npu_rl.agent_tools.sandbox) and answers with its output.

    config: timeout_s, memory_mb, max_processes, max_output_chars, max_file_mb, max_open_files
    (SandboxLimits), isolation ("namespaces" | "audit"; default: the strongest available), and
    max_concurrent: calls of this tool that run at once (default max_processes // 4, at least 1). The
    rollout runs a turn's calls together, and every sandbox runs as the same `nobody` user, whose
    RLIMIT_NPROC counts the processes of all of them (about 2 per sandbox at rest): unbounded, 20
    calls at once with max_processes 32 failed to start 4 of them ("fork failed")."""

    default_schema: ClassVar[dict[str, Any]] = {
        "type": "function",
        "function": {
            "name": "code_interpreter",
            "description": "Run a Python script and return what it prints (use print()).",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "Python source to run"}},
                "required": ["code"],
            },
        },
    }

    def __init__(self, config: dict[str, Any] | None = None, schema: dict[str, Any] | None = None) -> None:
        super().__init__(config, schema)
        options = dict(self.config)
        self.isolation = options.pop("isolation", None)
        concurrent = options.pop("max_concurrent", None)
        try:
            self.limits = SandboxLimits(**options)
        except TypeError as err:
            raise ValueError(
                f"code_interpreter config: {err} (allowed: SandboxLimits fields, isolation, max_concurrent)"
            ) from err
        if concurrent is None:
            concurrent = max(1, self.limits.max_processes // 4)
        if not isinstance(concurrent, int) or isinstance(concurrent, bool) or concurrent < 1:
            raise ValueError(f"code_interpreter config: max_concurrent must be an integer >= 1, got {concurrent!r}")
        self.max_concurrent = concurrent
        self._slots = threading.BoundedSemaphore(concurrent)
        if shutil.which("prlimit") is None:
            raise ValueError("the code_interpreter sandbox needs util-linux's `prlimit` (apt-get install util-linux)")

    def execute(self, args: dict[str, Any]) -> ToolResult:
        code = _string_arg(args, "code", MAX_CODE_CHARS)
        if isinstance(code, ToolResult):
            return code
        with self._slots:
            run = run_python(code, self.limits, self.isolation)
        metrics = {"sandbox_s": run.seconds, "timeout": float(run.timed_out), "truncated": float(run.truncated)}
        if run.timed_out:
            message = f"Error: the code ran past {self.limits.timeout_s} s and was stopped."
            return ToolResult(message, False, 0.0, metrics)
        if not run.ok:
            detail = run.stderr.strip().splitlines()[-1:] or [f"exit code {run.exit_code}"]
            return ToolResult((run.stdout + f"\nError: {detail[0]}").strip(), False, 0.0, metrics)
        return ToolResult(run.stdout.strip() or "(no output; use print())", True, 0.0, metrics)


def format_number(value: Fraction) -> str:
    """An integer, a terminating decimal, or a fraction with its decimal approximation."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den == 1:
        return format(value.numerator / value.denominator, ".12g")
    return f"{value.numerator}/{value.denominator} (about {float(value):.10g})"


@TOOLS.register("calculator")
class CalculatorTool(Tool):
    """Exact rational arithmetic (+ - * / ^ %, parentheses, factorials) through the reward package's
    parser: the expression is parsed into a bounded AST and evaluated; nothing is executed."""

    default_schema: ClassVar[dict[str, Any]] = {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression exactly, e.g. (12 + 7) * 3 / 4.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "the arithmetic expression"}},
                "required": ["expression"],
            },
        },
    }

    def execute(self, args: dict[str, Any]) -> ToolResult:
        from reward.evaluate import rational_value
        from reward.limits import GradeTimeout, Unsupported, time_budget
        from reward.parser import parse

        text = _string_arg(args, "expression", MAX_EXPRESSION_CHARS)
        if isinstance(text, ToolResult):
            return text
        try:
            with time_budget(float(self.config.get("timeout_s", 1.0))):
                value = rational_value(parse(text.replace("**", "^").replace("×", "*").replace("÷", "/")))
        except (Unsupported, GradeTimeout, ZeroDivisionError, OverflowError, ValueError) as err:
            return ToolResult(f"Error: cannot evaluate {text!r} ({err}).", ok=False)
        if value is None:
            return ToolResult(f"Error: {text!r} is not plain arithmetic on numbers (or divides by zero).", ok=False)
        return ToolResult(format_number(value), ok=True)
