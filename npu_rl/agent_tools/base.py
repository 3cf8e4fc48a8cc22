"""The tool interface: a name, an OpenAI-style function schema, and `execute(args) -> ToolResult`.

Tools are what a policy may call mid-answer in a multi-turn rollout (docs/multi_turn.md). Their
arguments come from model output and are untrusted: `execute` must never raise on bad arguments
but return a ToolResult whose text tells the model what was wrong (and `metrics["tool/error"] = 1`).
Tool classes register in TOOLS under a short name (and verl's class path where one corresponds),
which is what a tool config file's `class_name` selects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from npu_rl.registry import Registry


class ToolConfigError(ValueError):
    """A tool config file or entry is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class ToolResult:
    """What a call gives back: text for the model, an optional per-call reward, and metrics to log."""

    text: str
    reward: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


class Tool(ABC):
    """One callable tool. Subclasses set the class defaults and implement `execute`.

    `config_class` is a frozen dataclass whose fields are the tool's `config:` keys; unknown keys
    are rejected by `from_config` with the file and key named."""

    default_name: ClassVar[str]
    default_description: ClassVar[str]
    default_parameters: ClassVar[dict[str, Any]]
    config_class: ClassVar[type]
    config_aliases: ClassVar[dict[str, str]] = {}  # verl's key -> ours, for configs written for verl
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"type"})  # verl keys with no meaning here

    def __init__(self, config: Any, schema: Mapping[str, Any] | None = None) -> None:
        self.config = config
        function = dict(schema["function"]) if schema else {}
        self.name: str = function.get("name", self.default_name)
        self.description: str = function.get("description", self.default_description)
        self.parameters: dict[str, Any] = dict(function.get("parameters", self.default_parameters))

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI function-calling schema, as chat templates take it (`tools=[tool.schema]`)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], schema: Mapping[str, Any] | None, where: str) -> Tool:
        """Build from a config entry; `where` (e.g. `tools.yaml: tools[0].config`) prefixes errors."""
        known = {f.name for f in fields(cls.config_class)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            name = cls.config_aliases.get(key, key)
            if name in known:
                values[name] = value
            elif key not in cls.ignored_keys:
                names = ", ".join(sorted(known))
                raise ToolConfigError(f"{where}.{key}: unknown key for {cls.__name__}; known: {names}")
        try:
            built = cls.config_class(**values)
            check = getattr(built, "check", None)
            if check is not None:
                check(where)
        except (TypeError, ValueError) as e:
            raise ToolConfigError(str(e) if where in str(e) else f"{where}: {e}") from None
        return cls(built, schema)

    @abstractmethod
    def execute(self, args: Mapping[str, Any]) -> ToolResult:
        """Run one call with the model's (already JSON-decoded) arguments; never raises on bad arguments."""

    def string_arg(self, args: Mapping[str, Any], key: str) -> str | ToolResult:
        """`args[key]` when it is a string, else an error ToolResult the caller returns as is."""
        value = args.get(key) if isinstance(args, Mapping) else None
        if not isinstance(value, str):
            got = type(value).__name__ if isinstance(args, Mapping) and key in args else "nothing"
            message = f"Error: {self.name} needs a string argument {key!r}, got {got}."
            return ToolResult(message, metrics={"tool/error": 1.0})
        return value


def one_string_parameter(name: str, description: str) -> dict[str, Any]:
    """JSON schema of a function taking one required string argument (both built-in tools do)."""
    return {
        "type": "object",
        "properties": {name: {"type": "string", "description": description}},
        "required": [name],
    }


TOOLS: Registry[type[Tool]] = Registry("tool class")
