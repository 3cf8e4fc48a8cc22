"""Record how much of each numerical tolerance the tests use, so tolerances are set from measurements.

With NPU_RL_TOL_RECORD=<file.jsonl> set, every `torch.testing.assert_close` (in the pytest process and
in spawned `_dist_utils` workers) and every `assert_below` appends one JSON line before it checks:
the test id, the calling line, the worst absolute error, the worst error relative to the expected
tensor's largest magnitude, and `used` = max |actual - expected| / (atol + rtol * |expected|), the share
of the tolerance consumed (> 1 fails). bench/tolerances.py runs the tests under the default and the
AVX2-emulated kernels and prints these per call site. Without the variable nothing is recorded.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch

ENV = "NPU_RL_TOL_RECORD"
_DEFAULT_TOL = {torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7), torch.bfloat16: (1.6e-2, 1e-5)}


def _site() -> str:
    """`file:line` of the test code that asked for the comparison (first frame outside this module)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def _write(entry: dict[str, Any]) -> None:
    entry["test"] = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
    with open(os.environ[ENV], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def _measure(actual: Any, expected: Any, rtol: float | None, atol: float | None, msg: Any) -> None:
    try:
        actual, expected = (x.full_tensor() if hasattr(x, "full_tensor") else x for x in (actual, expected))  # DTensor
        a, e = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
        if rtol is None or atol is None:
            rtol, atol = _DEFAULT_TOL.get(torch.promote_types(a.dtype, e.dtype), (0.0, 0.0))
        a, e = a.double(), e.double()
    except (TypeError, ValueError, RuntimeError):
        return  # not numeric (strings, nested structures): nothing to measure
    if a.shape != e.shape or a.numel() == 0:
        return
    diff = (a - e).abs()
    scale = float(e.abs().max())
    _write(
        {
            "site": _site(),
            "name": msg if isinstance(msg, str) else None,
            "abs": float(diff.max()),
            "scaled": float(diff.max()) / scale if scale > 0 else 0.0,
            "used": _used(diff, e, atol, rtol),
            "atol": atol,
            "rtol": rtol,
        }
    )


def _used(diff: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> float:
    """Worst share of the allowed error consumed by one element (inf where the allowance is 0 and the error not)."""
    allowed = atol + rtol * expected.abs()
    share = torch.where(allowed > 0, diff / allowed.clamp_min(1e-300), (diff > 0).double() * float("inf"))
    return float(share.max())


def assert_below(value: float, limit: float, what: str) -> None:
    """`value < limit` for an error measure (e.g. a max logprob difference), recorded like assert_close."""
    value = float(value)
    if os.environ.get(ENV):
        _write({"site": _site(), "name": what, "abs": value, "scaled": None, "used": value / limit, "atol": limit})
    assert value < limit, f"{what} = {value:.3g}, limit {limit:.3g}"


def install() -> None:
    """Wrap `torch.testing.assert_close` to record each comparison (only when NPU_RL_TOL_RECORD is set)."""
    if not os.environ.get(ENV) or getattr(torch.testing.assert_close, "_records", False):
        return
    original = torch.testing.assert_close

    def assert_close(actual: Any, expected: Any, *args: Any, **kwargs: Any) -> None:
        _measure(actual, expected, kwargs.get("rtol"), kwargs.get("atol"), kwargs.get("msg"))
        original(actual, expected, *args, **kwargs)

    assert_close._records = True  # type: ignore[attr-defined]
    torch.testing.assert_close = assert_close
