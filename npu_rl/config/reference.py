"""The key reference, read from the schema's declarations: `--help` text and docs/config.md.

Both are generated from the same `knob(...)` declarations that validation uses, so the documented
type, default, allowed values and meaning of a key are the ones the loader enforces. A test compares
docs/config.md with `markdown()`; regenerate it with `python -m npu_rl.config --markdown > docs/config.md`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from npu_rl.config.fields import join, spec_of, type_name
from npu_rl.config.schema import Config


@dataclass
class KeyDoc:
    key: str
    type: str
    default: str
    allowed: str
    help: str


@dataclass
class GroupDoc:
    name: str
    doc: str
    keys: list[KeyDoc]


def _show(value: Any) -> str:
    """A default as it is written in YAML / on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _section(tp: Any) -> type | None:
    """The config group a field holds: itself, or the item type of a list of groups."""
    if dataclasses.is_dataclass(tp):
        return tp
    if get_origin(tp) is list and dataclasses.is_dataclass(get_args(tp)[0]):
        return get_args(tp)[0]
    return None


def groups(cls: type = Config, path: str = "") -> Iterator[GroupDoc]:
    """Each config group (depth first) with its own keys; nested groups follow their parent."""
    hints = typing.get_type_hints(cls)
    keys, nested = [], []
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], join(path, f.name)
        sub = _section(tp)
        if sub is not None and get_origin(tp) is not list:
            nested.append((sub, key))
            continue
        spec = spec_of(f)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if sub is not None:  # a list of groups: its items are documented as their own group
            allowed = f"items: see {key}[i]"
            nested.append((sub, f"{key}[i]"))
        elif get_origin(tp) is Literal:
            allowed = " | ".join(_show(c) for c in get_args(tp))
        else:
            allowed = spec.allowed()
        keys.append(KeyDoc(key, type_name(tp), _show(default), allowed, spec.help))
    if keys:
        yield GroupDoc(path, (cls.__doc__ or "").strip().splitlines()[0], keys)
    for sub, key in nested:
        yield from groups(sub, key)


def help_text() -> str:
    """Per key: dotted name, type, default, allowed values, then its meaning on the next line."""
    lines = []
    for group in groups():
        lines.append(f"{group.name}: {group.doc}")
        for k in group.keys:
            allowed = f"; allowed: {k.allowed}" if k.allowed else ""
            lines.append(f"  {k.key} ({k.type}, default {k.default}{allowed})")
            lines.append(f"      {k.help}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else ""


def markdown() -> str:
    """docs/config.md: one table per config group."""
    out = [
        "# Configuration reference",
        "",
        "Generated from `npu_rl/config/schema.py`, `objective.py`, `generation.py` and `training.py` by",
        "`python -m npu_rl.config --markdown > docs/config.md`; do not edit by hand (a test compares this file",
        "with the generator).",
        "",
        "Set keys in a YAML file (`--config X.yaml`, or a packaged name such as `--config tiny_grpo`)",
        "and/or as dotted overrides:",
        "`python -m npu_rl.train --config X.yaml rollout.n=8 actor.optim.lr=1e-6 trainer.logger=[console,jsonl]`.",
        "Every key is checked before any model or data is loaded: unknown keys get the closest valid name,",
        "numbers must be finite and in the allowed range, and names of estimators, losses, backends and",
        "trackers must be registered (the allowed values below are the registered names).",
        "",
        "A new choice is one function plus one registration, with no config edit: an advantage estimator",
        "`@register_adv_estimator(name)`, a policy loss `@POLICY_LOSSES.register(name)` (signature",
        "`fn(logprob, old_logprob, advantages, mask, cfg: ActorConfig) -> (loss_mat, stats)`), a KL estimator",
        "`@KL_ESTIMATORS.register(name)` or a loss aggregation `@LOSS_AGG_MODES.register(name)` in",
        "`npu_rl/core_algos.py`; a rollout backend `@ROLLOUTS.register(name)` in `npu_rl/rollout/__init__.py`",
        "(import the engine inside the factory); a tracker `@REGISTRY.register(name)` with `@requires(package)`",
        "in `npu_rl/tracking.py`; a reward term `REGISTRY.add(name, fn)` in `reward/scoring.py`. Then regenerate",
        "this file.",
    ]
    for group in groups():
        out += ["", f"## {group.name}", "", group.doc, "", "| key | type | default | allowed | description |"]
        out.append("|---|---|---|---|---|")
        for k in group.keys:
            cells = [f"`{k.key}`", _cell(k.type), f"`{_cell(k.default)}`", _cell(k.allowed), _cell(k.help)]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
