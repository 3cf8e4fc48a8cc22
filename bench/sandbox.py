"""Tool sandbox overhead: calls per second of the Python interpreter tool and the calculator.

    .venv/bin/python bench/sandbox.py [--calls 50] [--threads 1,4]

Each interpreter call starts a fresh sandboxed process (namespaces or the audit-hook fallback, see
npu_rl/agent_tools/sandbox.py) that runs `print(6 * 7)`; the figure is its whole per-call cost
(temporary directory, fork/exec, namespace setup, interpreter start, teardown). `--threads` runs
that many calls at once, as a rollout executing a batch's tool calls concurrently would. The
calculator never starts a process and is shown for contrast. Run it on a quiet machine: it prints
the CPU model beside the figures.
"""

from __future__ import annotations

import argparse
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from npu_rl.agent_tools import CalculatorTool, available_isolation, run_python


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def python_calls_per_s(calls: int, threads: int, isolation: str) -> float:
    def one(_: int) -> None:
        result = run_python("print(6 * 7)", isolation=isolation)
        if result.stdout.strip() != "42":
            raise RuntimeError(f"sandbox run failed: {result}")

    one(0)  # warm the page cache
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(calls)))
    return calls / (time.perf_counter() - start)


def calculator_calls_per_s(calls: int) -> float:
    tool = CalculatorTool()
    start = time.perf_counter()
    for _ in range(calls):
        tool.execute({"expression": "(12 + 7) * 3 / 4"})
    return calls / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--threads", default="1,4", help="comma-separated concurrency levels")
    args = p.parse_args()
    print(f"CPU: {cpu_model()}; best isolation here: {available_isolation()}")
    modes = ["audit"] + (["namespaces"] if available_isolation() == "namespaces" else [])
    print("| tool | isolation | concurrent calls | calls/s | ms/call |")
    print("|---|---|---|---|---|")
    for mode in modes:
        for threads in (int(t) for t in args.threads.split(",")):
            rate = python_calls_per_s(args.calls, threads, mode)
            print(f"| code_interpreter | {mode} | {threads} | {rate:.1f} | {1000 * threads / rate:.1f} |")
    rate = calculator_calls_per_s(args.calls * 20)
    print(f"| calculator | none (no process) | 1 | {rate:.0f} | {1000 / rate:.3f} |")


if __name__ == "__main__":
    main()
