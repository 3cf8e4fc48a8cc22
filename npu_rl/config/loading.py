"""Building the typed tree from YAML and dotted overrides, and writing it back.

A run is described by a YAML file plus dotted command-line overrides
(``rollout.n=8 trainer.logger=[console,jsonl]``), as verl users write them. An unknown key is
rejected with the closest valid name, a value of the wrong type or outside its allowed choices with
its dotted path; then every group validates itself (npu_rl.config.schema), all before any model or
data is touched.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from npu_rl import verl_compat
from npu_rl.config import hydra_compose
from npu_rl.config.fields import ConfigError, type_name
from npu_rl.config.schema import Config
from npu_rl.config.yaml_io import load_yaml


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check (and minimally convert) `value` against the annotation `tp`."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{path}: {value!r} is not one of {list(choices)}{extra}")
        return value
    if origin is dict:  # free-form keyword arguments: a mapping with string keys, values as given
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{path}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `trainer.logger=console` means a one-item list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-6` as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported annotation {type_name(tp)}")


def build(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in hints:
            hint = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            suggestion = f"; did you mean '{(path + '.') if path else ''}{hint[0]}'?" if hint else ""
            raise ConfigError(f"unknown config key '{dotted}'{suggestion} (valid: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-parsed value (`[x,y]` is a list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("+")
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: cannot parse value ({err})") from err
    return key.split("."), value


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read YAML (optional), apply dotted overrides, build and validate the typed tree."""
    tree: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            loaded = load_yaml(fh) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config groups")
        tree = loaded
        if hydra_compose.is_hydra_config(tree):  # a verl recipe: its defaults list composed
            notices: list[str] = []
            tree = hydra_compose.compose(Path(path), notices)
            if os.environ.get("RANK", "0") == "0":
                for line in notices:
                    print(f"[npu_rl] {line}", file=sys.stderr)
    for text in overrides:
        keys, value = parse_override(text)
        _set_dotted(tree, keys, value)
    tree = verl_compat.to_native(tree, overrides)  # verl's key spellings and ${...} references
    cfg = build(Config, tree)
    cfg.validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (every default filled in) so a run can be reproduced from it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


def format_path(template: str, cfg: Config) -> str:
    """Fill `{project_name}` / `{experiment_name}` in trainer paths."""
    return template.format(project_name=cfg.trainer.project_name, experiment_name=cfg.trainer.experiment_name)
