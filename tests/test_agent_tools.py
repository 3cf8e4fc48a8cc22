"""Tools and the sandbox: untrusted code tries to escape and each attempt must be contained,
with nothing left running afterwards."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from npu_rl.agent_tools import (
    CalculatorTool,
    PythonTool,
    SandboxLimits,
    available_isolation,
    load_tools,
    run_python,
)
from npu_rl.agent_tools.sandbox import nproc_limit, user_tasks

MODES = ["audit"] + (["namespaces"] if available_isolation() == "namespaces" else [])
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop (file and NPROC containment) needs root")


def _gone(marker: str, within_s: float = 5.0) -> list[int]:
    """Processes whose command line holds `marker`, polled until none is left or `within_s` passed:
    the kernel kills a PID namespace's members asynchronously when its init dies (seen under load)."""
    deadline = time.monotonic() + within_s
    while (found := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("mode", MODES)
def test_plain_code_runs_and_prints(mode: str) -> None:
    res = run_python("import math\nprint(math.comb(10, 3))", isolation=mode)
    assert res.ok and res.stdout.strip() == "120" and res.isolation == mode


@root_only
@pytest.mark.parametrize("mode", MODES)
def test_fork_bomb_is_bounded_and_nothing_is_left_running(mode: str) -> None:
    marker = f"{uuid.uuid4().int % 10**6}.{os.getpid()}"  # a sleep duration nobody else uses
    code = f"""
import os, sys
forked = 0
for _ in range(10000):
    try:
        pid = os.fork()
    except (OSError, PermissionError) as err:
        print("fork refused after", forked, type(err).__name__, flush=True)
        break
    if pid == 0:
        os.setsid()  # try to leave the process group
        os.execv("/bin/sleep", ["sleep", "{marker}"])
    forked += 1
while True:
    pass
"""
    res = run_python(code, SandboxLimits(timeout_s=2, max_processes=16), isolation=mode)
    assert "fork refused after" in res.stdout
    assert int(res.stdout.split("after")[1].split()[0]) <= 16
    assert not res.ok
    if mode == "namespaces":  # setsid escapees die with the PID namespace
        assert _gone(marker) == []
    else:  # the audit hook refused the very first fork
        assert "after 0 PermissionError" in res.stdout


@root_only
@pytest.mark.parametrize("mode", MODES)
def test_cannot_write_outside_its_directory(mode: str, tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    code = f"""
import os
open("inside.txt", "w").write("ok")
print("cwd", os.getcwd())
try:
    open({str(target)!r}, "w").write("escaped")
    print("WROTE")
except OSError as err:
    print("refused", type(err).__name__)
"""
    res = run_python(code, isolation=mode)
    assert "refused PermissionError" in res.stdout and not target.exists()
    workdir = Path(res.stdout.split("cwd ")[1].split()[0])
    assert not workdir.exists()  # the temporary directory is removed after the call


@pytest.mark.parametrize("mode", MODES)
def test_environment_secrets_are_not_visible(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPU_RL_TEST_SECRET", "hunter2-secret")
    code = f"""
import os
print(sorted(os.environ))
print(os.environ.get("NPU_RL_TEST_SECRET"))
try:
    print(open("/proc/{os.getpid()}/environ", "rb").read())
except OSError as err:
    print("environ refused", type(err).__name__)
"""
    res = run_python(code, isolation=mode)
    assert "hunter2" not in res.stdout + res.stderr
    assert "['HOME', 'LANG', 'PATH', 'TMPDIR']" in res.stdout


@pytest.mark.parametrize("mode", MODES)
def test_sockets_cannot_reach_a_listening_server(mode: str) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"leak")
    print("CONNECTED")
except OSError as err:
    print("refused", type(err).__name__)
"""
    try:
        res = run_python(code, isolation=mode)
        assert "refused" in res.stdout and "CONNECTED" not in res.stdout
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


@pytest.mark.parametrize("mode", MODES)
def test_infinite_loop_is_killed_at_the_wall_clock_limit(mode: str) -> None:
    res = run_python("while True:\n    pass", SandboxLimits(timeout_s=1), isolation=mode)
    assert res.timed_out and res.exit_code is None and res.seconds < 5


@pytest.mark.parametrize("mode", MODES)
def test_huge_output_is_truncated_and_bounded(mode: str) -> None:
    res = run_python("while True:\n    print('x' * 10000)", SandboxLimits(timeout_s=3, max_file_mb=1), isolation=mode)
    assert res.truncated and not res.ok
    assert len(res.stdout) <= SandboxLimits().max_output_chars + 40


def test_memory_limit_stops_a_huge_allocation() -> None:
    res = run_python("x = bytearray(4 * 1024**3)\nprint('allocated')", SandboxLimits(memory_mb=512))
    assert not res.ok and "allocated" not in res.stdout and "MemoryError" in res.stderr


def test_python_tool_reports_errors_and_output() -> None:
    tool = PythonTool({"timeout_s": 2})
    good = tool.execute({"code": "print(sum(range(10)))"})
    assert good.ok and good.text == "45" and "sandbox_s" in good.metrics
    bad = tool.execute({"code": "1/0"})
    assert not bad.ok and "ZeroDivisionError" in bad.text
    assert not tool.execute({"code": 5}).ok and not tool.execute({}).ok


def test_nproc_limit_of_an_ordinary_user_counts_its_own_tasks_first() -> None:
    # RLIMIT_NPROC counts every task of the real uid: a fixed 32 left a non-root trainer holding 40
    # threads no room to start the sandbox at all ("unshare: fork failed", checked under setpriv).
    release = threading.Event()
    threads = [threading.Thread(target=release.wait) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        assert user_tasks(os.getuid()) >= threading.active_count()
        assert nproc_limit(32, as_root=False, uid=os.getuid()) >= 32 + threading.active_count()
        assert nproc_limit(32, as_root=True, uid=os.getuid()) == 32  # root runs the code as nobody
    finally:
        release.set()
        for t in threads:
            t.join()


@root_only
def test_concurrent_interpreter_calls_share_the_nobody_process_limit_without_failing() -> None:
    # Every sandbox runs as `nobody`, whose RLIMIT_NPROC counts all of them (~2 processes each): four
    # calls at once under max_processes=4 failed to start two before the tool bounded its own concurrency.
    tool = PythonTool({"timeout_s": 5, "max_processes": 4})
    assert tool.max_concurrent == 1
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: tool.execute({"code": "import time; time.sleep(0.2); print(7)"}), range(4)))
    assert [r.text for r in results] == ["7"] * 4
    with pytest.raises(ValueError, match="max_concurrent"):
        PythonTool({"max_concurrent": 0})


@pytest.mark.parametrize(
    ("expression", "answer"),
    [("(12 + 7) * 3 / 4", "14.25"), ("2^10", "1024"), ("2**3", "8"), ("1/3", "1/3 (about 0.3333333333)")],
)
def test_calculator_is_exact(expression: str, answer: str) -> None:
    result = CalculatorTool().execute({"expression": expression})
    assert result.ok and result.text == answer


@pytest.mark.parametrize("expression", ["__import__('os').system('id')", "1/0", "x + 1", "9^9^9^9", ""])
def test_calculator_never_executes_and_refuses_what_is_not_arithmetic(expression: str) -> None:
    result = CalculatorTool().execute({"expression": expression})
    assert not result.ok and result.text.startswith("Error")


def test_tools_load_from_a_verl_style_yaml(tmp_path: Path) -> None:
    path = tmp_path / "tools.yaml"
    path.write_text(
        """
tools:
  - class_name: code_interpreter
    config: {type: native, timeout_s: 3, memory_mb: 256}
    tool_schema:
      type: function
      function:
        name: python
        description: run code
        parameters: {type: object, properties: {code: {type: string}}, required: [code]}
  - class_name: npu_rl.agent_tools.CalculatorTool
"""
    )
    tools = load_tools(path)
    assert sorted(tools) == ["calculator", "python"]
    assert tools["python"].limits.timeout_s == 3 and tools["python"].limits.memory_mb == 256
    path.write_text("tools:\n  - class_name: calculater\n")
    with pytest.raises(ValueError, match="calculator"):
        load_tools(path)
    path.write_text("tools:\n  - class_name: code_interpreter\n    config: {timeout: 3}\n")
    with pytest.raises(ValueError, match="timeout"):
        load_tools(path)
