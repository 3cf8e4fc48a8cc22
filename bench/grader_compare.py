"""Grade our labelled case sets with npu_rl's reward (default and strict mode) and with math-verify.

Setup (once, from the repository root; math-verify lives in its own venv, torch is not needed):

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install "math-verify==0.9.0" pyyaml
    .venv-bench/bin/python bench/grader_compare.py            # add --show-errors to list misgraded cases

Two sets are graded and reported apart: the labelled set (tests/reward_cases/cases.yaml, which
the grader's rules were written against) and the held-out set (tests/reward_cases/heldout.yaml,
written before the issue-14 changes and never used for tuning). `--set` picks one.

The script imports `reward` straight from this checkout (it needs only sympy, which math-verify
brings). Both graders run in this process, one case at a time, in the main thread (so math-verify
can use its SIGALRM timeouts), after one warm-up call each; math-verify is used as its README
shows: parse the gold answer and the whole response, then verify. Multiple-choice cases give
math-verify its string extraction as well. A case counts as a timeout for math-verify when it
logs one of its timeout warnings, for ours when the item ran out of its budget. Skipped: strict-mode
cases (labelled for strict extraction; math-verify has no such mode) and cases whose label depends
on extra_info (the truncation flag, which math-verify does not take). "npu_rl strict" grades the
same labels with `strict=True` (only the requested form counts), so its misses are the correct
answers stated in another form. The last line measures our production path: the persistent
process pool grading batches of 128 (default mode).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "reward_cases")]

from loader import CASES_FILE, Case, load_cases  # noqa: E402

from reward import compute_score, route  # noqa: E402
from reward.equivalence import answer_node, answers_equal  # noqa: E402

TIMEOUT_S = 5
# Not in the case set: a symbolic comparison that makes both graders import everything they use.
WARMUP = Case("warmup", "warmup", "lighteval/MATH", "so $\\boxed{\\frac{\\sqrt{2}}{2}}$", "\\frac{1}{\\sqrt{2}}", True)


class _TimeoutCounter(logging.Handler):
    """Counts math-verify's 'Timeout during parsing/comparison' warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "timeout" in record.getMessage().lower():
            self.count += 1


HELDOUT_FILE = CASES_FILE.with_name("heldout.yaml")


def make_ours(strict: bool) -> Callable[[Case], tuple[bool, bool]]:
    """Our grader with cold caches, so that a second run does not time cache hits."""
    answers_equal.cache_clear()
    answer_node.cache_clear()

    def grade(case: Case) -> tuple[bool, bool]:
        result = compute_score(case.data_source, case.response, case.ground_truth, case.extra_info, strict=strict)
        return bool(result["acc"]), bool(result["timeout"])

    return grade


def make_math_verify() -> Callable[[Case], tuple[bool, bool]]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, StringExtractionConfig, parse, verify

    counter = _TimeoutCounter()
    for name in ("math_verify", "math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addHandler(counter)
    logging.getLogger("math_verify").setLevel(logging.WARNING)
    math_cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
    choice_cfg = [StringExtractionConfig(), LatexExtractionConfig()]

    def grade(case: Case) -> tuple[bool, bool]:
        before = counter.count
        cfg = choice_cfg if route(case.data_source)[0] == "choice" else math_cfg
        gold = parse(f"${case.ground_truth}$", extraction_config=cfg, parsing_timeout=TIMEOUT_S)
        pred = parse(case.response, extraction_config=cfg, parsing_timeout=TIMEOUT_S)
        ok = bool(verify(gold, pred, timeout_seconds=TIMEOUT_S))
        return ok, counter.count > before

    return grade


def run(name: str, grade: Callable[[Case], tuple[bool, bool]], cases: list[Case], show: bool) -> None:
    grade(WARMUP)  # imports (sympy, regexes) happen outside the timed loop
    tp = tn = fp = fn = timeouts = 0
    wrong: list[str] = []
    start = time.perf_counter()
    for case in cases:
        ok, timed_out = grade(case)
        timeouts += timed_out
        if ok and case.label:
            tp += 1
        elif not ok and not case.label:
            tn += 1
        else:
            fp += ok
            fn += not ok
            wrong.append(
                f"    {'FP' if ok else 'FN'} {case.id:22s} gt={case.ground_truth!r:28.28} {case.response[-70:]!r}"
            )
    elapsed = time.perf_counter() - start
    print(
        f"{name:15s} accuracy {100 * (tp + tn) / len(cases):6.2f}%  false positives {fp:3d}  "
        f"false negatives {fn:3d}  timeouts {timeouts:2d}  {len(cases) / elapsed:9.1f} cases/s"
    )
    if show:
        print("\n".join(wrong))


def run_pool(cases: list[Case]) -> None:
    from reward.pool import GradingPool
    from reward.scoring import ScorerSpec

    pool = GradingPool(ScorerSpec(timeout_s=TIMEOUT_S), num_workers=2)
    args = [(c.data_source, c.response, c.ground_truth, c.extra_info) for c in cases]
    batches = [args[i : i + 128] for i in range(0, len(args), 128)]
    pool.map(batches[0])  # waits for the workers to start
    start = time.perf_counter()
    results = [r for batch in batches for r in pool.map(batch)]
    elapsed = time.perf_counter() - start
    pool.close()
    correct = sum(bool(r["acc"]) == c.label for r, c in zip(results, cases, strict=True))
    print(
        f"{'npu_rl, pool':15s} accuracy {100 * correct / len(cases):6.2f}%  (2 worker processes, batches of 128: "
        f"{1000 * elapsed / len(cases):.2f} ms per item, {len(cases) / elapsed:.1f} cases/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show-errors", action="store_true", help="list every misgraded case")
    parser.add_argument("--set", choices=["labelled", "heldout", "both"], default="both")
    args = parser.parse_args()
    try:
        mv = make_math_verify()
    except ImportError:
        mv = None
        print("math-verify is not installed here; see the setup lines at the top of this script")
    sets = {"labelled": CASES_FILE, "heldout": HELDOUT_FILE}
    for name, path in sets.items():
        if args.set not in (name, "both"):
            continue
        cases = [c for c in load_cases(path) if c.mode == "lenient" and not c.extra_info]
        pos = sum(c.label for c in cases)
        print(f"\n{name} set, {path.name}: {len(cases)} cases ({pos} correct answers, {len(cases) - pos} incorrect)")
        run("npu_rl", make_ours(strict=False), cases, args.show_errors)
        run("npu_rl strict", make_ours(strict=True), cases, args.show_errors)
        if mv is not None:
            run("math-verify", mv, cases, args.show_errors)
        if name == "labelled":
            run_pool(cases)


if __name__ == "__main__":
    main()
