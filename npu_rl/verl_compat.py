"""verl's config keys accepted as aliases of ours: one table, read by the loader and by the docs.

A verl user can bring a verl command line (or YAML) as it is: each verl key is rewritten to our key
with a one-line notice naming it (`actor_rollout_ref.rollout.n -> rollout.n`), keys that configure
something npu_rl does not need are accepted with a notice saying why (`use_remove_padding`), and keys
with no equivalent stop the run with an error saying so, never with a misleading "did you mean".
`trainer.n_gpus_per_node` / `trainer.nnodes` are answered with the torchrun command to use, since the
world size comes from the launcher here. `${a.b}` references (OmegaConf style, as in verl's YAML;
relative `${.b}` too) are resolved against the final config, `${oc.select:a.b,default}` to the key's
value or the default, `${oc.env:VAR,default}` from the environment; a reference to another key of
the same input is inlined before the rules check values. Any other `${...}` is an error, so no value
is ever kept as literal `${...}` text.

The table itself, `RULES`, lives in npu_rl.verl_rules (re-exported here); this module applies it:
`load_config` calls `to_native`, and `python -m npu_rl.verl_compat` prints docs/verl_migration.md's
table (tests/test_verl_compat.py checks that they agree).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any

from npu_rl.config.yaml_io import load_yaml
from npu_rl.verl_defaults import VERL_DEFAULTS
from npu_rl.verl_rules import (
    ALIAS,
    ANY_VALUE,
    IGNORED,
    LAUNCHER,
    RULES,
    SPECIAL,
    UNSUPPORTED,
    VERL_GROUPS,
    Rule,
    find_rule,
)
from npu_rl.verl_values import warmup_steps

__all__ = [
    "ALIAS",
    "IGNORED",
    "LAUNCHER",
    "RULES",
    "SPECIAL",
    "UNSUPPORTED",
    "VERL_GROUPS",
    "Rule",
    "find_rule",
    "markdown_table",
    "to_native",
]

_REF_RE = re.compile(r"\$\{([^{}]*)\}")


class _Compat:
    """One translation: the rules' matches, the notices printed, and the config error type."""

    def __init__(self) -> None:
        from npu_rl.config import Config, ConfigError

        self.error = ConfigError
        self.defaults = dataclasses.asdict(Config())
        self.groups, self.leaves = _native_paths(Config)
        self.notices: list[str] = []
        self.verl_input = False  # the input is a verl config (it has actor_rollout_ref.*): null means unset


def _native_paths(cls: type, prefix: str = "") -> tuple[set[str], set[str]]:
    """Dotted paths of the native config: nested groups, and leaf keys."""
    groups, leaves = set(), set()
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            groups.add(path)
            sub_groups, sub_leaves = _native_paths(type(default), path + ".")
            groups |= sub_groups
            leaves |= sub_leaves
        else:
            leaves.add(path)
    return groups, leaves


def _leaves(node: Any, path: str, compat: _Compat, out: list[tuple[str, Any]]) -> None:
    """(dotted key, value) pairs; descends only into groups, so mapping-valued keys stay whole."""
    rule = find_rule(path)[0] if path else None
    exact = rule is not None and rule.verl == path
    if not path or (isinstance(node, dict) and path not in compat.leaves and not exact):
        if not isinstance(node, dict):
            raise compat.error(f"the config must be a mapping, got {node!r}")
        for key, value in node.items():
            _leaves(value, f"{path}.{key}" if path else str(key), compat, out)
        return
    out.append((path, node))


def _absolute(ref: str, key: str) -> str:
    """OmegaConf's relative `.x` (a sibling of `key`), `..x` (one level up), ... as a dotted path."""
    dots = len(ref) - len(ref.lstrip("."))
    if not dots:
        return ref
    parent = key.split(".")[:-dots]
    return ".".join([*parent, ref[dots:]])


