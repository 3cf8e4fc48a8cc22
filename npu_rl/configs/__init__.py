"""Run configs shipped with the package: `npu-rl-train --config tiny_grpo` finds `tiny_grpo.yaml` here.

A `--config` value that is an existing file is used as is; otherwise a name (with or without `.yaml`)
of a file in this folder (`run/configs/<name>.yaml`, where they lived in the source tree, still works).
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def find(config: str | Path) -> Path | None:
    """The YAML file for `config`: a path as given, else a packaged file of that name, else None.

    Used for `--config` and for files a config names (`rollout.multi_turn.tool_config_path`)."""
    path = Path(config).expanduser()
    if path.is_file():
        return path
    packaged = FOLDER / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    # a bare name, or the path these configs had in a source checkout before they moved here
    if packaged.is_file() and path.parent in (Path("."), Path("run/configs")):
        return packaged
    return None


def resolve(config: str | Path) -> Path:
    """The YAML file for `config` (see `find`), or FileNotFoundError listing the packaged names."""
    found = find(config)
    if found is not None:
        return found
    names = ", ".join(available())
    raise FileNotFoundError(f"--config {config}: no such file, and no packaged config of that name ({names})")
