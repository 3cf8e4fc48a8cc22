"""SwanLab: a local run by default, the SwanLab cloud when the user has an API key.

Mode: `SWANLAB_MODE` when set (offline | local | cloud | disabled); otherwise `cloud` if an API key
is known (`SWANLAB_API_KEY`, or a saved `swanlab login`), else `offline`. Offline and local both
write the run under `SWANLAB_LOG_DIR`, or `<log_dir>/swanlog` by default: `swanlab sync <run dir>`
uploads an offline run later, and `swanlab watch <dir>` shows local runs (needs `swanlab[dashboard]`).
The tracker never prompts: a training job must not wait for keyboard input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from npu_rl.tracking import RunInfo, TrackerUnavailable, samples_markdown, scalar_items

SAMPLES_KEY = "val/generations"
INSTALL_HINT = "pip install 'npu_rl[swanlab]' (or pip install swanlab)"


def swanlab_log_dir(log_dir: str) -> Path:
    return Path(os.environ.get("SWANLAB_LOG_DIR") or Path(log_dir) / "swanlog")


def choose_mode(has_api_key: bool) -> str:
    """An explicit SWANLAB_MODE wins; a known key means the user wants the cloud; else keep it local."""
    explicit = os.environ.get("SWANLAB_MODE", "").strip()
    if explicit:
        return explicit
    return "cloud" if has_api_key else "offline"


class SwanLabTracker:
    def __init__(self, run: RunInfo) -> None:
        try:
            import swanlab
        except ImportError as err:
            raise TrackerUnavailable(
                f"trainer.logger 'swanlab' needs the swanlab package ({err}): {INSTALL_HINT}"
            ) from err
        self._swanlab = swanlab
        try:
            has_key = bool(swanlab.Settings().api_key)
        except Exception:  # a malformed ~/.swanlab or .env must not hide the real start error below
            has_key = False
        self.mode = choose_mode(has_key)
        self.log_dir = swanlab_log_dir(run.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run = swanlab.init(
                project=run.project,
                experiment_name=run.experiment,
                config=run.config or None,
                log_dir=str(self.log_dir),
                mode=self.mode,
                reinit=True,
                settings=swanlab.Settings(interactive=False),
            )
        except Exception as err:
            hint = (
                "set SWANLAB_API_KEY or run `swanlab login`, or use SWANLAB_MODE=offline"
                if self.mode in ("cloud", "online")
                else "check SWANLAB_MODE (offline | local | cloud | disabled) and SWANLAB_LOG_DIR"
            )
            raise TrackerUnavailable(f"swanlab could not start in {self.mode!r} mode ({err}); {hint}") from err

    @property
    def run_dir(self) -> Path | None:
        """This run's folder (None in disabled mode), e.g. for `swanlab sync`."""
        path = getattr(self.run, "dir", None)
        return Path(path) if path else None

    def log(self, metrics: dict[str, float], step: int) -> None:
        scalars = dict(scalar_items(metrics))
        if scalars:
            self.run.log(scalars, step=step)

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        if samples:
            texts = [self._swanlab.Text(samples_markdown([s]), caption=f"score {s.get('score')}") for s in samples]
            self.run.log({SAMPLES_KEY: texts}, step=step)

    def close(self) -> None:
        self.run.finish()
