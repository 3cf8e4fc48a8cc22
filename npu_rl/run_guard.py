"""What keeps a run's directories its own and stops it cleanly: locks, the NaN/inf guard, stop signals.

`RunLock` holds `fcntl.flock` on `<dir>/.npu_rl.lock` for the life of the run. The kernel drops a
flock when its process dies (kill -9 included), so a lock file left by a dead run is taken over
with a note, while a live holder makes a second run fail at once with who holds it (pid, host,
start time). Without the lock a second run on the same directories resumed the first one's
checkpoint, deleted its temp files and interleaved both runs' metrics.

`NonFiniteGuard` stops a run whose updates keep coming out NaN/inf (each one is skipped by the
actor) or whose parameters stopped being finite, before such weights can be saved.

`StopSignals` turns the first SIGTERM/SIGINT (Slurm preemption, torchrun's shutdown, Ctrl-C) into a
request the trainer honours between steps: it finishes the step, saves a checkpoint and exits with a
message. A second signal exits at once (the checkpoint on disk is then the last complete one).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

from npu_rl.checkpoint import nonfinite_tensors
from npu_rl.distributed import all_reduce

LOCK_NAME = ".npu_rl.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the directory; the message names it."""


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown process"
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"


def _read_holder(fh: Any) -> dict[str, Any]:
    fh.seek(0)
    try:
        return json.loads(fh.read() or "{}")
    except ValueError:
        return {}


class RunLock:
    """An exclusive lock on each of `dirs` (created if missing), held until `release()` or process exit."""

    def __init__(self, dirs: list[Path], what: str = "run") -> None:
        self._files: list[Any] = []
        self.taken_over: list[str] = []  # notes about stale lock files of dead processes
        unique = list(dict.fromkeys(Path(d).resolve() for d in dirs))
        try:
            for d in unique:
                self._acquire(d, what)
        except BaseException:
            self.release()
            raise

    def _acquire(self, directory: Path, what: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_NAME
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's life
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fh)
            fh.close()
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise RunLockedError(
                    f"{directory} is in use by another {what}: {_describe(holder)} holds {path}. "
                    "Wait for it to finish or stop it, or give this run its own trainer.log_dir / "
                    "trainer.default_local_dir (e.g. another trainer.experiment_name)"
                ) from err
            raise RunLockedError(f"cannot lock {path} ({err}); this filesystem may not support locks") from err
        previous = _read_holder(fh)
        if previous and previous.get("pid") != os.getpid():
            self.taken_over.append(f"took over {path} from {_describe(previous)}, which is no longer running")
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            )
            + "\n"
        )
        fh.flush()
        self._files.append(fh)

    def release(self) -> None:
        """Drop the locks. The emptied files stay; one that still names a holder was left by a dead run."""
        for fh in self._files:
            fh.truncate(0)
            fh.close()  # closing the descriptor releases the flock
        self._files = []


class NonFiniteError(RuntimeError):
    """Training produced NaN/inf it cannot recover from; the message says where and what to change."""


class NonFiniteGuard:
    """Counts steps whose update was skipped for a NaN/inf loss or gradient (`actor/nonfinite_skipped`)
    and stops the run after `limit` in a row, or at once when a parameter is no longer finite."""

    def __init__(self, limit: int, verbose: bool = True) -> None:
        self.limit, self.verbose = limit, verbose
        self.in_row = 0

    def check(self, metrics: dict[str, float], step: int, model: nn.Module, latest: Callable[[], Any]) -> None:
        """After step `step` was logged; `latest()` names the checkpoint to resume from. Collective."""
        skipped = metrics.get("actor/nonfinite_skipped", 0.0) > 0 or not math.isfinite(metrics.get("actor/pg_loss", 0))
        self.in_row = self.in_row + 1 if skipped else 0
        if skipped and self.verbose:
            print(f"[npu_rl] warning: step {step}: NaN/inf loss or gradient, update skipped ({self.in_row} in a row)")
        if self.in_row >= self.limit:
            raise NonFiniteError(
                f"{self.in_row} steps in a row (trainer.max_nonfinite_steps={self.limit}) had a NaN/inf loss or "
                f"gradient and were skipped, up to step {step}: the run cannot recover. Lower actor.optim.lr, check "
                f"the reward and resume from {latest() or 'the start'}"
            )
        bad = nonfinite_tensors(model.state_dict())
        if int(all_reduce(torch.tensor(float(len(bad))), "sum")):
            where = ", ".join(bad[:3]) or "on another rank"
            raise NonFiniteError(
                f"parameters became NaN/inf in the update of step {step} ({where}): stopping without saving. "
                f"Lower actor.optim.lr and resume from {latest() or 'the start'}"
            )


class StopRequested(SystemExit):
    """Raised by the trainer after it saved on a stop signal; the exit status is 128 + the signal number."""


class StopSignals:
    """Catches SIGTERM and SIGINT while active; `requested` holds the first signal's name, if any."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: str | None = None
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:  # the second signal: exit now, as the default action would
            print(f"[npu_rl] second {name}: exiting now without saving", file=sys.stderr, flush=True)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested, self.signum = name, signum
        print(
            f"[npu_rl] {name} received: finishing the current step, then saving a checkpoint and exiting "
            "(send it again to exit at once without saving)",
            file=sys.stderr,
            flush=True,
        )
