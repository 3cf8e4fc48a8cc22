"""Tools from a YAML file in verl's `tool_config_path` shape:

    tools:
      - class_name: code_interpreter          # or verl.tools.sandbox_fusion_tools.SandboxFusionTool
        config: {timeout_s: 10, memory_mb: 1024}
        tool_schema:                          # optional; the tool's own schema when absent
          type: function
          function: {name: code_interpreter, description: ..., parameters: {type: object, properties: ...}}

Every error names the file and the key (`tools.yaml: tools[1].tool_schema.function.name: ...`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# importing the tool modules registers them in TOOLS
from npu_rl.agent_tools import calculator, interpreter  # noqa: F401
from npu_rl.agent_tools.base import TOOLS, Tool, ToolConfigError
from npu_rl.registry import UnknownName

ENTRY_KEYS = {"class_name", "config", "tool_schema"}


def load_tools(path: str | Path) -> dict[str, Tool]:
    """Tools by their function name, from the YAML file at `path`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ToolConfigError(f"{path}: cannot read the tool config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ToolConfigError(f"{path}: not valid YAML: {e}") from None
    return build_tools(data, str(path))


def build_tools(data: Any, source: str = "<tool config>") -> dict[str, Tool]:
    """Tools from an already-parsed config mapping; `source` names it in errors."""
    if not isinstance(data, Mapping) or not isinstance(data.get("tools"), list):
        raise ToolConfigError(f"{source}: tools: expected a top-level `tools:` list of tool entries")
    tools: dict[str, Tool] = {}
    for i, entry in enumerate(data["tools"]):
        where = f"{source}: tools[{i}]"
        tool = _build_one(entry, where)
        if tool.name in tools:
            raise ToolConfigError(f"{where}.tool_schema.function.name: a second tool named {tool.name!r}")
        tools[tool.name] = tool
    return tools


def _build_one(entry: Any, where: str) -> Tool:
    if not isinstance(entry, Mapping):
        raise ToolConfigError(f"{where}: expected a mapping with class_name, config, tool_schema")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        allowed = ", ".join(sorted(ENTRY_KEYS))
        raise ToolConfigError(f"{where}.{sorted(unknown)[0]}: unknown key; a tool entry has {allowed}")
    class_name = entry.get("class_name")
    if not isinstance(class_name, str):
        raise ToolConfigError(f"{where}.class_name: required, a registered tool name ({', '.join(TOOLS.names())})")
    try:
        cls = TOOLS.get(class_name, key=f"{where}.class_name")
    except UnknownName as e:
        raise ToolConfigError(str(e)) from None
    config = entry.get("config") or {}
    if not isinstance(config, Mapping):
        raise ToolConfigError(f"{where}.config: expected a mapping of the tool's settings")
    schema = entry.get("tool_schema")
    if schema is not None:
        _check_schema(schema, f"{where}.tool_schema")
    return cls.from_config(config, schema, f"{where}.config")


def _check_schema(schema: Any, where: str) -> None:
    """The OpenAI function shape chat templates expect: type function, a named function, object parameters."""
    if not isinstance(schema, Mapping):
        raise ToolConfigError(f"{where}: expected a mapping with type and function")
    if schema.get("type") != "function":
        raise ToolConfigError(f"{where}.type: must be 'function', got {schema.get('type')!r}")
    function = schema.get("function")
    if not isinstance(function, Mapping):
        raise ToolConfigError(f"{where}.function: expected a mapping with name, description, parameters")
    name = function.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ToolConfigError(f"{where}.function.name: must be an identifier-like string, got {name!r}")
    if not isinstance(function.get("description", ""), str):
        raise ToolConfigError(f"{where}.function.description: must be a string")
    parameters = function.get("parameters")
    if parameters is not None and (not isinstance(parameters, Mapping) or parameters.get("type") != "object"):
        raise ToolConfigError(f"{where}.function.parameters: must be a JSON schema with type: object")
