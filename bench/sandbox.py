"""Tool sandbox overhead: calls per second of the Python interpreter tool and the calculator.

    .venv/bin/python bench/sandbox.py [--calls 50] [--threads 1,4] [--turn-rows 64]

Each interpreter call starts a fresh sandboxed process (namespaces or the audit-hook fallback, see
npu_rl/agent_tools/sandbox.py) that runs `print(6 * 7)`; the figure is its whole per-call cost
(temporary directory, fork/exec, namespace setup, interpreter start, teardown). `--threads` runs
that many calls at once, as a rollout executing a batch's tool calls concurrently would. The
calculator never starts a process and is shown for contrast. `--turn-rows R` then times one tool
round of the multi-turn rollout (npu_rl.rollout.multi_turn) for R rows that each call the interpreter
once, with `max_concurrent_calls=1` (one call after another) and at its default (the cores this
process may use), interleaved, and prints the ratio. Run it on a quiet machine: it prints the CPU
model beside the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from _machine import cpu_model

from npu_rl.agent_tools import CalculatorTool, PythonTool, available_isolation, run_python
from npu_rl.agent_tools.chat_template import with_tool_template
from npu_rl.rollout import SamplingParams
from npu_rl.rollout.base import RolloutOutput, grouped
from npu_rl.rollout.multi_turn import MultiTurnRollout
from npu_rl.tools.make_tiny_model import build_tokenizer

CALL = '<tool_call>{"name": "code_interpreter", "arguments": {"code": "print(6 * 7)"}}</tool_call>'


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


class OneCallPolicy:
    """Stands in for the model: a row's first turn is CALL, its second "done" (no decoding cost, so
    the timing is the tool round alone plus the rollout's own bookkeeping)."""

    def __init__(self, tokenizer) -> None:
        self.eos = tokenizer.eos_token_id
        self.turns = [tokenizer(t, add_special_tokens=False)["input_ids"] + [self.eos] for t in (CALL, "done")]
        self.tokenizer = tokenizer

    def generate(self, prompts, params, seeds=None) -> RolloutOutput:
        picked = [self.turns[min(self.tokenizer.decode(p).count("<tool_response>"), 1)] for p in prompts]
        width = max(len(t) for t in picked)
        ids = torch.full((len(picked), width), self.eos)
        for i, t in enumerate(picked):
            ids[i, : len(t)] = torch.tensor(t)
        lengths = torch.tensor([len(t) for t in picked])
        return RolloutOutput(ids, torch.zeros(ids.shape), lengths, ["stop"] * len(picked), *grouped(1, len(picked)))


def tool_round_seconds(rows: int, rounds: int = 3) -> dict[str, float]:
    """Median seconds of one rollout (one tool round) of `rows` rows, sequential vs concurrent calls."""
    tokenizer = with_tool_template(build_tokenizer(0))
    prompt = tokenizer("What is 6 * 7?", add_special_tokens=False)["input_ids"]
    tools = {"code_interpreter": PythonTool({"timeout_s": 5})}
    variants = {"sequential": 1, f"concurrent ({len(os.sched_getaffinity(0))} cores)": 0}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, workers in variants.items():
            rollout = MultiTurnRollout(OneCallPolicy(tokenizer), tokenizer, tools, tokenizer.pad_token_id,
                                       max_concurrent_calls=workers)  # fmt: skip
            start = time.perf_counter()
            rollout.generate([prompt] * rows, SamplingParams(max_new_tokens=256), seeds=list(range(rows)))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--threads", default="1,4", help="comma-separated concurrency levels")
    p.add_argument("--turn-rows", type=int, default=0, help="also time a rollout's tool round of this many rows")
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
    if args.turn_rows:
        seconds = tool_round_seconds(args.turn_rows)
        print(f"\nmulti-turn rollout, one tool round of {args.turn_rows} rows (median of 3, interleaved):")
        for name, value in seconds.items():
            print(f"  {name}: {value:.2f} s")
        first, second = seconds.values()
        print(f"  concurrent / sequential: {second / first:.2f}")


if __name__ == "__main__":
    main()
