"""Metric trackers behind one small interface, chosen by `trainer.logger=[console,jsonl,tensorboard,swanlab,wandb]`.

The trainer only sees `Tracking`, which fans every call out to the configured trackers. Trackers with
optional dependencies (TensorBoard, SwanLab, W&B) live in `npu_rl.trackers` and are imported only when
selected, so a missing package fails at start with an install hint instead of at import time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from npu_rl.registry import Registry


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        """A few validation completions (prompt, response, ground_truth, score) for reading by eye."""
        ...

    def close(self) -> None: ...


class TrackerUnavailable(RuntimeError):
    """A tracker could not start; the message names the tracker and what to install or set."""


@dataclass
class RunInfo:
    """What a tracker may need to start: where to write, how long the run is, and how it is named."""

    log_dir: str
    total_steps: int
    project: str = "npu_rl"
    experiment: str = "run"
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, for dashboards that show it


class JsonlTracker:
    """Appends one JSON object per step to `<log_dir>/metrics.jsonl`; plots and tests read it back.

    NaN is written as null so that every line stays strict JSON for other tools.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.path = Path(log_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.samples_path = Path(log_dir) / "samples.jsonl"
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def log(self, metrics: dict[str, float], step: int) -> None:
        row = {
            "step": step,
            **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
        }
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())  # durable before the trainer publishes the checkpoint covering this step

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        with open(self.samples_path, "a", encoding="utf-8") as fh:
            for sample in samples:
                fh.write(json.dumps({"step": step, **sample}) + "\n")

    def close(self) -> None:
        self._fh.close()


def scalar_items(metrics: dict[str, Any]) -> list[tuple[str, float]]:
    """The metrics a dashboard can plot: real numbers (bools and None are skipped, NaN is kept)."""
    return [(k, float(v)) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def samples_markdown(samples: list[dict[str, Any]], max_chars: int = 4000) -> str:
    """Validation completions as Markdown, each field cut to `max_chars` so a runaway response stays readable."""

    def cut(text: Any) -> str:
        text = str(text)
        return text if len(text) <= max_chars else text[:max_chars] + f"... [{len(text) - max_chars} more chars]"

    parts = []
    for i, s in enumerate(samples):
        head = f"### sample {i}: score {s.get('score')} · ground truth `{cut(s.get('ground_truth', ''))}`"
        parts.append(
            f"{head}\n\n**prompt**\n\n```\n{cut(s.get('prompt', ''))}\n```\n\n"
            f"**response**\n\n```\n{cut(s.get('response', ''))}\n```"
        )
    return "\n\n".join(parts)


TrackerFactory = Callable[[RunInfo], Tracker]

# name -> factory(run). A factory raises TrackerUnavailable when its backend cannot start. A factory's
# `requires` attribute names the pip package its backend imports; config loading checks it is installed.
REGISTRY: Registry[TrackerFactory] = Registry("tracker")


def requires(package: str) -> Callable[[TrackerFactory], TrackerFactory]:
    """Mark a tracker factory with the pip package (also its import name) its backend needs."""

    def wrap(factory: TrackerFactory) -> TrackerFactory:
        factory.requires = package  # type: ignore[attr-defined]
        return factory

    return wrap


@REGISTRY.register("console")
def _console(run: RunInfo) -> Tracker:
    from npu_rl.trackers.console import ConsoleTracker

    return ConsoleTracker(run.total_steps)


@REGISTRY.register("jsonl")
def _jsonl(run: RunInfo) -> Tracker:
    return JsonlTracker(run.log_dir)


@REGISTRY.register("tensorboard")
@requires("tensorboard")
def _tensorboard(run: RunInfo) -> Tracker:
    from npu_rl.trackers.tensorboard_tracker import TensorBoardTracker

    return TensorBoardTracker(run)


@REGISTRY.register("swanlab")
@requires("swanlab")
def _swanlab(run: RunInfo) -> Tracker:
    from npu_rl.trackers.swanlab_tracker import SwanLabTracker

    return SwanLabTracker(run)


@REGISTRY.register("wandb")
@requires("wandb")
def _wandb(run: RunInfo) -> Tracker:
    from npu_rl.trackers.wandb_tracker import WandbTracker

    return WandbTracker(run)


class Tracking:
    """Fans every call out to the configured trackers.

    A tracker that cannot start stops the run with its reason (what to install or set), because a run
    that silently logs nowhere is discovered only when its curves are needed. With `allow_missing`
    (trainer.allow_missing_logger) the run warns and continues with the trackers that did start.
    `config` (the run's Config) supplies project / experiment names and the resolved settings.
    """

    def __init__(
        self,
        names: list[str],
        log_dir: str,
        total_steps: int,
        *,
        config: Any = None,
        allow_missing: bool | None = None,
    ) -> None:
        factories = {name: REGISTRY.get(name, key="trainer.logger") for name in names}  # names: see load_config
        run = RunInfo(log_dir=str(log_dir), total_steps=total_steps)
        if config is not None:
            run.project = config.trainer.project_name
            run.experiment = config.trainer.experiment_name
            run.config = dataclasses.asdict(config)
            if allow_missing is None:
                allow_missing = config.trainer.allow_missing_logger
        self.trackers: list[Tracker] = []
        self.skipped: dict[str, str] = {}  # tracker name -> why it did not start
        # The console starts last and closes first: other trackers print while starting and closing
        # (SwanLab does), and the progress bar must stay the terminal's last line and be ended before them.
        ordered = [n for n in dict.fromkeys(names) if n != "console"] + (["console"] if "console" in names else [])
        try:
            for name in ordered:  # dict.fromkeys: a name listed twice would log everything twice
                try:
                    self.trackers.append(factories[name](run))
                except TrackerUnavailable as err:
                    if not allow_missing:
                        raise
                    self.skipped[name] = str(err)
                    print(f"[npu_rl] warning: {err}; continuing without it", file=sys.stderr, flush=True)
        except BaseException:
            self.close()  # do not leave started trackers (open files, SwanLab runs) behind
            raise

    def log(self, metrics: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_samples(samples, step)

    def close(self) -> None:
        for tracker in reversed(self.trackers):
            tracker.close()
        self.trackers = []
