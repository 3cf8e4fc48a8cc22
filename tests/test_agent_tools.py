"""Agent tools: the YAML loader, the calculator, and the code_interpreter sandbox under escape attempts.

Every escape test runs real untrusted code in the real sandbox and then checks that nothing it
started is still alive (the supervisor's process group is gone and every pid the code printed is
gone). The strongest layers (unprivileged uid, network namespace) need root; tests that depend on
them say so and skip elsewhere, and docs/multi_turn.md says what is left without them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from npu_rl.agent_tools import (
    TOOLS,
    CalculatorTool,
    CodeInterpreterTool,
    SandboxLimits,
    ToolConfigError,
    build_tools,
    load_tools,
    run_python,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="the uid drop and network namespace are used only as root")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

FAST = SandboxLimits(timeout_s=2.0, memory_mb=256)


def assert_all_gone(result, pids=()) -> None:
    """Nothing the run started is alive: its session/process group and each listed pid no longer exist."""
    with pytest.raises(ProcessLookupError):
        os.killpg(result.supervisor_pid, 0)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert result.leftover == 0


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


def printed_pids(output: str) -> list[int]:
    return [int(word[4:]) for word in output.split() if word.startswith("pid=")]


# ------------------------------------------------------------------------------------------------
# sandbox escapes


def test_trivial_program_runs_and_cleans_up():
    result = run_python("print(6 * 7)", FAST)
    assert (result.output, result.exit_code, result.timed_out, result.truncated) == ("42\n", 0, False, False)
    assert_all_gone(result)


def test_infinite_loop_is_killed_at_the_wall_clock_limit():
    start = time.monotonic()
    result = run_python("while True:\n    pass", SandboxLimits(timeout_s=0.5))
    assert result.timed_out and result.exit_code == -9
    assert time.monotonic() - start < 4
    assert_all_gone(result)


def test_fork_bomb_is_bounded_and_every_process_is_killed():
    code = textwrap.dedent(
        """
        import os
        print("pid=%d" % os.getpid(), flush=True)
        while True:
            try:
                if os.fork() == 0:
                    print("pid=%d" % os.getpid(), flush=True)
            except OSError:
                pass
        """
    )
    nobody_before = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == 65534)
    result = run_python(code, SandboxLimits(timeout_s=1.0, max_processes=8, memory_mb=256))
    pids = printed_pids(result.output)
    assert len(pids) >= 2  # it did fork ...
    if ROOT:  # ... and RLIMIT_NPROC (enforced for the dropped uid, not for root) bounded it to ~8 processes
        assert len(set(pids)) <= 8 + 1 + nobody_before
    assert_all_gone(result, pids)


def test_huge_output_is_truncated_and_ends_the_program():
    limits = SandboxLimits(timeout_s=4.0, max_output_bytes=1000)
    start = time.monotonic()
    result = run_python("while True:\n    print('x' * 10000)", limits)
    assert result.truncated and len(result.output.encode()) <= 1000
    assert not result.timed_out and time.monotonic() - start < 3  # the closed pipe ended it, not the clock
    assert_all_gone(result)


def test_huge_memory_allocation_fails_inside_the_sandbox():
    result = run_python("b = bytearray(8 * 1024**3)\nprint('allocated')", SandboxLimits(timeout_s=2.0, memory_mb=256))
    assert "MemoryError" in result.output and "allocated" not in result.output
    assert result.exit_code == 1
    assert_all_gone(result)


def test_working_directory_is_fresh_and_removed(tmp_path):
    code = "import os\nos.makedirs('d/e')\nopen('d/e/left.txt', 'w').write('x')\nos.chmod('d', 0)\nprint(os.getcwd())"
    result = run_python(code, FAST)
    cwd = Path(result.output.strip())
    assert cwd.name.startswith("npu_rl_sandbox_") and not cwd.exists()
    assert_all_gone(result)


@needs_root
def test_writing_outside_the_temp_dir_is_refused(tmp_path):
    # As root the code runs as `nobody`: the trainer's (root-owned) folders are not writable.
    # Without root it runs as the trainer's user and can write wherever that user can (docs/multi_turn.md).
    target = tmp_path / "escape.txt"
    code = f"open({str(target)!r}, 'w').write('pwned')"
    result = run_python(code, FAST)
    assert "PermissionError" in result.output
    assert not target.exists()
    assert_all_gone(result)


def test_parent_environment_secrets_are_not_visible(tmp_path):
    # The secret is in the initial environment of the process that calls the sandbox, so it is also in
    # that process's /proc/<pid>/environ, which the code tries to read via its grandparent.
    code = textwrap.dedent(
        """
        import os
        print(dict(os.environ))
        supervisor = os.getppid()
        caller = open("/proc/%d/stat" % supervisor).read().rsplit(")", 1)[1].split()[1]
        for pid in (supervisor, caller):
            try:
                print(open("/proc/%s/environ" % pid, "rb").read())
            except OSError as e:
                print("refused", type(e).__name__)
        """
    )
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\nfrom npu_rl.agent_tools import run_python, SandboxLimits\n"
        "print(run_python(sys.stdin.read(), SandboxLimits(timeout_s=3.0)).output)\n"
    )
    env = dict(os.environ, NPU_RL_TEST_SECRET="hunter2-secret", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, str(driver)], input=code, env=env, capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "'PATH'" in out  # the program ran and printed its environment
    assert "hunter2-secret" not in out
    if ROOT:
        assert out.count("refused PermissionError") == 2  # root-owned supervisor's and caller's environ


def _listener() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.setblocking(False)
    return server


def _no_connection(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def test_socket_to_localhost_fails():
    with _listener() as server:
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
        result = run_python(code, FAST)
        assert "connected" not in result.output and "OSError" in result.output
        assert _no_connection(server)
    assert_all_gone(result)


@needs_root
def test_ctypes_bypass_of_the_socket_block_meets_the_network_namespace():
    # The Python-level block is not a boundary: raw libc calls skip it. The namespace still stops them.
    with _listener() as server:
        port = server.getsockname()[1]
        code = textwrap.dedent(
            f"""
            import ctypes, struct
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.socket(2, 1, 0)
            addr = struct.pack("=H", 2) + struct.pack("!H", {port}) + bytes([127, 0, 0, 1]) + bytes(8)
            rc = libc.connect(fd, addr, len(addr))
            print("socket", fd >= 0, "connect", rc, ctypes.get_errno())
            """
        )
        result = run_python(code, FAST)
        assert result.network == "namespace+python-block"
        assert "socket True connect -1" in result.output  # the raw socket exists, but no route to the listener
        assert _no_connection(server)
    assert_all_gone(result)


def test_background_processes_that_leave_the_session_are_killed():
    code = textwrap.dedent(
        """
        import os, subprocess
        p = subprocess.Popen(["sleep", "100"], start_new_session=True)
        print("pid=%d" % p.pid, flush=True)
        r, w = os.pipe()
        if os.fork() == 0:           # a daemon: new session, double fork, empty environment
            os.setsid()
            if os.fork() == 0:
                os.write(w, b"%d" % os.getpid())
                os.execve("/bin/sleep", ["sleep", "100"], {})
            os._exit(0)
        print("pid=%s" % os.read(r, 32).decode(), flush=True)
        """
    )
    start = time.monotonic()
    result = run_python(code, FAST)
    pids = printed_pids(result.output)
    assert len(pids) == 2, result.output
    assert result.exit_code == 0 and not result.timed_out
    assert time.monotonic() - start < 3  # the run ends with its main program, not at the time limit
    assert_all_gone(result, pids)


# ------------------------------------------------------------------------------------------------
# the interpreter tool


def test_code_interpreter_tool_reports_output_errors_and_bad_arguments():
    tool = CodeInterpreterTool(FAST)
    ok = tool.execute({"code": "print(sum(range(10)))"})
    assert ok.text == "45\n" and ok.metrics["tool/error"] == 0.0 and ok.reward == 0.0
    failed = tool.execute({"code": "1/0"})
    assert "ZeroDivisionError" in failed.text and "[exit code 1]" in failed.text and failed.metrics["tool/error"] == 1
    for bad in ({}, {"code": 3}, {"code": None}):
        result = tool.execute(bad)
        assert result.text.startswith("Error: code_interpreter needs a string argument 'code'")
        assert result.metrics == {"tool/error": 1.0}
    timeout = CodeInterpreterTool(SandboxLimits(timeout_s=0.3)).execute({"code": "while 1: pass"})
    assert "exceeded the 0.3 s time limit" in timeout.text and timeout.metrics["tool/timeout"] == 1.0


# ------------------------------------------------------------------------------------------------
# the calculator


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2 + 3 * 4", "14"),
        ("(12 + 30) * 3 / 4", "63/2 ≈ 31.5"),
        ("2^10", "1024"),
        ("2**10", "1024"),
        ("7/3", "7/3 ≈ 2.333333333333"),
        ("-1.5 * 2", "-3"),
        ("2^-2", "1/4 ≈ 0.25"),
        ("10!", "3628800"),
        ("12%", "3/25 ≈ 0.12"),
    ],
)
def test_calculator_values(expression, expected):
    result = CalculatorTool(CalculatorTool.config_class()).execute({"expression": expression})
    assert result.text == expected and result.metrics["tool/error"] == 0.0


@pytest.mark.parametrize(
    "expression",
    ["__import__('os').system('touch /tmp/pwned')", "open('/etc/passwd').read()", "lambda: 1", "[x for x in ()]"],
)
def test_calculator_refuses_code(expression):
    result = CalculatorTool(CalculatorTool.config_class()).execute({"expression": expression})
    assert result.text.startswith("Error:") and result.metrics["tool/error"] == 1.0


@pytest.mark.parametrize("expression", ["9^9^9^9", "10^(10^10)", "2^100000", "(10^1000)^(10^3)", "1" * 400 + "^99"])
def test_calculator_is_bounded_on_huge_powers(expression):
    start = time.perf_counter()
    result = CalculatorTool(CalculatorTool.config_class()).execute({"expression": expression})
    assert result.text.startswith("Error:")
    assert time.perf_counter() - start < 0.5


def test_calculator_rejects_long_input_and_non_string_arguments():
    tool = CalculatorTool(CalculatorTool.config_class(max_chars=20))
    assert "longer than 20" in tool.execute({"expression": "1+" * 20 + "1"}).text
    assert "needs a string argument 'expression'" in tool.execute({"expression": 12}).text


# ------------------------------------------------------------------------------------------------
# config loading

VERL_STYLE = """
tools:
  - class_name: verl.tools.sandbox_fusion_tools.SandboxFusionTool
    config:
      sandbox_fusion_url: "http://localhost:8080/run_code"
      num_workers: 4
      default_timeout: 3
      memory_limit_mb: 512
      type: native
    tool_schema:
      type: function
      function:
        name: code_interpreter
        description: A tool for executing code.
        parameters:
          type: object
          properties:
            code: {type: string, description: The code to execute.}
          required: [code]
  - class_name: calculator
