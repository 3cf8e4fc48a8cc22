"""Per-call overhead of the agent tools: calls/s of `code_interpreter` and of `calculator`.

    python bench/tool_sandbox.py                      # 50 interpreter calls, 5000 calculator calls
    python bench/tool_sandbox.py --interpreter-calls 200 --calculator-calls 20000

The interpreter runs a trivial program (`print(6 * 7)`), so its figure is the sandbox's fixed cost
per call: the supervisor process, the fork, a fresh `python -I -S`, the network namespace and uid
drop when run as root, the sweep, and removing the temporary folder. Calls run one after another in
this process (a rollout would run several at once). The calculator parses and evaluates
`(12 + 30) * 3 / 4 - 2^10` with the reward package's bounded parser; no process is started.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from npu_rl.agent_tools import CalculatorTool, CodeInterpreterTool, SandboxLimits


def rate(call, n: int) -> tuple[float, float]:
    """(calls per second, mean seconds per call) of n sequential calls after one warm-up call."""
    call()
    start = time.perf_counter()
    for _ in range(n):
        call()
    elapsed = time.perf_counter() - start
    return n / elapsed, elapsed / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interpreter-calls", type=int, default=50)
    parser.add_argument("--calculator-calls", type=int, default=5000)
    args = parser.parse_args()

    interpreter = CodeInterpreterTool(SandboxLimits())
    calculator = CalculatorTool(CalculatorTool.config_class())
    probe = interpreter.execute({"code": "print(6 * 7)"})
    assert probe.text == "42\n", probe.text
    isolation = "root: uid drop + network namespace" if os.geteuid() == 0 else "same uid, Python-level socket block"
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {isolation}")
    print(f"{'tool':<18}{'calls':>8}{'calls/s':>12}{'ms/call':>10}")
    for name, call, n in (
        ("code_interpreter", lambda: interpreter.execute({"code": "print(6 * 7)"}), args.interpreter_calls),
        ("calculator", lambda: calculator.execute({"expression": "(12 + 30) * 3 / 4 - 2^10"}), args.calculator_calls),
    ):
        per_s, mean = rate(call, n)
        print(f"{name:<18}{n:>8}{per_s:>12.1f}{mean * 1000:>10.3f}")


if __name__ == "__main__":
    main()
