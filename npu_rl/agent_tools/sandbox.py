"""Run untrusted Python in a separate, limited process and leave nothing behind.

Layers (docs/multi_turn.md lists what each does and does not stop):
- a supervisor process (_supervisor.py) in its own session that is a child subreaper, so every
  process the code starts, even after setsid() or a double fork, is found, killed and reaped;
- wall-clock limit (the supervisor kills the code, then sweeps), plus RLIMIT_CPU as a backstop;
- RLIMIT_AS (memory), RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0, set hard;
- when run as root: a fresh network namespace (only a down loopback) and an unprivileged uid
  (`nobody` by default), so the code cannot write the trainer's files or read its /proc/<pid>/environ;
- always: a Python-level socket block (bypassable with ctypes; not a security boundary), a scrubbed
  environment, `python -I -S`, a fresh temporary working directory removed afterwards, and output
  read with a size bound (the pipe is closed once the bound is passed, which ends a flooding program).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUPERVISOR = Path(__file__).with_name("_supervisor.py")
SUPERVISOR_GRACE_S = 10.0  # beyond the code's limit: the supervisor's sweep; then it is killed itself
STATUS_MAX_BYTES = 4096


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run; the interpreter tool's YAML `config:` keys have the same names."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_output_bytes: int = 16_384
    max_processes: int = 16  # beyond those the sandbox uid already runs (RLIMIT_NPROC counts per uid)
    max_file_mb: int = 16
    max_open_files: int = 64
    run_as: str = "nobody"  # used only when the trainer runs as root
    network_namespace: bool = True  # tried only as root; the Python-level block is always installed
    python: str | None = None  # interpreter for the code; None: this one, or a system one a dropped uid can run

    def check(self, where: str) -> None:
        """Raise ValueError naming `where` (file and key) for a limit out of range."""
        for key in ("timeout_s", "memory_mb", "max_output_bytes", "max_processes", "max_file_mb", "max_open_files"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{where}.{key}: must be a positive number, got {value!r}")
        if self.memory_mb < 64:
            raise ValueError(f"{where}.memory_mb: {self.memory_mb} MiB is too little to start Python; use >= 64")
        if self.max_open_files < 16:
            raise ValueError(f"{where}.max_open_files: Python needs at least 16 file descriptors")
        if self.python is not None and not os.access(self.python, os.X_OK):
            raise ValueError(f"{where}.python: {self.python!r} is not an executable file")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(self.run_as)
            except KeyError:
                raise ValueError(f"{where}.run_as: no user {self.run_as!r} on this machine") from None


@dataclass(frozen=True)
class SandboxResult:
    output: str  # stdout and stderr interleaved, at most max_output_bytes (decoded with replacement)
    exit_code: int | None  # negative: killed by that signal; None: the supervisor itself failed
    timed_out: bool
    truncated: bool
    elapsed_s: float  # wall time of the code, without start-up of the supervisor
    network: str  # "namespace+python-block" or "python-block"
    leftover: int  # processes the sweep could not kill (0 unless something is badly wrong; -1: unknown)
    supervisor_pid: int  # its process group and session id too; gone when this returns


def _world_executable(path: str) -> bool:
    """Whether a process of another uid can execute `path` (others' x bit on it and every folder above)."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)
    except OSError:
        return False


def _identity(limits: SandboxLimits) -> tuple[int | None, int | None]:
    """(uid, gid) to drop to, or (None, None) to keep ours (we are not root, so we cannot switch)."""
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam(limits.run_as)
    except KeyError:
        raise ValueError(f"run_as: no user {limits.run_as!r} on this machine; name an unprivileged user") from None
    return entry.pw_uid, entry.pw_gid


def _interpreter(limits: SandboxLimits, dropping: bool) -> str:
    if limits.python is not None:
        return limits.python
    candidates = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
    for path in candidates:
        if os.path.exists(path) and (not dropping or _world_executable(path)):
            return path
    raise RuntimeError(
        f"no Python interpreter the sandbox user can run among {candidates}; set the tool's `python:` config key"
    )


def _clean_env(cwd: str) -> dict[str, str]:
    """The whole environment of the sandbox: nothing of the trainer's (tokens, keys) is inherited."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8"}


def _remove_tree(path: str) -> None:
    """Remove the working folder even where the program made folders unreadable (chmod 000)."""
    for root, dirs, _ in os.walk(path):  # top-down: each folder is unlocked before the walk lists it
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
    shutil.rmtree(path, ignore_errors=True)


def run_python(code: str, limits: SandboxLimits) -> SandboxResult:
    """Run `code` as a program under `limits`; blocks until it and everything it started are gone."""
    uid, gid = _identity(limits)
    cwd = tempfile.mkdtemp(prefix="npu_rl_sandbox_")
    try:
        Path(cwd, "main.py").write_text(code, encoding="utf-8", errors="replace")
        if uid is not None:
            os.chown(cwd, uid, gid)
            os.chown(os.path.join(cwd, "main.py"), uid, gid)
        spec = {
            "uid": uid,
            "gid": gid,
            "cwd": cwd,
            "python": _interpreter(limits, uid is not None),
            "env": _clean_env(cwd),
            "timeout_s": float(limits.timeout_s),
            "memory_mb": int(limits.memory_mb),
            "max_file_mb": int(limits.max_file_mb),
            "max_open_files": int(limits.max_open_files),
            "max_processes": int(limits.max_processes),
            "network_namespace": bool(limits.network_namespace) and uid is not None,
        }
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(SUPERVISOR), json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_clean_env(cwd),
            cwd=cwd,
            start_new_session=True,
        )
        deadline = time.monotonic() + limits.timeout_s + SUPERVISOR_GRACE_S
        try:
            output, truncated = _read_bounded(proc, limits.max_output_bytes, deadline)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            status_text = proc.stderr.read(STATUS_MAX_BYTES) if proc.returncode is not None else b""
        finally:
            if proc.returncode is None:  # the supervisor hung: kill its whole group (its sweep did not run)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    finally:
        _remove_tree(cwd)
    try:
        status = json.loads(status_text.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):  # the supervisor crashed or was killed; say so through exit_code=None
        status = {"exit_code": None, "timed_out": False, "elapsed_s": 0.0, "network": "unknown", "leftover": -1}
        output += f"\n[sandbox supervisor failed: {status_text.decode(errors='replace')[-500:]}]"
    return SandboxResult(
        output=output,
        exit_code=status["exit_code"],
        timed_out=status["timed_out"],
        truncated=truncated,
        elapsed_s=status["elapsed_s"],
        network=status["network"],
        leftover=status["leftover"],
        supervisor_pid=proc.pid,
    )


def _read_bounded(proc: subprocess.Popen, limit: int, deadline: float) -> tuple[str, bool]:
    """Read the shared stdout/stderr pipe until EOF, at most `limit` bytes, until `deadline` (monotonic).

    Past the limit the read end is closed: the program's next write fails (BrokenPipeError), so a
    flood ends at once instead of running until the wall-clock limit."""
    fd = proc.stdout.fileno()
    buf = bytearray()
    truncated = False
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            truncated = True
            del buf[limit:]
            proc.stdout.close()
            break
    return buf.decode("utf-8", errors="replace"), truncated
