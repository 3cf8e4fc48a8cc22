"""bench/gpu_check.sh cannot rot: its CPU dry run (tiny model) goes through every npu_rl phase:
assets, a torchrun FSDP2 training run with metrics, checkpoint merge, resume, offload, a LoRA step and a
gradient-checkpointed step, with and without activation offload."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_passes_every_phase(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "NPU_RL_DEVICE": "cpu"}
    cmd = ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--skip-trl", "--work", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[gpu_check]")]
    env = [line for line in lines if line.startswith("[gpu_check]     env: ")]  # the stack, as npu-rl-env prints it
    assert "npu_rl environment (cpu platform)" in env[0], env
    assert any(line.endswith("ok: the stack's requirements are met; the tested cpu combination") for line in env), env
    lines = [line for line in lines if line not in env]
    phases = [line.split(":")[0].split()[-1] for line in lines]
    expected = ["assets", "npu_rl", "npu_rl", "merge", "resume", "offload", "lora", "recompute", "actoffload", "done"]
    assert phases == expected, lines
    assert "throughput" in lines[2] and "update_actor=" in lines[1]
    assert "ran step 4" in lines[4]
    # the comparisons compare real updates: the dry run's reward varies between samples (bench/_reward.py)
    for line in lines[5:9]:
        found = re.search(r"grad_norm ([\d.e+-]+)(?: vs ([\d.e+-]+))?", line)
        assert found and all(float(n) > 0 for n in found.groups() if n is not None), line
