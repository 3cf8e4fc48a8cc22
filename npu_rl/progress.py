"""Progress of long jobs (validation, evaluation, checkpoint save/load, merge, preprocessing).

On a terminal one line is redrawn in place with done/total, rate and ETA; in a log file or CI (not a
TTY) a stage prints one line when it starts and one when it ends, so logs stay short. Output goes to
stderr so that a command's real output (tables, JSON) stays clean on stdout.

    with Progress("validation", total=len(records), unit="prompts") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from npu_rl.trackers.console import format_duration


class Progress:
    """A done/total counter with rate and ETA; `total=None` for work of unknown size."""

    MIN_REDRAW_S = 0.2  # a terminal line redrawn more often than this only costs time

    def __init__(
        self, desc: str, total: int | None = None, unit: str = "items", stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:  # fmt: skip
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0

    def __enter__(self) -> Progress:
        self.start = time.perf_counter()
        if self.enabled and not self.tty:
            size = f" ({self.total} {self.unit})" if self.total is not None else ""
            self._write(f"[npu_rl] {self.desc}: started{size}\n")
        elif self.enabled:
            self._draw(force=True)
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.enabled and self.tty:
            self._draw()

    def line(self) -> str:
        """`desc 12/40 prompts 3.1 prompts/s ETA 9s` (no ETA when the total is unknown)."""
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        text = f"{self.desc} {self.done}{of} {self.unit} {rate:.3g} {self.unit}/s"
        if self.total is not None and rate > 0 and self.done < self.total:
            text += f" ETA {format_duration((self.total - self.done) / rate)}"
        return text

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last_draw >= self.MIN_REDRAW_S or self.done == self.total:
            self._last_draw = now
            self._write(f"\r[npu_rl] {self.line()}\x1b[K")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if not self.enabled:
            return
        elapsed = format_duration(time.perf_counter() - self.start)
        status = "failed" if exc_type is not None else "done"
        if self.tty:
            self._draw(force=True)
            self._write(f" ({status} in {elapsed})\n")
        else:
            self._write(f"[npu_rl] {self.desc}: {status}, {self.done} {self.unit} in {elapsed}\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
