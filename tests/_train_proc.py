"""Tiny training runs as real processes (`python -m npu_rl.train`), for tests about kills, signals and locks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A reward that varies on a random model's output, so advantages and gradients are not zero.
REWARD_FILE = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    digits = sum(ch.isdigit() for ch in solution_str)
    return {"score": digits / max(1, len(solution_str)), "acc": False}
"""

# Metrics that measure time or memory: they differ between any two runs, so comparisons skip them.
UNSTABLE_PREFIXES = ("timing_s/", "timing_per_token_ms/", "perf/", "memory/")


def train_args(run_dir: Path, model_dir: Path, data: dict, *extra: str, steps: int = 4) -> list[str]:
    """Overrides for a 4-prompt, 3-sample tiny run logging to <run_dir>/logs and saving to <run_dir>/ckpt."""
    run_dir.mkdir(parents=True, exist_ok=True)
    reward = run_dir / "my_reward.py"
    if not reward.exists():
        reward.write_text(REWARD_FILE)
    return [
        f"model.path={model_dir}",
        f"data.train_files=[{data['train']}]",
        f"data.val_files=[{data['test']}]",
        "data.train_batch_size=4",
        "data.val_max_samples=4",
        "actor.ppo_mini_batch_size=2",
        "actor.ppo_micro_batch_size_per_device=3",
        "actor.optim.lr=1e-3",
        "rollout.n=3",
        "rollout.max_new_tokens=12",
        f"reward.custom_function.path={reward}",
        "reward.num_workers=0",
        "trainer.logger=[jsonl]",
        f"trainer.log_dir={run_dir / 'logs'}",
        f"trainer.default_local_dir={run_dir / 'ckpt'}",
        "trainer.test_freq=2",
        "trainer.save_freq=1",
        "trainer.num_threads=1",
        f"trainer.total_training_steps={steps}",
        *extra,
    ]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}


def train(args: list[str], timeout: float = 600, code: str | None = None) -> subprocess.CompletedProcess:
    """Run a training process to its end (`code`: a script run instead of the module, args in sys.argv)."""
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "npu_rl.train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(), cwd=ROOT)


def start(args: list[str], log: Path) -> subprocess.Popen:
    """Start a training process in the background, its output into `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "npu_rl.train", *args], stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=ROOT
        )


def wait_for(predicate, timeout: float = 300, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended with {proc.returncode} before the condition held")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "logs" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stable(rows: list[dict]) -> list[dict]:
    """Rows without the time and memory metrics, for comparing two runs."""
    return [{k: v for k, v in r.items() if not k.startswith(UNSTABLE_PREFIXES)} for r in rows]


def final_weights(run_dir: Path, step: int, role: str = "actor") -> dict:
    """The model tensors of checkpoint `step` (`role`: actor or critic), read with npu_rl's own (safe) loader."""
    import torch

    from npu_rl.checkpoint import dcp_load
    from npu_rl.safe_load import SafeFileSystemReader

    path = run_dir / "ckpt" / f"global_step_{step}" / role / "model"
    meta = SafeFileSystemReader(path).read_metadata()
    tensors = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in meta.state_dict_metadata.items()}
    dcp_load(tensors, path)
    return tensors
