"""`code_interpreter`: runs model-written Python in the sandbox (npu_rl.agent_tools.sandbox).

The YAML `config:` keys are SandboxLimits' fields; a config written for verl's
`verl.tools.sandbox_fusion_tools.SandboxFusionTool` also loads: `default_timeout` and
`memory_limit_mb` map to `timeout_s` and `memory_mb`, and its service keys (URL, workers, rate
limits, language) are ignored because the code runs locally, not in a SandboxFusion service.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from npu_rl.agent_tools.base import TOOLS, Tool, ToolResult, one_string_parameter
from npu_rl.agent_tools.sandbox import SandboxLimits, run_python

MAX_CODE_CHARS = 100_000  # longer code is refused without starting a process


@TOOLS.register("code_interpreter", "verl.tools.sandbox_fusion_tools.SandboxFusionTool")
class CodeInterpreterTool(Tool):
    """Execute a Python program; the model sees its printed output (stdout and stderr), truncated."""

    default_name = "code_interpreter"
    default_description = "Run a Python program and return what it prints. Use print() to see results."
    default_parameters = one_string_parameter("code", "A complete Python program.")
    config_class = SandboxLimits
    config_aliases: ClassVar[dict[str, str]] = {"default_timeout": "timeout_s", "memory_limit_mb": "memory_mb"}
    ignored_keys = frozenset(
        {"type", "sandbox_fusion_url", "num_workers", "rate_limit", "enable_global_rate_limit", "default_language"}
    )

    def __init__(self, config: SandboxLimits, schema: Mapping[str, Any] | None = None) -> None:
        if not sys.platform.startswith("linux"):
            raise RuntimeError("code_interpreter needs Linux (/proc, prctl, rlimits); use the calculator tool")
        super().__init__(config, schema)

    def execute(self, args: Mapping[str, Any]) -> ToolResult:
        code = self.string_arg(args, "code")
        if isinstance(code, ToolResult):
            return code
        if len(code) > MAX_CODE_CHARS:
            return ToolResult(f"Error: code longer than {MAX_CODE_CHARS} characters.", metrics={"tool/error": 1.0})
        start = time.perf_counter()
        result = run_python(code, self.config)
        latency = time.perf_counter() - start  # what the rollout waits: start-up and clean-up included
        text = result.output
        if result.truncated:
            text += f"\n[output truncated to {self.config.max_output_bytes} bytes]"
        if result.timed_out:
            text += f"\n[killed: exceeded the {self.config.timeout_s:g} s time limit]"
        elif result.exit_code not in (0, None):
            text += f"\n[exit code {result.exit_code}]"
        failed = result.timed_out or result.exit_code != 0
        metrics = {
            "tool/latency_s": latency,
            "tool/error": float(failed),
            "tool/timeout": float(result.timed_out),
            "tool/truncated": float(result.truncated),
        }
        return ToolResult(text if text.strip() else "[no output]", metrics=metrics)
