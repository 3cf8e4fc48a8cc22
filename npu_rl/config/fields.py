"""Declaring a config key once: default, one-line help and the constraints checked at load.

Every key of the schema is written `name: type = knob(default, "help", gt=0, ...)`. The same declaration
feeds three readers, so they cannot disagree: `Section.validate` (the checks), `--help` and
docs/config.md (the text). Registry-backed keys name their registry by import path and are checked
against the names registered there, so a new estimator or tracker needs no config edit.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from npu_rl.registry import Registry, UnknownName


class ConfigError(ValueError):
    """A configuration problem, reported with the dotted path of the offending key."""


@dataclass(frozen=True)
class Spec:
    """What a key means and which values it accepts (beyond its type)."""

    help: str
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    registry: str | None = None  # "module:ATTR" of a Registry whose names the value (or each item) must be
    unless: str | None = None  # skip the registry check when this sibling key is set (a file path instead)

    def allowed(self) -> str:
        """The accepted values in words, for --help and docs ("" when only the type constrains)."""
        if self.registry:
            return " | ".join(registry(self.registry).names())
        low = f"> {_num(self.gt)}" if self.gt is not None else f">= {_num(self.ge)}" if self.ge is not None else ""
        high = f"< {_num(self.lt)}" if self.lt is not None else f"<= {_num(self.le)}" if self.le is not None else ""
        if low and high:
            left = "(" if self.gt is not None else "["
            right = ")" if self.lt is not None else "]"
            return f"{left}{low.split()[-1]}, {high.split()[-1]}{right}"
        return low or high


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def knob(default: Any, help: str, **constraints: Any) -> Any:
    """A dataclass field carrying its Spec; mutable defaults (lists, sub-configs) get a factory."""
    meta = {"spec": Spec(help, **constraints)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    if isinstance(default, type):  # a nested config group
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def registry(path: str) -> Registry:
    """Import `module:ATTR` lazily (config loading must not import engines such as vLLM)."""
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


def spec_of(f: dataclasses.Field) -> Spec:
    spec = f.metadata.get("spec")
    if spec is None:
        raise TypeError(f"config field {f.name!r} has no help: declare it with knob(default, help, ...)")
    return spec


def type_name(tp: Any) -> str:
    """Readable annotation: `int`, `list[str]`, `str | null` (a Literal is a `str` whose choices are listed)."""
    origin = get_origin(tp)
    if origin is Literal:
        return type(get_args(tp)[0]).__name__
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in get_args(tp))
    if origin is list:
        return f"list[{type_name(get_args(tp)[0])}]"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check_value(value: Any, spec: Spec, key: str) -> None:
    """Finite and in range for numbers; a registered name for registry-backed keys (each item of a list)."""
    if isinstance(value, list):
        for item in value:
            check_value(item, spec, key)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bad = (
            (spec.gt is not None and not value > spec.gt)
            or (spec.ge is not None and not value >= spec.ge)
            or (spec.lt is not None and not value < spec.lt)
            or (spec.le is not None and not value <= spec.le)
        )
        if bad:
            raise ConfigError(f"{key} must be {spec.allowed()}, got {value}")
    if spec.registry and isinstance(value, str):
        try:
            registry(spec.registry).get(value, key=key)
        except UnknownName as err:
            raise ConfigError(str(err)) from None


class Section:
    """Base of every config group: `validate(path)` checks each key's declared constraints, recurses
    into sub-groups (and lists of them), then runs the group's own cross-key `check(path)`.

    `path` is the group's dotted prefix (e.g. "rollout"), used to name keys in errors."""

    def validate(self, path: str = "") -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value, key = getattr(self, f.name), join(path, f.name)
            if isinstance(value, Section):
                value.validate(key)
            elif isinstance(value, list) and value and isinstance(value[0], Section):
                for i, item in enumerate(value):
                    item.validate(f"{key}[{i}]")
            else:
                spec = spec_of(f)
                if spec.unless and getattr(self, spec.unless):
                    spec = dataclasses.replace(spec, registry=None)
                check_value(value, spec, key)
        self.check(path)

    def check(self, path: str) -> None:
        """Cross-key checks of this group; groups override it."""
