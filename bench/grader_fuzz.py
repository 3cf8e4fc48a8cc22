"""Worst-case seconds per `compute_score` call on adversarial numerals and nesting, in-process.

    PYTHONPATH=. python bench/grader_fuzz.py --examples 2000

Grades the fixed huge-numeral family and `--examples` inputs drawn (derandomized, so every run
draws the same ones) from the hypothesis strategies of tests/reward_cases/numerals.py: digit
strings, scientific notation with enormous exponents, power towers, factorial chains, nested
fractions, roots, brackets and boxes, scale words, in every answer convention. Each input is
graded in default and strict mode against several truths, in this thread with no worker process
(reward.num_workers=0), after a warm-up call. Prints the slowest calls and the share of calls
over the 0.5 s bound that tests/test_reward_bounds.py asserts. Timings need a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "reward_cases")]

import numerals  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from reward import compute_score  # noqa: E402

BOUND_S = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="generated inputs (default 2000)")
    parser.add_argument("--top", type=int, default=5, help="slowest calls to list")
    args = parser.parse_args()
    compute_score("lighteval/MATH", r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt2}")  # imports, mpmath
    timings: list[tuple[float, str, str, bool]] = []

    def grade(response: str, truth: str) -> None:
        for strict in (False, True):
            start = time.perf_counter()
            result = compute_score("lighteval/MATH", response, truth, strict=strict, timeout_s=5.0)
            timings.append((time.perf_counter() - start, response, truth, strict))
            if result["timeout"] or result["error"]:
                print(f"timeout/error: {response[:100]!r} vs {truth!r}", file=sys.stderr)

    for response in numerals.HUGE:
        for truth in numerals.TRUTHS:
            grade(response, truth)

    @settings(
        max_examples=args.examples, derandomize=True, deadline=None, database=None,
        phases=[Phase.generate], suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(response=numerals.responses, truth=numerals.truths)
    def fuzz(response: str, truth: str) -> None:
        grade(response, truth)

    start = time.perf_counter()
    fuzz()
    elapsed = time.perf_counter() - start
    timings.sort(key=lambda t: t[0], reverse=True)
    over = sum(t[0] > BOUND_S for t in timings)
    print(f"{len(timings)} calls ({len(numerals.HUGE)} fixed huge numerals x {len(numerals.TRUTHS)} truths, "
          f"{args.examples} generated inputs; default and strict mode) in {elapsed:.1f} s of fuzzing")  # fmt: skip
    print(f"worst case {timings[0][0]:.4f} s per call; median {timings[len(timings) // 2][0] * 1000:.2f} ms; "
          f"{over} calls over {BOUND_S} s")  # fmt: skip
    for seconds, response, truth, strict in timings[: args.top]:
        shown = response if len(response) <= 90 else response[:60] + f"... ({len(response)} chars)"
        print(f"  {seconds:.4f} s  strict={strict!s:5}  truth={truth!r:14} {shown!r}")


if __name__ == "__main__":
    main()
