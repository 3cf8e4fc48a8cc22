"""Profiler traces of chosen training steps (`trainer.profile_steps`, verl's `global_profiler.steps`).

The torch profiler records each listed step on every rank, from rollout to weight sync, and writes
one trace per step and rank to `trainer.profile_dir`: `step_<N>.rank<R>.json`, a Chrome trace
(chrome://tracing, Perfetto, TensorBoard's profile plugin) with CPU operators and, on CUDA, kernels.
The step's sections (gen, old_log_prob, ref, adv, update_actor, update_weights, ...) show as
`npu_rl/<section>` ranges (npu_rl.metrics.Timer), so the trace says where a step's time goes down
to the operator. On Ascend torch_npu's profiler records NPU activity too and writes its own folder
layout under `step_<N>.rank<R>/` for MindStudio Insight (untested here: no NPU). Steps not listed
run without a profiler.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


class StepProfiler:
    """Wraps a training step in a profiler when the step is listed (one object per trainer)."""

    def __init__(self, steps: list[int], out_dir: str | Path, rank: int, device_type: str) -> None:
        self.steps = set(steps)
        self.out_dir = Path(out_dir)
        self.rank = rank
        self.device_type = device_type

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        """Profile `step` (1-based, as logged) if it is listed; otherwise just run it."""
        if step not in self.steps:
            yield
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = f"step_{step}.rank{self.rank}"
        if self.device_type == "npu":  # pragma: no cover - needs Ascend and torch_npu
            with _npu_profiler(self.out_dir / name):
                yield
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device_type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            yield
        prof.export_chrome_trace(str(self.out_dir / f"{name}.json"))
        print(f"[npu_rl] profile of step {step} (rank {self.rank}): {self.out_dir / name}.json", flush=True)


def _npu_profiler(folder: Path):  # pragma: no cover - needs Ascend and torch_npu
    import torch_npu

    npu_prof = torch_npu.profiler
    return npu_prof.profile(
        activities=[npu_prof.ProfilerActivity.CPU, npu_prof.ProfilerActivity.NPU],
        on_trace_ready=npu_prof.tensorboard_trace_handler(str(folder)),
    )
