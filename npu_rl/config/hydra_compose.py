"""A YAML file written for Hydra (verl's recipe configs): its `defaults:` list composed, its `hydra:` block set aside.

verl recipes are Hydra configs such as

    hydra: {searchpath: [file://verl/trainer/config]}
    defaults: [ppo_trainer, _self_]
    data: {max_prompt_length: 1024}

Composition follows Hydra 1.1+: the entries are merged in list order, later over earlier, and the
file's own keys go where `_self_` stands, at the end when it is not listed (the file overrides its
defaults). An entry is loaded from the file's folder or a `file://` search path (relative to the
working directory, as Hydra reads it): `name` or `group/name` (placed under `group`), `{group: name}`
and `{group@package: name}` (under `package`; `_global_` is the top), `override` and `optional`
prefixes included. An entry that names one of verl's own configs (`ppo_trainer`, ...) or config
groups (`actor`, `rollout`, ... unless the recipe's folder has that file) stands for verl's
defaults: npu_rl's defaults take their place, with one notice, even where a search path reaches
verl's own files (their keys are verl's defaults, not the recipe's choices). Anything else that
cannot be found is an error naming the file and the entry, before anything loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npu_rl.config.fields import ConfigError
from npu_rl.config.yaml_io import load_yaml

# verl's top-level configs and config groups (verl/trainer/config): what a recipe's defaults name
VERL_CONFIGS = {"ppo_trainer", "ppo_megatron_trainer", "_generated_ppo_trainer", "_generated_ppo_megatron_trainer"}
VERL_GROUPS = {
    "actor", "algorithm", "critic", "data", "engine", "model", "npu_profile", "optim", "profiler", "ref",
    "reward_manager", "reward_model", "rollout",
}  # fmt: skip


def is_hydra_config(tree: dict[str, Any]) -> bool:
    return "defaults" in tree or "hydra" in tree


def compose(path: Path, notices: list[str]) -> dict[str, Any]:
    """The composed tree of the Hydra-style YAML file `path` (notices say what was set aside)."""
    return _compose(path.resolve(), notices, [], ())


def _read(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        tree = load_yaml(fh) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return tree


def _compose(path: Path, notices: list[str], searchpath: list[Path], chain: tuple[Path, ...]) -> dict[str, Any]:
    if path in chain:
        raise ConfigError(f"{path}: defaults include themselves ({' -> '.join(p.name for p in (*chain, path))})")
    tree = _read(path)
    hydra = tree.pop("hydra", None)
    if hydra is not None:
        notices.append(f"{path.name}: the hydra: block (Hydra's own settings) is not used here")
        for entry in (hydra or {}).get("searchpath") or []:
            if isinstance(entry, str) and entry.startswith("file://"):
                searchpath = [*searchpath, Path(entry.removeprefix("file://")).expanduser().resolve()]
    defaults = tree.pop("defaults", None) or []
    if not isinstance(defaults, list):
        raise ConfigError(f"{path}: defaults must be a list, got {type(defaults).__name__}")
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]  # Hydra 1.1+: the file overrides what its defaults bring
    out: dict[str, Any] = {}
    for entry in defaults:
        if entry == "_self_":
            _merge(out, tree)
            continue
        found = _entry(path, entry, notices, [path.parent, *searchpath])
        if found is not None:
            file, package = found
            part = _compose(file, notices, searchpath, (*chain, path))
            for key in reversed(package):
                part = {key: part}
            _merge(out, part)
    return out


def _entry(path: Path, entry: Any, notices: list[str], roots: list[Path]) -> tuple[Path, list[str]] | None:
    """(file, package as key path) of one defaults entry, or None where npu_rl's defaults stand in."""
    if isinstance(entry, str):
        key, option = entry, None
    elif isinstance(entry, dict) and len(entry) == 1:
        ((key, option),) = entry.items()
        if option is None:
            return None  # `group: null` selects nothing
    else:
        raise ConfigError(f"{path}: defaults entry {entry!r} is neither a name nor a one-key mapping")
    key = str(key)
    optional = key.startswith("optional ")
    key = key.removeprefix("override ").removeprefix("optional ").strip().lstrip("/")
    group, _, package = key.partition("@")
    name = f"{group}/{option}" if option is not None else group
    if option is None:  # a plain name: its folder is its group, and its package
        group = group.rpartition("/")[0]
    package = package or group.replace("/", ".")
    if "${" in name:
        raise ConfigError(f"{path}: defaults entry {entry!r}: interpolated names are not supported; write the name")
    top = name.split("/", 1)[0]
    own = path.parent / f"{name}.yaml"  # the recipe's own files win, except verl's top-level configs
    verl = name in VERL_CONFIGS or (top in VERL_GROUPS and not own.is_file())
    if not verl:
        for root in roots:
            if (root / f"{name}.yaml").is_file():
                return root / f"{name}.yaml", [] if package in ("", "_global_") else package.split(".")
    if verl:
        notices.append(f"{path.name}: defaults entry {entry!r} is verl's own config: npu_rl's defaults stand in")
        return None
    if optional:  # Hydra skips a missing optional entry
        return None
    looked = ", ".join(str(r / f"{name}.yaml") for r in roots)
    raise ConfigError(f"{path}: defaults entry {entry!r}: no such file (looked for {looked})")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Deep merge, `extra` winning (mappings merge key by key; anything else is replaced)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
