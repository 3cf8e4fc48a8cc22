"""Weights & Biases: `trainer.logger=[...,wandb]`, online with an API key, offline without one.

Mode: `WANDB_MODE` when set (online | offline | disabled); otherwise `online` if an API key is known
(`WANDB_API_KEY`, or a `wandb login` entry in ~/.netrc), else `offline`, so a machine without network
or account still keeps every step: the run lands in `<WANDB_DIR or log_dir>/wandb/offline-run-*`, and
`wandb sync <that folder>` uploads it later. Metric names keep verl's prefixes (`actor/`, `critic/`,
`val-core/`, ...), which W&B turns into one chart section per prefix. Validation samples are a table.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from npu_rl.tracking import RunInfo, TrackerUnavailable, scalar_items

SAMPLES_KEY = "val/generations"
INSTALL_HINT = "pip install 'npu_rl[wandb]' (or pip install wandb)"
_SAMPLE_COLUMNS = ("prompt", "response", "ground_truth", "score")


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def choose_mode() -> str:
    explicit = os.environ.get("WANDB_MODE", "").strip()
    if explicit:
        return explicit
    return "online" if _has_api_key() else "offline"


class WandbTracker:
    def __init__(self, run: RunInfo) -> None:
        try:
            import wandb
        except ImportError as err:
            raise TrackerUnavailable(f"trainer.logger 'wandb' needs the wandb package ({err}): {INSTALL_HINT}") from err
        self._wandb = wandb
        self.mode = choose_mode()
        self.dir = Path(os.environ.get("WANDB_DIR") or run.log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=run.project,
                name=run.experiment,
                config=run.config or None,
                dir=str(self.dir),
                mode=self.mode,
                reinit="create_new",
                settings=wandb.Settings(console="off", silent=True),
            )
        except Exception as err:
            hint = (
                "set WANDB_API_KEY or run `wandb login`, or use WANDB_MODE=offline"
                if self.mode == "online"
                else "check WANDB_MODE (online | offline | disabled) and WANDB_DIR"
            )
            raise TrackerUnavailable(f"wandb could not start in {self.mode!r} mode ({err}); {hint}") from err

    @property
    def run_dir(self) -> Path:
        """This run's folder (`wandb sync` takes it in offline mode)."""
        return Path(self.run.dir).parent

    def log(self, metrics: dict[str, float], step: int) -> None:
        scalars = dict(scalar_items(metrics))
        if scalars:
            self.run.log(scalars, step=step)

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        if samples:
            table = self._wandb.Table(columns=["step", *_SAMPLE_COLUMNS])
            for s in samples:
                table.add_data(step, *(str(s.get(c, "")) if c != "score" else s.get(c) for c in _SAMPLE_COLUMNS))
            self.run.log({SAMPLES_KEY: table}, step=step)

    def close(self) -> None:
        self.run.finish()
