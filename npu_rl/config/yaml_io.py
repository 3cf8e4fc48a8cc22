"""Reading config YAML: PyYAML's safe loader, except that digits joined by underscores stay strings.

PyYAML follows YAML 1.1, where `1_000` is the integer 1000 and `0.5_2` the float 0.52. verl's rollout
rejection bounds are written `lower_upper` (`algorithm.rollout_correction.rollout_rs_threshold=0.5_2`),
which YAML 1.1 would silently turn into one wrong number; YAML 1.2 has no such separators, so this
loader resolves those scalars as strings and the key's own check reads them. Every other scalar is
read as before (the int and float patterns are PyYAML's with `_` taken out of their digit classes).
"""

from __future__ import annotations

import re
from typing import IO, Any

import yaml

_NUMBERS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader without YAML 1.1's underscore digit separators."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in _NUMBERS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _firsts in {
    (tag, pattern.pattern, first)
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    for tag, pattern in resolvers
    if tag in _NUMBERS
}:
    ConfigLoader.add_implicit_resolver(_tag, re.compile(_pattern.replace("_]", "]"), re.X), [_firsts])


def load_yaml(stream: str | IO[str]) -> Any:
    """yaml.safe_load with ConfigLoader."""
    return yaml.load(stream, Loader=ConfigLoader)
