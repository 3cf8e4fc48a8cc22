"""Regenerate npu_rl/verl_defaults.py: the verl keys npu_rl has no rule for (or refuses some values of),
with the default value verl's generated config gives each. A verl run's saved config (`.hydra/config.yaml`)
holds every one of them; at these values they change nothing, so the loader accepts them.

    python tools/verl_defaults.py <verl checkout> "<which verl>"     # writes npu_rl/verl_defaults.py
    ruff format npu_rl/verl_defaults.py

reads <verl checkout>/verl/trainer/config/_generated_ppo_trainer.yaml. A key is listed when the loader
refuses its value (after inlining references) or has no native key for it (a verl key under one of
npu_rl's groups, such as data.train_max_samples); its value is stored as written, references included,
which is what the loader compares.
"""

from __future__ import annotations

import pprint
import sys
from pathlib import Path

import yaml

from npu_rl import verl_compat


def refused(config: Path) -> dict[str, object]:
    tree = yaml.safe_load(config.read_text())
    compat = verl_compat._Compat()
    pairs: list[tuple[str, object]] = []
    verl_compat._leaves(tree, "", compat, pairs)

    def known(target: str) -> bool:  # a native key, or inside a mapping-valued one
        return target in compat.leaves or any(target.startswith(leaf + ".") for leaf in compat.leaves)

    out = {}
    for (key, written), (_, value) in zip(pairs, verl_compat._inline_refs(pairs), strict=True):
        try:
            targets = verl_compat._translate(key, value, compat, {})
        except compat.error:
            targets = [(key, None)]  # refused: listed
        if any(not known(target) for target, _ in targets):  # refused, or a verl key under a native group
            out[key] = written  # compared as written: a reference stays a reference
    return out


def main() -> None:
    checkout, label = Path(sys.argv[1]), sys.argv[2]
    table = refused(checkout / "verl" / "trainer" / "config" / "_generated_ppo_trainer.yaml")  # before writing
    text = f'''"""verl's default values of the verl keys npu_rl has no rule for (or refuses some values of).

Read from verl/trainer/config/_generated_ppo_trainer.yaml of {label} by
tools/verl_defaults.py (regenerate, do not edit). A key found here at this value changes nothing and is
accepted (npu_rl.verl_compat).
"""
# ruff: noqa: E501 (generated data)

from typing import Any

VERL_DEFAULTS: dict[str, Any] = {pprint.pformat(table, width=116, sort_dicts=False)}
'''
    (Path(__file__).resolve().parents[1] / "npu_rl" / "verl_defaults.py").write_text(text)


if __name__ == "__main__":
    main()
