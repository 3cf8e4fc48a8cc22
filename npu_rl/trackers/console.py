"""Console output: a live progress bar on a terminal, one plain line per step in log files and CI."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

# The numbers that tell at a glance whether training is healthy (verl's names).
KEYS = (
    "critic/score/mean",
    "actor/pg_loss",
    "actor/kl_loss",
    "actor/entropy",
    "actor/pg_clipfrac",
    "actor/grad_norm",
    "response_length/mean",
    "timing_s/step",
)
REWARD_KEY = "critic/score/mean"
BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    """`3h05m`, `4m41s` or `12s`: an ETA is read, not computed with."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ConsoleTracker:
    """Progress (step / total, reward, s/step, ETA) plus the health metrics of each step.

    On a terminal the progress bar is redrawn in place below the per-step lines; when the stream is
    not a TTY (redirected to a file, CI) it degrades to one plain line per step, since carriage
    returns and escape codes would only garble a log file. s/step and the ETA come from wall-clock
    time between logged steps, so validation and checkpoint time are included in the estimate.
    """

    def __init__(
        self,
        total_steps: int,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_steps = max(int(total_steps), 0)
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.clock = clock
        self._first: tuple[int, float] | None = None  # (step, time) of the first training step seen
        self._bar_shown = False

    def seconds_per_step(self, step: int, metrics: dict[str, Any]) -> float | None:
        """Mean wall-clock per step since the first logged step, else the trainer's own step timing."""
        now = self.clock()
        if step > 0 and self._first is None:
            self._first = (step, now)
        if self._first is not None and step > self._first[0]:
            return (now - self._first[1]) / (step - self._first[0])
        for key in ("timing_s/step_total", "timing_s/step"):
            value = metrics.get(key)
            if isinstance(value, (int, float)) and value > 0:
                return float(value)
        return None

    def progress(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """The progress fields of this step (also what the tests check)."""
        per_step = self.seconds_per_step(step, metrics)
        remaining = max(self.total_steps - step, 0)
        reward = metrics.get(REWARD_KEY)
        return {
            "step": step,
            "total": self.total_steps,
            "fraction": step / self.total_steps if self.total_steps else 0.0,
            "reward": reward if isinstance(reward, (int, float)) else None,
            "s_per_step": per_step,
            "eta_s": per_step * remaining if per_step is not None else None,
        }

    def _progress_text(self, p: dict[str, Any], bar: bool) -> str:
        pieces = [f"{p['step']}/{p['total']} ({p['fraction']:.0%})"]
        if bar:
            filled = round(BAR_WIDTH * min(p["fraction"], 1.0))
            pieces[0] = "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "] " + pieces[0]
        if p["reward"] is not None:
            pieces.append(f"reward {p['reward']:.3f}")
        if p["s_per_step"] is not None:
            pieces.append(f"{p['s_per_step']:.2f} s/step")
        if p["eta_s"] is not None:
            pieces.append(f"ETA {format_duration(p['eta_s'])}")
        return " | ".join(pieces)

    def log(self, metrics: dict[str, float], step: int) -> None:
        # verl's val-core metrics without their bootstrap spreads (mean@N, best@N/mean, maj@N/mean)
        shown = {
            k: v for k, v in metrics.items() if k in KEYS or (k.startswith("val-core/") and not k.endswith("/std"))
        }
        body = " ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        p = self.progress(step, metrics)
        if self.tty:
            # clear the old bar, print this step's line, then redraw the bar on the last line
            self.stream.write(f"\r\x1b[K[step {step}] {body}\n{self._progress_text(p, bar=True)}")
            self._bar_shown = True
        else:
            self.stream.write(f"step {self._progress_text(p, bar=False)} | {body}\n")
        self.stream.flush()

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        """Completions go to the JSONL / TensorBoard / SwanLab trackers; a console would drown in them."""

    def close(self) -> None:
        if self._bar_shown:
            self.stream.write("\n")  # leave the cursor below the final bar
            self.stream.flush()
            self._bar_shown = False