def _inline_refs(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Values that are one whole reference to another key of the same input (`${a.b}`, relative
    `${.b}`, `${oc.select:a.b,default}`) take that key's value, so a verl key's rule sees the value it
    stands for (verl's configs point keys at each other, e.g. the reference's sequence-parallel size at
    the actor's). Other references become absolute and are resolved against the final config later."""
    raw = dict(pairs)

    def value_of(key: str, value: Any, seen: frozenset[str]) -> Any:
        match = _REF_RE.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:  # inside a longer string only relative references change (to absolute)
            if not isinstance(value, str):
                return value
            return _REF_RE.sub(lambda m: "${" + _absolute(m.group(1).strip(), key) + "}", value)
        expr = match.group(1).strip()
        select = expr.startswith("oc.select:")
        if not select and ":" in expr:
            return value  # oc.env and the like: resolved later
        ref, comma, default = expr.removeprefix("oc.select:").partition(",")
        target = _absolute(ref.strip(), key)
        if target in raw and target not in seen:
            return value_of(target, raw[target], seen | {target})
        return "${" + ("oc.select:" if select else "") + target + comma + default + "}"

    return [(key, value_of(key, value, frozenset({key}))) for key, value in pairs]


def _at_verl_default(key: str, value: Any) -> bool:
    """A verl key npu_rl has no use for, at verl's own default value (as a verl run's saved config holds
    every key): it changes nothing, so it is skipped instead of stopping the run. A key with a rule that
    maps it somewhere is never skipped, whatever the table says."""
    if key not in VERL_DEFAULTS or VERL_DEFAULTS[key] != value or type(VERL_DEFAULTS[key]) is not type(value):
        return False
    rule = find_rule(key)[0]
    return rule is None or rule.kind in (IGNORED, UNSUPPORTED)


def _torchrun_hint(nodes: Any, per_node: Any) -> str:
    multi = f"--nnodes {nodes} --node_rank <this node> --master_addr <node 0> " if nodes != 1 else ""
    return f"torchrun {multi}--nproc_per_node {per_node} -m npu_rl.train --config <yaml> [overrides]"


def _check_world(launcher: dict[str, Any], compat: _Compat) -> None:
    """verl sizes its Ray cluster from the config; here the launcher decides, so they must agree."""
    if not launcher:
        return
    per_node = launcher.get("trainer.n_gpus_per_node", 1)
    nodes = launcher.get("trainer.nnodes", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (per_node, nodes)):
        raise compat.error(f"trainer.n_gpus_per_node / trainer.nnodes must be positive integers, got {launcher}")
    wanted = per_node * nodes
    hint = _torchrun_hint(nodes, per_node)
    from npu_rl.config.environment import world_size

    world = world_size()
    if world != wanted:
        launch = "this is a single process" if world == 1 else f"this launch has WORLD_SIZE={world}"
        raise compat.error(
            f"trainer.n_gpus_per_node={per_node} x trainer.nnodes={nodes} = {wanted} processes (verl keys), but "
            f"{launch}: npu_rl takes its processes from the launcher. Launch with: {hint}"
        )
    compat.notices.append(f"verl keys trainer.n_gpus_per_node/nnodes: this run's world size ({wanted}) agrees")


def _translate(key: str, value: Any, compat: _Compat, launcher: dict[str, Any]) -> list[tuple[str, Any]]:
    """Native (key, value) pairs for one input key; native keys pass through unchanged."""
    top = key.split(".", 1)[0]
    per_device = key.removesuffix("_per_gpu") + "_per_device"
    if key.endswith("_per_gpu") and per_device in compat.leaves:  # verl's spelling of any native key
        if _null_keeps_default(value, per_device, compat):
            compat.notices.append(f"verl spelling {key}=null (unset) keeps npu_rl's default")
            return []
        compat.notices.append(f"verl spelling {key} -> {per_device}")
        return [(per_device, value)]
    if compat.verl_input and _null_keeps_default(value, key, compat):
        compat.notices.append(f"{key}=null (verl's unset) keeps npu_rl's default")
        return []
    if key == "critic.optim.lr_warmup_steps" and compat.verl_input:  # spelled alike, read as verl reads it
        return warmup_steps("critic", value)
    if key in compat.leaves or (top not in VERL_GROUPS and find_rule(key)[0] is None):
        return [(key, value)]  # native, or unknown under a native group: the config builder reports it
    rule, native = find_rule(key)
    if value is None and (rule is None or rule.kind == UNSUPPORTED):  # verl's null: the key is unset
        compat.notices.append(f"verl key {key}=null (unset) ignored")
        return []
    if rule is None:
        raise compat.error(
            f"verl key '{key}' has no equivalent in npu_rl (docs/verl_migration.md lists every verl key it accepts)"
        )
    note = f" ({rule.note})" if rule.note else ""
    if rule.kind == ALIAS:
        if _null_keeps_default(value, native, compat):
            compat.notices.append(f"verl key {key}=null (unset) keeps npu_rl's default for {native}")
            return []
        compat.notices.append(f"verl key {key} -> {native}")
        return [(native, value)]
    if rule.kind == SPECIAL:
        assert rule.convert is not None
        if rule.only is not ANY_VALUE and value not in rule.only:
            allowed = ", ".join(repr(v) for v in rule.only)
            raise compat.error(f"verl key '{key}={value!r}' has no equivalent in npu_rl: only {allowed}{note}")
        pairs = rule.convert(value)
        target = ", ".join(f"{k}={v!r}" for k, v in pairs) or "no change"
        compat.notices.append(f"verl key {key}={value!r} -> {target}{note}")
        return pairs
    if rule.kind == LAUNCHER:
        launcher[key] = value
        return []
    if rule.kind == IGNORED and (rule.only is ANY_VALUE or value in rule.only):
        compat.notices.append(f"verl key {key} ignored{note}")
        return []
    if rule.kind == IGNORED:
        allowed = ", ".join(repr(v) for v in rule.only)
        raise compat.error(f"verl key '{key}={value!r}' has no equivalent in npu_rl: only {allowed} is accepted{note}")
    raise compat.error(f"verl key '{key}' has no equivalent in npu_rl{note}")


def _rank(key: str, override_keys: list[str]) -> int:
    """0 for a value from the YAML file, 1 + the index of the last override that set it otherwise."""
    rank = 0
    for i, over in enumerate(override_keys):
        if key == over or key.startswith(over + "."):
            rank = i + 1
    return rank


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _null_keeps_default(value: Any, native: str, compat: _Compat) -> bool:
    """verl's `null` (unset) on a key that is `native` here, whose default is not null: the key keeps
    npu_rl's default instead of being set to None."""
    return value is None and native in compat.leaves and _native_default(native, compat) is not None


def _native_default(native: str, compat: _Compat) -> Any:
    value: Any = compat.defaults
    for part in native.split("."):
        value = value[part]
    return value


def _lookup(key: str, flat: dict[str, Any], compat: _Compat) -> Any:
    native = key if key in compat.leaves else find_rule(key)[1]
    if native in flat:
        return flat[native]
    if native in compat.leaves:
        return _native_default(native, compat)
    raise compat.error(f"interpolation ${{{key}}}: no such config key")


def _resolve(value: Any, key: str, flat: dict[str, Any], compat: _Compat, seen: tuple[str, ...] = ()) -> Any:
    """`${a.b}` / `${oc.env:VAR[,default]}` in `value` (recursively in lists and mappings)."""
    if isinstance(value, list):
        return [_resolve(v, key, flat, compat, seen) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, key, flat, compat, seen) for k, v in value.items()}
    if not isinstance(value, str) or "${" not in value:
        return value

    def one(expr: str) -> Any:
        expr = expr.strip()
        if expr.startswith("oc.env:"):
            name, _, default = expr.removeprefix("oc.env:").partition(",")
            found = os.environ.get(name.strip())
            if found is None and not default:
                raise compat.error(f"{key}: ${{{expr}}} but the environment variable {name.strip()} is not set")
            return found if found is not None else default.strip()
        if expr.startswith("oc.select:"):  # the key's value when it is set (or has a default), else the default
            path, _, default = expr.removeprefix("oc.select:").partition(",")
            native = path.strip() if path.strip() in compat.leaves else find_rule(path.strip())[1]
            if native in flat or native in compat.leaves:
                return one(path)
            return load_yaml(default) if default.strip() else None
        if ":" in expr or not re.fullmatch(r"[A-Za-z_][\w.]*", expr):
            supported = "${a.b}, ${oc.env:VAR} and ${oc.select:a.b,default}"
            raise compat.error(f"{key}: cannot resolve ${{{expr}}}; only {supported} are supported")
        target = expr if expr in compat.leaves else (find_rule(expr)[1] or expr)
        if target in seen:
            raise compat.error(f"{key}: interpolation cycle {' -> '.join((*seen, target))}")
        return _resolve(_lookup(expr, flat, compat), target, flat, compat, (*seen, target))

    whole = _REF_RE.fullmatch(value.strip())
    if whole:
        return one(whole.group(1))  # `${x}` alone keeps x's type
    result = _REF_RE.sub(lambda m: str(one(m.group(1))), value)
    if "${" in result:
        raise compat.error(f"{key}: cannot resolve {value!r}")
    return result


def to_native(tree: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The config tree with verl keys rewritten to ours and `${...}` resolved (see the module docstring).

    `tree` is the YAML file with `overrides` already applied; the override list gives each value's
    precedence, so a later override wins even when one spells the key the verl way and the other ours.
    """
    from npu_rl.config import parse_override

    compat = _Compat()
    pairs: list[tuple[str, Any]] = []
    _leaves(tree, "", compat, pairs)
    compat.verl_input = any(key.split(".", 1)[0] == "actor_rollout_ref" for key, _ in pairs)  # a verl config
    at_default = [key for key, value in pairs if _at_verl_default(key, value)]  # as written (references too)
    pairs = _inline_refs(pairs)
    override_keys = [".".join(parse_override(text)[0]) for text in overrides]
    launcher: dict[str, Any] = {}
    native: list[tuple[tuple[int, int], str, str, Any]] = []
    if at_default:
        compat.notices.append(
            f"{len(at_default)} verl keys at verl's default values have no effect here and were skipped "
            f"({', '.join(at_default[:3])}, ...: npu_rl/verl_defaults.py lists them)"
        )
    for key, value in pairs:
        if key in at_default:
            continue
        rule = find_rule(key)[0] if key not in compat.leaves else None
        rank = (rule.priority if rule is not None else 0, _rank(key, override_keys))
        for target, new in _translate(key, value, compat, launcher):
            native.append((rank, target, key, new))
    _check_world(launcher, compat)
    flat: dict[str, Any] = {}
    source: dict[str, tuple[tuple[int, int], str]] = {}
    for rank, target, key, value in sorted(native, key=lambda item: item[0]):
        if target in flat and source[target][0] == rank and flat[target] != value:
            raise compat.error(
                f"'{source[target][1]}' and '{key}' both set {target} ({flat[target]!r} vs {value!r}); keep one"
            )
        flat[target], source[target] = value, (rank, key)
    if flat.get("trainer.resume_mode") == "resume_path":
        raise compat.error("trainer.resume_mode=resume_path (verl) needs trainer.resume_from_path=<global_step_N dir>")
    out: dict[str, Any] = {}
    for target, value in flat.items():
        _set(out, target, _resolve(value, target, flat, compat))
    if os.environ.get("RANK", "0") == "0":  # once per run, not once per rank
        for line in dict.fromkeys(compat.notices):
            print(f"[npu_rl] {line}", file=sys.stderr)
    return out


def markdown_table() -> str:
    """The migration table of docs/verl_migration.md, generated from RULES."""
    what = {
        ALIAS: "renamed",
        SPECIAL: "converted",
        IGNORED: "accepted, no effect",
        LAUNCHER: "launcher",
        UNSUPPORTED: "error: no equivalent",
    }
    lines = ["| verl key | npu_rl | what happens |", "|---|---|---|"]
    for rule in RULES:
        native = f"`{rule.native}`" if rule.native else "-"
        detail = what[rule.kind]
        if rule.kind == IGNORED and rule.only is not ANY_VALUE:
            detail = f"accepted when {' / '.join(repr(v) for v in rule.only)}, else error"
        if rule.note:
            detail += f": {rule.note}"
        lines.append(f"| `{rule.verl}` | {native} | {detail} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
