"""Step metrics with verl's names, reduced across ranks in one collective per step.

Every rank records its local numbers in a `StepStats` (sums, maxima, minima, ratios of sums);
`StepStats.reduce` gathers every rank's entries once and reduces them locally. So a step costs one
metrics collective however many metrics it logs. Metrics that are not sums, maxima or ratios of
sums (a variance over every rank's tokens, a time per token of the whole step) are derived after
the reduction from private `_`-prefixed sums, by functions the recorder registers (`derive`).
"""

from __future__ import annotations

import math
import operator
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from npu_rl import distributed

_COMBINE = {"sum": operator.add, "max": max, "min": min}
Derive = Callable[[dict[str, float]], dict[str, float]]


def _combine(entries: dict[tuple[str, str], float], key: tuple[str, str], value: float) -> None:
    """Fold `value` into `entries[key]` with the key's operation (sum, max or min)."""
    entries[key] = _COMBINE[key[1]](entries[key], value) if key in entries else value


class StepStats:
    """Local statistics of one step, named as they will be logged, reduced in one collective."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], float] = {}  # (name, op) -> local value
        self._derived: list[Derive] = []

    def derive(self, fn: Derive) -> None:
        """Run `fn(reduced metrics)` after the reduction and add what it returns (once, however often
        registered); it pops the private entries it read."""
        if fn not in self._derived:
            self._derived.append(fn)

    def _put(self, name: str, op: str, value: float) -> None:
        _combine(self._entries, (name, op), float(value))

    def add_sum(self, name: str, value: float) -> None:
        """Logged as the sum over ranks (and over repeated calls)."""
        self._put(name, "sum", value)

    def add_max(self, name: str, value: float) -> None:
        """Logged as the largest value of any rank (timings: what the step waits for; values that
        every rank holds identically, such as the learning rate or a global gradient norm)."""
        self._put(name, "max", value)

    def add_min(self, name: str, value: float) -> None:
        self._put(name, "min", value)

    def add_ratio(self, name: str, numerator: float, denominator: float) -> None:
        """Logged as (sum of numerators) / (sum of denominators) over ranks; 0 when nothing was counted."""
        self._put(f"{name}\0num", "sum", numerator)
        self._put(f"{name}\0den", "sum", denominator)

    def add_all(self, prefix: str, stats: dict[str, float | tuple[float, float]]) -> None:
        """`<prefix>/<name>` for each entry: a (sum, count) pair as a ratio over ranks, a number as the
        largest on any rank (maxima, or values every rank holds alike)."""
        for name, value in stats.items():
            if isinstance(value, tuple):
                self.add_ratio(f"{prefix}/{name}", *value)
            else:
                self.add_max(f"{prefix}/{name}", value)

    def add_values(self, prefix: str, values: torch.Tensor) -> None:
        """`<prefix>/mean`, `/max`, `/min` of a 1-D tensor whose entries are split across ranks."""
        values = values.double().flatten()
        self.add_ratio(f"{prefix}/mean", values.sum().item(), values.numel())
        big = torch.finfo(torch.float64).max
        self.add_max(f"{prefix}/max", values.max().item() if values.numel() else -big)
        self.add_min(f"{prefix}/min", values.min().item() if values.numel() else big)

    def reduce(self) -> dict[str, float]:
        """Every metric reduced over ranks, in one collective (a gather of each rank's entries)."""
        merged: dict[tuple[str, str], float] = {}
        for entries in distributed.all_gather_object(self._entries):
            for key, value in entries.items():  # type: ignore[union-attr]
                _combine(merged, key, value)
        out: dict[str, float] = {}
        for (name, _op), value in sorted(merged.items()):
            if name.endswith("\0num"):
                base = name[: -len("\0num")]
                den = merged.get((f"{base}\0den", "sum"), 0.0)
                out[base] = value / den if den else 0.0
            elif not name.endswith("\0den"):
                out[name] = value
        for fn in self._derived:
            out.update(fn(out))
        return out


class Timer:
    """Wall-clock sections of a step, recorded as timing_s/<name> (the slowest rank's time).

    `sync` (the device layer's synchronize) runs before each reading so asynchronous device work
    is charged to the section that queued it.
    """

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.times: dict[str, float] = defaultdict(float)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time the block; under a profiler (npu_rl.profiling) it is also the range `npu_rl/<name>`."""
        self.sync()
        start = time.perf_counter()
        try:
            with torch.profiler.record_function(f"npu_rl/{name}"):
                yield
        finally:
            self.sync()
            self.times[name] += time.perf_counter() - start

    def record(self, stats: StepStats) -> None:
        for name, seconds in self.times.items():
            stats.add_max(f"timing_s/{name}", seconds)


_RESPONSE_TOKENS, _ALL_TOKENS = "_tokens/response", "_tokens/all"
# verl's compute_timing_metrics: generation per response token, these sections per token of the batch
_PER_BATCH_TOKEN = ("ref", "values", "adv", "update_critic", "update_actor")


def record_data(
    stats: StepStats,
    scores: torch.Tensor,
    rewards: torch.Tensor,
    response_lengths: torch.Tensor,
    prompt_lengths: torch.Tensor,
    max_new_tokens: int,
    max_prompt_length: int,
    components: dict[str, list[float]],
) -> None:
    """Reward and length statistics of one step's samples (one value per sequence), and verl's
    timing_per_token_ms/* once the step's timings and token count are reduced (`timing_per_token`).
    A clip ratio is the share of rows at the limit, as verl counts it (prompts are never longer)."""
    stats.add_values("critic/score", scores)
    stats.add_values("critic/rewards", rewards)
    stats.add_values("response_length", response_lengths.float())
    stats.add_values("prompt_length", prompt_lengths.float())
    rows = response_lengths.numel()
    stats.add_ratio("response_length/clip_ratio", float((response_lengths >= max_new_tokens).sum()), rows)
    stats.add_ratio("prompt_length/clip_ratio", float((prompt_lengths >= max_prompt_length).sum()), rows)
    responses = float(response_lengths.sum())
    stats.add_sum(_RESPONSE_TOKENS, responses)
    stats.add_sum(_ALL_TOKENS, responses + float(prompt_lengths.sum()))
    stats.derive(timing_per_token)
    for name, values in sorted(components.items()):
        applied = [v for v in values if not math.isnan(v)]  # NaN: the term did not apply to that row (TRL's None)
        stats.add_ratio(f"reward/{name}/mean", sum(applied), len(applied))


def timing_per_token(metrics: dict[str, float]) -> dict[str, float]:
    """verl's timing_per_token_ms/<section>: the section's time (the slowest rank's) in milliseconds per
    token of the whole step's rows, response tokens for `gen`, prompt and response tokens for the others;
    sections that did not run are left out. Pops the token counts `record_data` left."""
    tokens = {"gen": metrics.pop(_RESPONSE_TOKENS), **dict.fromkeys(_PER_BATCH_TOKEN, metrics.pop(_ALL_TOKENS))}
    return {
        f"timing_per_token_ms/{name}": metrics[f"timing_s/{name}"] * 1000 / count
        for name, count in tokens.items()
        if f"timing_s/{name}" in metrics and count
    }


def record_advantages(
    stats: StepStats, advantages: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor
) -> None:
    """critic/advantages/* and critic/returns/* over the valid response tokens of every rank (verl's
    compute_data_metrics: a long response weighs by its tokens; for GRPO the returns are the advantages)."""
    valid = response_mask.bool()
    stats.add_values("critic/advantages", advantages[valid])
    stats.add_values("critic/returns", returns[valid])


_EXPLAINED = "_explained_variance/"


def record_critic(stats: StepStats, values: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor) -> None:
    """critic/values/* over the valid tokens (the values the advantages were estimated from), and the sums
    `explained_variance` derives critic/vf_explained_var from."""
    valid = response_mask.bool()
    values, returns = values[valid].double(), returns[valid].double()
    stats.add_values("critic/values", values)
    diff = returns - values
    sums = {"n": returns.numel(), "r": returns.sum(), "rr": (returns**2).sum(), "d": diff.sum(), "dd": (diff**2).sum()}
    for name, total in sums.items():
        stats.add_sum(_EXPLAINED + name, float(total))
    stats.derive(explained_variance)


def explained_variance(metrics: dict[str, float]) -> dict[str, float]:
    """verl's critic/vf_explained_var, 1 - Var(returns - values) / (Var(returns) + 1e-5), with unbiased
    variances over the valid tokens of all ranks (NaN below two tokens, as torch.var gives verl). Pops
    the sums `record_critic` left."""
    n, r, rr, d, dd = (metrics.pop(_EXPLAINED + name) for name in ("n", "r", "rr", "d", "dd"))
    if n < 2:
        return {"critic/vf_explained_var": math.nan}
    return {"critic/vf_explained_var": 1.0 - ((dd - d * d / n) / (n - 1)) / ((rr - r * r / n) / (n - 1) + 1e-5)}


def perf_metrics(
    metrics: dict[str, float], num_params: int, ppo_epochs: int, world_size: int, peak_flops: float | None
) -> dict[str, float]:
    """Throughput per device, and MFU of the actor update where the device's peak is known, from
    the reduced `perf/total_num_tokens` and step timings.

    Training FLOPs are estimated as 6 x parameters x tokens per epoch (forward + backward), the
    usual dense-transformer approximation; attention's quadratic term is left out, so MFU is a
    slight underestimate at long context.
    """
    total_tokens = metrics["perf/total_num_tokens"]
    step_time = metrics["timing_s/step"]
    out = {"perf/time_per_step": step_time, "perf/throughput": total_tokens / max(step_time, 1e-9) / world_size}
    if peak_flops:
        flops = 6.0 * num_params * total_tokens * ppo_epochs
        out["perf/mfu/actor"] = flops / max(metrics["timing_s/update_actor"], 1e-9) / (peak_flops * world_size)
    return out


_PROXY_ROWS = "_variance_proxy/rows"


def record_variance_proxies(stats: StepStats, rows: dict[str, torch.Tensor]) -> None:
    """verl's variance_proxy/* row averages over every rank's rows (npu_rl.algos.token_baselines.
    variance_proxy_rows), and the row count that `variance_proxies` derives the rest with."""
    for name, values in rows.items():
        stats.add_ratio(f"variance_proxy/{name}", float(values.sum()), values.numel())
    stats.add_sum(_PROXY_ROWS, next(iter(rows.values())).numel())
    stats.derive(variance_proxies)


def variance_proxies(metrics: dict[str, float]) -> dict[str, float]:
    """After the reduction: verl's signal strength ||g||^2 (the step's actor/grad_norm squared) and pure
    noise max(0, (total power - signal) / (rows - 1)); removes the row count. Nothing without proxies."""
    rows = metrics.pop(_PROXY_ROWS, None)
    if rows is None:
        return {}
    grad_norm = metrics.get("actor/grad_norm")
    signal = grad_norm**2 if grad_norm is not None else 0.0
    noise = 0.0
    if grad_norm is not None and rows > 1:
        noise = max(0.0, (metrics["variance_proxy/proxy2_total_power"] - signal) / (rows - 1))
    return {"variance_proxy/proxy1_signal_strength": signal, "variance_proxy/proxy3_pure_noise": noise}
