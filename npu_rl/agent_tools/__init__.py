"""Tools a policy can call during a multi-turn rollout (docs/multi_turn.md).

`load_tools(path)` reads a verl-style tool config YAML; built-in tools are `code_interpreter`
(Python in a sandbox: npu_rl.agent_tools.sandbox) and `calculator` (exact arithmetic, no code run).
"""

from npu_rl.agent_tools.base import TOOLS, Tool, ToolResult, load_tools, tools_from_spec
from npu_rl.agent_tools.builtin import CalculatorTool, PythonTool
from npu_rl.agent_tools.sandbox import SandboxLimits, SandboxResult, available_isolation, run_python

__all__ = [
    "TOOLS",
    "CalculatorTool",
    "PythonTool",
    "SandboxLimits",
    "SandboxResult",
    "Tool",
    "ToolResult",
    "available_isolation",
    "load_tools",
    "run_python",
    "tools_from_spec",
]
