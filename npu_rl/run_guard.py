"""What keeps a run's directories its own and lets it stop cleanly: directory locks and stop signals.

`RunLock` holds `fcntl.flock` on `<dir>/.npu_rl.lock` for the life of the run. The kernel drops a
flock when its process dies (kill -9 included), so a lock file left by a dead run is taken over
with a note, while a live holder makes a second run fail at once with who holds it (pid, host,
start time). Without the lock a second run on the same directories resumed the first one's
checkpoint, deleted its temp files and interleaved both runs' metrics.

`StopSignals` turns the first SIGTERM/SIGINT (Slurm preemption, torchrun's shutdown, Ctrl-C) into a
request the trainer honours between steps: it finishes the step, saves a checkpoint and exits with a
message. A second signal exits at once (the checkpoint on disk is then the last complete one).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

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
