"""Sandbox supervisor: a fresh, single-threaded process that runs one piece of untrusted code and
then kills everything that code started.

Run by npu_rl.agent_tools.sandbox as `python -I -S _supervisor.py <json spec>`; stdlib only, because
`-I` puts neither this folder nor site-packages on sys.path. It is a separate process (not a
preexec_fn in the trainer) because forking from a threaded trainer and running Python before exec
can deadlock, and because it must become a *child subreaper*: every process the untrusted code
starts, including ones that call setsid() or double-fork to leave its process group, is re-parented
here when its parent dies, so the final sweep finds them all by parent chain, kills and reaps them.

Protocol: the untrusted program's stdout and stderr both go to this process's stdout (the caller
reads it, bounded); this process writes one JSON status line to its own stderr when done.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNET = 0x40000000
SWEEP_LIMIT_S = 5.0  # give up killing after this long (reported as leftover > 0)

PRELUDE = r"""
import socket as _s, _socket as _ss
class _NoNetwork(_s.socket):
    def __init__(self, *args, **kwargs):
        raise OSError(101, "network access is disabled in this sandbox")
def _no_network(*args, **kwargs):
    raise OSError(101, "network access is disabled in this sandbox")
_s.socket = _ss.socket = _s.SocketType = _NoNetwork
_s.socketpair = _ss.socketpair = _s.fromfd = _s.create_connection = _s.create_server = _no_network
del _s, _ss, _NoNetwork, _no_network
import sys as _sys
_sys.argv = ["main.py"]
with open("main.py", encoding="utf-8", errors="replace") as _f:
    _code = compile(_f.read(), "main.py", "exec")
del _f, _sys
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
"""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a live process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # the command name may contain spaces and ')'
    return fields[0].decode(), int(fields[1])


def _descendants(root: int) -> list[int]:
    """Live (non-zombie) processes whose parent chain leads to `root`."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[0] != "Z":
                parent[int(name)] = st[1]
    found = []
    for pid in parent:
        p, hops = parent.get(pid), 0
        while p is not None and p != root and hops < 4096:
            p, hops = parent.get(p), hops + 1
        if p == root and pid != root:
            found.append(pid)
    return found


def _kill_all() -> int:
    """Kill and reap every descendant; returns how many were still alive when giving up (0 normally)."""
    deadline = time.monotonic() + SWEEP_LIMIT_S
    while True:
        alive = _descendants(os.getpid())
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            if not _descendants(os.getpid()):
                return 0
        if time.monotonic() > deadline:
            return len(_descendants(os.getpid()))
        time.sleep(0.002)


def _nproc_in_use(uid: int) -> int:
    """Tasks (threads included) owned by `uid` now: RLIMIT_NPROC counts all of them, not only the sandbox's."""
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{name}/task"))
    return count


def _child(spec: dict) -> None:
    """In the forked child: limits, identity, directory, then exec the interpreter. Never returns."""
    try:
        uid = spec["uid"] if spec["uid"] is not None else os.getuid()
        mb = 1024 * 1024
        limits = {
            resource.RLIMIT_AS: spec["memory_mb"] * mb,
            resource.RLIMIT_FSIZE: spec["max_file_mb"] * mb,
            resource.RLIMIT_NOFILE: spec["max_open_files"],
            resource.RLIMIT_CORE: 0,
            resource.RLIMIT_CPU: int(spec["timeout_s"]) + 2,
            resource.RLIMIT_NPROC: _nproc_in_use(uid) + spec["max_processes"],
        }
        for which, value in limits.items():
            resource.setrlimit(which, (value, value))  # hard == soft: the code cannot raise them again
        if spec["uid"] is not None:
            os.setgroups([])
            os.setgid(spec["gid"])
            os.setuid(spec["uid"])
        os.chdir(spec["cwd"])
        os.dup2(1, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        argv = [spec["python"], "-I", "-S", "-c", PRELUDE]
        os.execve(spec["python"], argv, spec["env"])
    except BaseException as e:  # report through the shared output pipe, then die without cleanup
        os.write(1, f"sandbox setup failed: {type(e).__name__}: {e}\n".encode())
        os._exit(127)


def main() -> None:
    spec = json.loads(sys.argv[1])
    libc = _libc()
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    network = "python-block"
    if spec["network_namespace"] and libc.unshare(CLONE_NEWNET) == 0:
        network = "namespace+python-block"
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(spec)
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd], [], [], spec["timeout_s"])
    os.close(pidfd)
    timed_out = not ready
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    elapsed = time.monotonic() - start
    leftover = _kill_all()
    report = {
        "exit_code": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        "elapsed_s": elapsed,
        "network": network,
        "leftover": leftover,
    }
    os.write(2, (json.dumps(report) + "\n").encode())


if __name__ == "__main__":
    main()
