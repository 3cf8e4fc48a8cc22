"""Size bounds and the cooperative time budget that keep grading of untrusted text cheap.

Model output is adversarial input: a policy under RL pressure will find any string that makes the
grader slow or crash. Every stage therefore works on bounded input (these constants), and the
expensive stages poll a per-thread deadline so that even the in-process path (no worker pool,
any thread, no SIGALRM) gives up on time. Hard preemption is the worker pool's job (reward.pool).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

MAX_RESPONSE_CHARS = 32_000  # only the tail of a longer response is searched for the answer
MAX_ANSWER_CHARS = 600  # an extracted answer longer than this is not graded (counts incorrect)
MAX_TOKENS = 400  # tokens of one answer fed to the parser
MAX_DEPTH = 40  # parser nesting depth (brackets, fractions, exponents)
MAX_INT_DIGITS = 200  # digits of one integer literal
MAX_FRACTION_DIGITS = 30  # digits after the decimal point of one literal
MAX_EXPONENT = 2_000  # |integer exponent| evaluated exactly
MAX_RESULT_BITS = 20_000  # bit size of an exact power / factorial result
MAX_FACTORIAL = 300
MAX_LIST_ITEMS = 64  # elements of a tuple / set / matrix
MAX_PLUS_MINUS = 2  # \pm occurrences expanded into alternatives (2**2 values)


class GradeTimeout(Exception):
    """The item's wall-clock budget ran out; it is graded incorrect and counted as a timeout."""


class Unsupported(Exception):
    """Input outside the safe grammar or its bounds; the comparison falls back to string equality."""


_local = threading.local()


@contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Set this thread's grading deadline for the duration of the block (None: no deadline)."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = None if seconds is None else time.monotonic() + seconds
    try:
        yield
    finally:
        _local.deadline = previous


def check_deadline() -> None:
    """Raise GradeTimeout once this thread's deadline has passed; cheap enough for inner loops."""
    deadline = getattr(_local, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise GradeTimeout("grading budget exhausted")


def call_bounded(fn: Callable[[], Any], timeout_s: float) -> Any:
    """Call user code in-process: preempted by SIGALRM in the main thread, else timed afterwards
    (GradeTimeout either way once `timeout_s` is over).

    Only the worker pool (reward.pool) can stop user code in any thread; this is the best in-process
    effort (reward.num_workers=0, batched reward functions, simulated users' replies).
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        start = time.monotonic()
        result = fn()
        if time.monotonic() - start > timeout_s:
            raise GradeTimeout(f"user code over its {timeout_s} s budget")
        return result

    def _alarm(signum: int, frame: Any) -> None:
        raise GradeTimeout(f"user code over its {timeout_s} s budget")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
