"""The tool interface the multi-turn rollout calls, and loading tools from verl's `tool_config_path` YAML.

A tool file looks like verl's::

    tools:
      - class_name: code_interpreter          # a registered name, or a dotted path to a Tool subclass
        config: {timeout_s: 5, memory_mb: 1024}
        tool_schema:                          # OpenAI function schema, given to the chat template
          type: function
          function:
            name: code_interpreter
            description: Run Python code and return what it prints.
            parameters: {type: object, properties: {code: {type: string}}, required: [code]}

`tool_schema` may be left out to use the tool's own default schema.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from npu_rl.registry import Registry


@dataclass(frozen=True)
class ToolResult:
    """A tool's answer: `text` goes back to the model as the tool message; `ok` says whether the call
    did what was asked (counted in tool/success_rate and by the shaping reward); `reward` is the
    tool's own reward term (0 for the built-in tools); `metrics` are logged as tool/<key>."""

    text: str
    ok: bool
    reward: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


class Tool(ABC):
    """A callable the policy may invoke by name with JSON arguments."""

    default_schema: ClassVar[dict[str, Any]]

    def __init__(self, config: dict[str, Any] | None = None, schema: dict[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        self.schema = schema or self.default_schema
        function = self.schema.get("function") if isinstance(self.schema, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"tool schema needs function.name (OpenAI function format), got {self.schema!r}")

    @property
    def name(self) -> str:
        return self.schema["function"]["name"]

    @abstractmethod
    def execute(self, args: dict[str, Any]) -> ToolResult:
        """Run one call; arguments come from model output (untrusted): validate, never eval."""


TOOLS: Registry[type[Tool]] = Registry("tool")


def resolve_class(class_name: str, registry: Registry[Any], base: type, where: str) -> Any:
    """A registered name, or a dotted path to a subclass of `base` (a user's own class); errors name `where`."""
    if class_name in registry:
        return registry.get(class_name, key=where)
    module, _, attr = class_name.rpartition(".")
    if not module:
        return registry.get(class_name, key=where)  # raises, listing the registered names
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{where}: cannot import {class_name!r} ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{where}: {class_name!r} is not a {base.__module__}.{base.__name__} subclass")
    return cls


def read_yaml(path: str | Path, what: str) -> Any:
    """A config file's parsed YAML; a missing file or bad YAML is a ValueError naming the file."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"cannot read {what} {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML: {err}") from err


def yaml_entries(spec: Any, section: str, source: str) -> list[Any]:
    """The non-empty list under `section:` of a verl-style tool or interaction file."""
    entries = spec.get(section) if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected a non-empty list under `{section}:`")
    return entries


def entry_config(entry: Any, where: str, allowed: tuple[str, ...], registry: Registry[Any]) -> dict[str, Any]:
    """One entry checked (a mapping with a class_name and only `allowed` keys); its `config` mapping, without
    verl's `type: native`."""
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        raise ValueError(f"{where}: each entry needs a class_name (registered: {', '.join(registry.names())})")
    unknown = set(entry) - set(allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: {', '.join(allowed)})")
    config = entry.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"{where}.config must be a mapping")
    return {k: v for k, v in config.items() if k != "type"}


def tools_from_spec(spec: Any, source: str = "tool config") -> dict[str, Tool]:
    """Tools by name from a parsed verl-style `{"tools": [...]}` mapping."""
    from npu_rl.agent_tools import builtin  # noqa: F401  (registers the built-in tools)

    tools: dict[str, Tool] = {}
    for i, entry in enumerate(yaml_entries(spec, "tools", source)):
        where = f"{source}: tools[{i}]"
        config = entry_config(entry, where, ("class_name", "config", "tool_schema"), TOOLS)
        tool = resolve_class(entry["class_name"], TOOLS, Tool, f"{where}.class_name")(config, entry.get("tool_schema"))
        if tool.name in tools:
            raise ValueError(f"{where}: tool name {tool.name!r} appears twice")
        tools[tool.name] = tool
    return tools


def load_tools(path: str | Path) -> dict[str, Tool]:
    """Tools by name from a verl-style tool config YAML file."""
    return tools_from_spec(read_yaml(path, "tool config"), str(path))
