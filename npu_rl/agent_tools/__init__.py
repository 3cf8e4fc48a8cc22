"""Tools a policy can call in a multi-turn rollout: the interface, the registry, the YAML loader,
a sandboxed Python interpreter and a calculator that never executes code (docs/multi_turn.md)."""

from npu_rl.agent_tools.base import TOOLS, Tool, ToolConfigError, ToolResult
from npu_rl.agent_tools.calculator import CalculatorTool
from npu_rl.agent_tools.config import build_tools, load_tools
from npu_rl.agent_tools.interpreter import CodeInterpreterTool
from npu_rl.agent_tools.sandbox import SandboxLimits, SandboxResult, run_python

__all__ = [
    "TOOLS",
    "CalculatorTool",
    "CodeInterpreterTool",
    "SandboxLimits",
    "SandboxResult",
    "Tool",
    "ToolConfigError",
    "ToolResult",
    "build_tools",
    "load_tools",
    "run_python",
]
