"""Measured error of every recorded numerical comparison in tests/, on the default and the AVX2 kernels.

    .venv/bin/python bench/tolerances.py [pytest args, default: the files with numerical tolerances]

Runs pytest twice with NPU_RL_TOL_RECORD set (tests/_tolerances.py records each
`torch.testing.assert_close` and `assert_below`): once with this CPU's default kernels and once with
ATen, oneDNN and MKL limited to AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2), which runs the code paths an AVX2-only CI machine runs. It emulates
the kernels' arithmetic, not such a machine's speed. The ISA each library really used is printed
(MKL ignores the variable on AMD CPUs, where it never dispatches AVX-512 anyway).

Per call site it prints the worst absolute error, the worst error relative to the expected tensor's
largest magnitude ("scaled") and the worst share of the tolerance used (> 1 fails): tolerances are
set so that the larger of the two is well below 1 (the margin is 1 / used).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
DEFAULT_TESTS = [
    "tests/test_speed_paths.py",
    "tests/test_rollout_hf.py",
    "tests/test_core_algos.py",
    "tests/test_distributed.py",
    "tests/test_merge.py",
    "tests/test_trainer.py",
    "tests/test_checkpoint.py",
    "tests/test_vllm_rollout.py",
]
_PROBE = (
    "import torch; from npu_rl.kernels.onednn import linear;"
    "print('aten', torch.backends.cpu.get_cpu_capability());"
    "linear(torch.randn(4, 8), torch.randn(8, 8))"
)


def isa(env: dict[str, str]) -> str:
    """What ATen and oneDNN report using under `env` (oneDNN's own verbose line)."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**env, "ONEDNN_VERBOSE": "1"}, capture_output=True, text=True, check=True
    ).stdout
    aten = next(line.split()[1] for line in out.splitlines() if line.startswith("aten "))
    onednn = next((line.split("isa:")[1] for line in out.splitlines() if "isa:" in line), "?")
    return f"ATen {aten}, oneDNN {onednn}"


def run(mode: str, extra_env: dict[str, str], pytest_args: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **extra_env}
    env["NPU_RL_TOL_RECORD"] = str(out)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    print(f"== {mode}: {isa(env)}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args], env=env, cwd=ROOT
    )
    print(f"   pytest exit code {proc.returncode}", flush=True)
    worst: dict[str, dict] = defaultdict(lambda: {"abs": 0.0, "scaled": 0.0, "used": 0.0, "n": 0})
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            w = worst[r["site"]]
            w["n"] += 1
            w["tol"] = (r.get("atol"), r.get("rtol"))
            w["abs"] = max(w["abs"], r["abs"])
            w["scaled"] = max(w["scaled"], r["scaled"] or 0.0)
            if r["used"] >= w["used"]:
                w["used"], w["worst"] = r["used"], f"{r['test']}{' ' + r['name'] if r['name'] else ''}"
    return worst


def main() -> None:
    pytest_args = sys.argv[1:] or DEFAULT_TESTS
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "default": run("default kernels", {}, pytest_args, Path(tmp) / "default.jsonl"),
            "avx2": run("AVX2-emulated kernels", AVX2, pytest_args, Path(tmp) / "avx2.jsonl"),
        }
    sites = sorted(
        set(results["default"]) | set(results["avx2"]), key=lambda s: (s.split(":")[0], int(s.split(":")[1]))
    )
    print(
        f"\n{'call site':<24} {'n':>4} {'atol':>8} {'rtol':>8} | {'default abs':>11} {'scaled':>8} {'used':>7} |"
        f" {'AVX2 abs':>9} {'scaled':>8} {'used':>7} | margin  worst case (AVX2)"
    )
    for site in sites:
        d, a = results["default"].get(site, {}), results["avx2"].get(site, {})
        atol, rtol = (a or d).get("tol", (None, None))
        used = max(d.get("used", 0.0), a.get("used", 0.0))
        margin = f"{1 / used:6.1f}x" if used > 0 else "   inf"

        def cells(w: dict) -> str:
            if not w:
                return f"{'-':>11} {'-':>8} {'-':>7}"
            return f"{w['abs']:11.2e} {w['scaled']:8.1e} {w['used']:7.3f}"

        fmt = lambda x: f"{x:8.0e}" if isinstance(x, (int, float)) else f"{'-':>8}"  # noqa: E731
        print(
            f"{site:<24} {max(d.get('n', 0), a.get('n', 0)):>4} {fmt(atol)} {fmt(rtol)} | {cells(d)} | "
            f"{cells(a)} | {margin}  {a.get('worst', d.get('worst', ''))}"
        )


if __name__ == "__main__":
    main()
