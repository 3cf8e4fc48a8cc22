"""Run untrusted Python (model output) in a separate, limited process.

Layers, outermost first:
- **Namespaces** (when `unshare` can create them here): a new user, network and PID namespace. The
  network namespace has only a downed loopback, so no socket reaches anything; the PID namespace's
  init is the sandboxed interpreter, so when it exits or is killed the kernel kills every process
  it left behind, including ones that called setsid() to leave the process group.
- **Audit hook** (fallback when namespaces are refused, or forced with `isolation="audit"`): a
  `sys.addaudithook` installed before the code runs refuses socket creation/connection, fork,
  exec, subprocesses and ctypes. It stops Python-level calls only; native code already loaded in
  the interpreter is not stopped (ctypes is refused so new native code cannot be called).
- **Unprivileged uid** when the trainer runs as root: the child drops to `nobody` (65534), so
  RLIMIT_NPROC is enforced (the kernel exempts root) and files owned by other users cannot be
  written. World-writable places (/tmp, /dev/shm) remain writable: the working directory is
  private, but the file system is not otherwise hidden.
- **rlimits** (set by util-linux `prlimit` before the interpreter starts): address space (RLIMIT_AS),
  CPU seconds, processes (NPROC), file size (FSIZE: also
  bounds captured output, which goes to files), open files, no core dumps. RLIMIT_NPROC counts every
  task (process or thread) of the real uid: as root the sandbox's uid is `nobody`'s own, so the limit
  is `max_processes`; run as an ordinary user it is that user's tasks at the start plus
  `max_processes` (a trainer's own threads would otherwise leave the sandbox no room to start at all).
- **Wall clock**: the whole process group is SIGKILLed at the deadline and after every run.
- **Scrubbed environment**: only PATH, HOME/TMPDIR (the temporary working directory) and LANG;
  the interpreter runs with `-I` (no user site, no PYTHON* variables).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
NOBODY = 65534
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# Installed before the user's code runs; an audit hook cannot be removed from Python.
_AUDIT_BOOT = """
import sys
_BLOCKED = ("socket.", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
            "subprocess.Popen", "pty.spawn", "ctypes.")
def _hook(event, args):
    if event.startswith(_BLOCKED):
        raise PermissionError(f"{event} is not allowed in the sandbox")
sys.addaudithook(_hook)
"""
_RUN_MAIN = "import runpy; runpy.run_path('main.py', run_name='__main__')"


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits; `max_output_chars` bounds what the model sees, `max_file_mb` what may be written."""

    timeout_s: float = 5.0
    memory_mb: int = 1024
    max_processes: int = 32
    max_output_chars: int = 2048
    max_file_mb: int = 8
    max_open_files: int = 64

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "max_processes", "max_output_chars", "max_file_mb", "max_open_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sandbox limit {name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SandboxResult:
    """What a run printed (truncated), how it ended, and how long it took."""

    stdout: str
    stderr: str
    exit_code: int | None  # None: killed at the wall-clock limit
    timed_out: bool
    truncated: bool
    seconds: float
    isolation: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _interpreter() -> str:
    """A Python the dropped uid can execute (a venv under /root is not readable by `nobody`)."""
    if os.geteuid() == 0:
        found = shutil.which("python3", path=_SAFE_PATH)
        if found:
            return found
    return sys.executable


def _namespace_prefix() -> list[str]:
    return ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"]


@functools.lru_cache(maxsize=1)
def available_isolation() -> str:
    """The strongest isolation here: "namespaces" when `unshare` works for the sandbox uid, else "audit"
    (probed once per process)."""
    why = "`unshare` (util-linux) is not installed"
    if shutil.which("unshare") is not None:
        try:
            done = subprocess.run([*_namespace_prefix(), "true"], capture_output=True, timeout=10, **_identity())
        except (OSError, subprocess.SubprocessError) as err:
            why = str(err)
        else:
            if done.returncode == 0:
                return "namespaces"
            why = done.stderr.decode(errors="replace").strip()
    logger.warning("tool sandbox: no namespaces here (%s); using the audit-hook fallback (weaker isolation)", why)
    return "audit"