"""


def test_load_verl_shaped_tool_config(tmp_path):
    path = tmp_path / "tools.yaml"
    path.write_text(VERL_STYLE)
    tools = load_tools(path)
    assert list(tools) == ["code_interpreter", "calculator"]
    interp = tools["code_interpreter"]
    assert isinstance(interp, CodeInterpreterTool)
    assert (interp.config.timeout_s, interp.config.memory_mb) == (3, 512)
    assert interp.schema["function"]["description"] == "A tool for executing code."
    assert interp.schema["function"]["parameters"]["required"] == ["code"]
    json.dumps([t.schema for t in tools.values()])  # what a chat template's tools= receives
    assert tools["calculator"].schema["function"]["name"] == "calculator"
    assert "code_interpreter" in TOOLS and "calculator" in TOOLS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tool: []", "tools.yaml: tools: expected a top-level `tools:` list"),
        ("tools: [{class_name: calculater}]", "tools[0].class_name: unknown tool class 'calculater' (did you mean"),
        ("tools: [{config: {}}]", "tools[0].class_name: required"),
        ("tools: [{class_name: calculator, confg: {}}]", "tools[0].confg: unknown key"),
        ("tools: [{class_name: code_interpreter, config: {timeout: 3}}]", "tools[0].config.timeout: unknown key"),
        ("tools: [{class_name: code_interpreter, config: {timeout_s: -1}}]", "tools[0].config.timeout_s: must be"),
        ("tools: [{class_name: code_interpreter, config: {memory_mb: 8}}]", "tools[0].config.memory_mb:"),
        ("tools: [{class_name: calculator, config: [1]}]", "tools[0].config: expected a mapping"),
        ("tools: [{class_name: calculator, tool_schema: {type: fn}}]", "tools[0].tool_schema.type: must be 'function'"),
        (
            "tools: [{class_name: calculator, tool_schema: {type: function, function: {name: 'a b'}}}]",
            "tools[0].tool_schema.function.name: must be",
        ),
        ("tools: [{class_name: calculator}, {class_name: calculator}]", "tools[1].tool_schema.function.name: a second"),
        ("tools: [unclosed", "tools.yaml: not valid YAML"),
    ],
)
def test_bad_tool_configs_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "tools.yaml"
    path.write_text(text)
    with pytest.raises(ToolConfigError) as excinfo:
        load_tools(path)
    assert message in str(excinfo.value)
    assert str(path) in str(excinfo.value)


@needs_root
def test_unknown_run_as_user_is_a_config_error():
    with pytest.raises(ToolConfigError, match=r"tools\[0\]\.config\.run_as: no user 'no_such_user_npu_rl'"):
        build_tools({"tools": [{"class_name": "code_interpreter", "config": {"run_as": "no_such_user_npu_rl"}}]})


def test_missing_tool_config_file(tmp_path):
    with pytest.raises(ToolConfigError, match="cannot read the tool config"):
        load_tools(tmp_path / "absent.yaml")
    assert build_tools({"tools": []}) == {}
