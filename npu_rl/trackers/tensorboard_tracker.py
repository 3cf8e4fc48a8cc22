"""TensorBoard: a scalar per metric and the validation completions as text, under `<log_dir>/tensorboard`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from npu_rl.tracking import RunInfo, TrackerUnavailable, samples_markdown, scalar_items

SAMPLES_TAG = "val/generations"


def tensorboard_dir(log_dir: str) -> Path:
    """`TENSORBOARD_DIR` wins (verl honours it too), else `<log_dir>/tensorboard`."""
    return Path(os.environ.get("TENSORBOARD_DIR") or Path(log_dir) / "tensorboard")


class TensorBoardTracker:
    def __init__(self, run: RunInfo) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise TrackerUnavailable(
                f"trainer.logger 'tensorboard' needs the tensorboard package ({err}): pip install tensorboard"
            ) from err
        self.dir = tensorboard_dir(run.log_dir)
        self.writer = SummaryWriter(log_dir=str(self.dir))
        if run.config:
            # Four leading spaces make each line a Markdown code line in TensorBoard's text tab.
            text = "\n".join("    " + line for line in yaml.safe_dump(run.config, sort_keys=False).splitlines())
            self.writer.add_text("config", text, 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in scalar_items(metrics):
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a crashed run keeps every step it logged

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        if samples:
            self.writer.add_text(SAMPLES_TAG, samples_markdown(samples), step)
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