def _identity() -> dict[str, Any]:
    """Popen arguments that run the child as `nobody` when we are root (set in C between fork and exec:
    no Python runs in the child, which matters in a trainer with other threads)."""
    if os.geteuid() != 0:
        return {}
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []}


def user_tasks(uid: int) -> int:
    """Tasks (processes and their threads) whose real uid is `uid`: what RLIMIT_NPROC counts."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
    return total


def nproc_limit(max_processes: int, as_root: bool, uid: int) -> int:
    """RLIMIT_NPROC for a run: `max_processes` for `nobody` (root drops to it), else this user's
    current tasks plus `max_processes` of headroom."""
    return max_processes if as_root else user_tasks(uid) + max_processes


def _limits_prefix(limits: SandboxLimits) -> list[str]:
    """`prlimit` (util-linux) sets the rlimits, then execs the rest of the command."""
    mb = 1024 * 1024
    values = {
        "as": limits.memory_mb * mb,
        "cpu": int(limits.timeout_s) + 1,
        "nproc": nproc_limit(limits.max_processes, os.geteuid() == 0, os.getuid()),
        "fsize": limits.max_file_mb * mb,
        "nofile": limits.max_open_files,
        "core": 0,
    }
    return ["prlimit", *(f"--{name}={value}" for name, value in values.items()), "--"]


def _read_head(path: Path, chars: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        raw = f.read(4 * chars + 4)
    text = raw.decode("utf-8", errors="replace")
    truncated = len(text) > chars or path.stat().st_size > len(raw)
    return (text[:chars] + "\n...[output truncated]" if truncated else text), truncated


def run_python(code: str, limits: SandboxLimits | None = None, isolation: str | None = None) -> SandboxResult:
    """Execute `code` as a script in a fresh temporary directory under the sandbox; never raises on
    what the code does (errors, kills and timeouts come back in the result)."""
    limits = limits or SandboxLimits()
    isolation = isolation or available_isolation()
    if isolation not in ("namespaces", "audit"):
        raise ValueError(f"sandbox isolation must be 'namespaces' or 'audit', got {isolation!r}")
    private = Path(tempfile.mkdtemp(prefix="npu_rl_sandbox_"))  # outputs: the child never names it
    work = private / "work"
    work.mkdir()
    try:
        (work / "main.py").write_text(code, encoding="utf-8")
        if os.geteuid() == 0:
            os.chown(work, NOBODY, NOBODY)
            os.chown(work / "main.py", NOBODY, NOBODY)
            os.chmod(private, 0o711)  # nobody may pass through to `work`, not list the outputs
        boot = _RUN_MAIN if isolation == "namespaces" else _AUDIT_BOOT + _RUN_MAIN
        cmd = [_interpreter(), "-I", "-c", boot]
        if isolation == "namespaces":
            cmd = _namespace_prefix() + cmd
        cmd = _limits_prefix(limits) + cmd
        env = {"PATH": _SAFE_PATH, "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
        out_path, err_path = private / "stdout", private / "stderr"
        start = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                **_identity(),
            )
            timed_out = False
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _stop(proc)
        seconds = time.monotonic() - start
        stdout, cut_out = _read_head(out_path, limits.max_output_chars)
        stderr, cut_err = _read_head(err_path, limits.max_output_chars)
        return SandboxResult(
            stdout=stdout,
            stderr=stderr,
            exit_code=None if timed_out else proc.returncode,
            timed_out=timed_out,
            truncated=cut_out or cut_err,
            seconds=seconds,
            isolation=isolation,
        )
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """Kill everything the run started and return once it is gone.

    Namespaces: `unshare` (proc.pid) waits for its child, the PID namespace's init; killing that
    child makes the kernel kill every process of the namespace and reap them before the init's exit
    is reported, so once `unshare` returns nothing of the run is left (setsid escapees included).
    Then, and in the audit mode, the process group is killed."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
