"""Step metrics with verl's names, reduced across ranks so every logged number is global."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from npu_rl import distributed


class Timer:
    """Wall-clock sections of a step, reported as timing_s/<name>.

    `sync` (the device layer's synchronize) runs before each reading so asynchronous device work
    is charged to the section that queued it.
    """

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.times: dict[str, float] = defaultdict(float)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.times[name] += time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """The slowest rank's time for each section: that is what the step waits for."""
        names = sorted(self.times)
        values = distributed.all_reduce(torch.tensor([self.times[n] for n in names], dtype=torch.float64), op="max")
        return {f"timing_s/{n}": float(v) for n, v in zip(names, values, strict=True)}


def summarize(prefix: str, values: torch.Tensor) -> dict[str, float]:
    """Global mean / max / min of a 1-D tensor whose rows are split across ranks."""
    values = values.double().flatten()
    sums = distributed.all_reduce(torch.tensor([values.sum().item(), float(values.numel())]), op="sum")
    big = torch.finfo(torch.float64).max
    hi = distributed.all_reduce(torch.tensor(values.max().item() if values.numel() else -big), op="max")
    lo = distributed.all_reduce(torch.tensor(values.min().item() if values.numel() else big), op="min")
    return {
        f"{prefix}/mean": float(sums[0] / sums[1].clamp(min=1)),
        f"{prefix}/max": float(hi),
        f"{prefix}/min": float(lo),
    }


def global_sum(value: float) -> float:
    return float(distributed.all_reduce(torch.tensor(float(value), dtype=torch.float64), op="sum"))


def data_metrics(
    scores: torch.Tensor,
    rewards: torch.Tensor,
    advantages: torch.Tensor,
    response_lengths: torch.Tensor,
    prompt_lengths: torch.Tensor,
    max_new_tokens: int,
    components: dict[str, list[float]],
) -> dict[str, float]:
    """Reward, advantage and length statistics of one step's samples (one value per sequence)."""
    metrics = {
        **summarize("critic/score", scores),
        **summarize("critic/rewards", rewards),
        **summarize("critic/advantages", advantages),
        **summarize("response_length", response_lengths.float()),
        **summarize("prompt_length", prompt_lengths.float()),
    }
    clipped = global_sum((response_lengths >= max_new_tokens).sum().item())
    metrics["response_length/clip_ratio"] = clipped / max(1.0, global_sum(response_lengths.numel()))
    for name, values in sorted(components.items()):
        metrics[f"reward/{name}/mean"] = global_sum(sum(values)) / max(1.0, global_sum(len(values)))
    return metrics


def perf_metrics(
    num_tokens: int,
    step_time: float,
    update_time: float,
    num_params: int,
    ppo_epochs: int,
    world_size: int,
    peak_flops: float | None,
) -> dict[str, float]:
    """Throughput per device, and MFU of the actor update where the device's peak is known.

    Training FLOPs are estimated as 6 x parameters x tokens per epoch (forward + backward), the
    usual dense-transformer approximation; attention's quadratic term is left out, so MFU is a
    slight underestimate at long context.
    """
    total_tokens = global_sum(num_tokens)
    metrics = {
        "perf/total_num_tokens": total_tokens,
        "perf/time_per_step": step_time,
        "perf/throughput": total_tokens / max(step_time, 1e-9) / world_size,
    }
    if peak_flops:
        flops = 6.0 * num_params * total_tokens * ppo_epochs
        metrics["perf/mfu/actor"] = flops / max(update_time, 1e-9) / (peak_flops * world_size)
    return metrics
