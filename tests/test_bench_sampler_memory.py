"""bench/sampler_memory.py: the hf rollout's memory plan counts at least what its sampler holds at once,
for every sampling setting (measured in fresh processes, npu_rl.rollout.kv_budget.sampler_copies)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "sampler_memory.py"


CASES = ["T=1, no filter (verl's default)", "T=0.7 top_p top_k min_p penalty"]  # the bench runs all eight


@pytest.mark.slow  # three Python start-ups with torch and transformers (~15 s)
def test_the_plan_is_not_below_the_measured_peak():
    cmd = [sys.executable, str(SCRIPT), "--rows", "64", "--cases", *CASES]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = proc.stdout.splitlines()[3:]
    assert len(rows) == len(CASES) and "below" not in proc.stdout, proc.stdout
    for row in rows:
        measured, planned = (float(x) for x in row.split()[-2:])
        assert 1.5 < measured <= planned + 0.05, row  # a real peak (the logits' float copy and more), planned for
