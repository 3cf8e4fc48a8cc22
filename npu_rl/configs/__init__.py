"""Run configs shipped with the package: `npu-rl-train --config tiny_grpo` finds `tiny_grpo.yaml` here.

A `--config` value that is an existing file is used as is; otherwise a name (with or without `.yaml`)
of a file in this folder (`run/configs/<name>.yaml`, where they lived in the source tree, still works).
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def resolve(config: str | Path) -> Path:
    """The YAML file for `config`: a path as given, else a packaged config of that name."""
    path = Path(config)
    if path.is_file():
        return path
    packaged = FOLDER / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    # a bare name, or the path these configs had in a source checkout before they moved here
    if packaged.is_file() and path.parent in (Path("."), Path("run/configs")):
        return packaged
    names = ", ".join(available())
    raise FileNotFoundError(f"--config {config}: no such file, and no packaged config of that name ({names})")
