"""Metric trackers behind one small interface, chosen by `trainer.logger=[console,jsonl,...]`."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        """A few validation completions (prompt, response, ground_truth, score) for reading by eye."""
        ...

    def close(self) -> None: ...


class ConsoleTracker:
    """One line per step with the metrics that tell whether training is healthy."""

    KEYS = (
        "critic/score/mean",
        "actor/pg_loss",
        "actor/kl_loss",
        "actor/entropy",
        "actor/grad_norm",
        "response_length/mean",
        "timing_s/step",
    )

    def __init__(self, total_steps: int, stream: Any = None) -> None:
        self.total_steps = total_steps
        self.stream = stream or sys.stdout

    def log(self, metrics: dict[str, float], step: int) -> None:
        shown = {k: v for k, v in metrics.items() if k in self.KEYS or k.startswith("val-core/")}
        body = " ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        print(f"step {step}/{self.total_steps} {body}", file=self.stream, flush=True)

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        return None

    def close(self) -> None:
        return None


class JsonlTracker:
    """Appends one JSON object per step to `<log_dir>/metrics.jsonl`; plots and tests read it back."""

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

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        with open(self.samples_path, "a", encoding="utf-8") as fh:
            for sample in samples:
                fh.write(json.dumps({"step": step, **sample}) + "\n")

    def close(self) -> None:
        self._fh.close()


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


TrackerFactory = Callable[[str, int], Tracker]

# name -> factory(log_dir, total_steps). Other trackers (tensorboard, swanlab) register here.
REGISTRY: dict[str, TrackerFactory] = {
    "console": lambda log_dir, total: ConsoleTracker(total),
    "jsonl": lambda log_dir, total: JsonlTracker(log_dir),
}


class Tracking:
    """Fans every call out to the configured trackers."""

    def __init__(self, names: list[str], log_dir: str, total_steps: int) -> None:
        unknown = [n for n in names if n not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown trainer.logger {unknown}; available: {sorted(REGISTRY)}")
        self.trackers = [REGISTRY[n](log_dir, total_steps) for n in names]

    def log(self, metrics: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_samples(samples, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
