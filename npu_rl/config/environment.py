"""Config checks that look beyond the values: files, installed packages, the launcher's world size.

They run in `load_config`, so a typo in a path or a missing tracker package stops the run before a
model is loaded or anything is written. Nothing here contacts a model hub.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import sys
from pathlib import Path

from npu_rl.config.fields import ConfigError, registry

RESUME_MODES = ("auto", "disable")


def world_size() -> int:
    """Processes of this run as torchrun announces them (WORLD_SIZE), 1 for a plain `python -m`."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable WORLD_SIZE={raw!r} is not an integer") from None
    if size < 1:
        raise ConfigError(f"environment variable WORLD_SIZE={raw!r} must be >= 1")
    return size


def looks_local(path: str) -> bool:
    """Whether `path` can only mean a folder on this machine, not a Hub repo id (`name` or `org/name`).

    Absolute, `.`- or `~`-relative paths, a backslash, more than one `/`, anything that exists, or an
    `org/name` whose first component is a folder here (`outputs/merged` when ./outputs exists)."""
    if not path:
        return False
    p = Path(path).expanduser()
    if p.is_absolute() or path.startswith((".", "~")) or "\\" in path or path.count("/") > 1 or p.exists():
        return True
    first, _, rest = path.partition("/")
    return bool(rest) and Path(first).is_dir()


def check_local_path(path: str, key: str) -> None:
    """A local-looking model or tokenizer path must exist (a hub id is left to the loader)."""
    if looks_local(path) and not Path(path).expanduser().exists():
        raise ConfigError(
            f"{key}: {path!r} does not exist (resolved: {Path(path).expanduser().resolve()}); "
            "give an existing model folder or a hub id such as Qwen/Qwen2.5-0.5B-Instruct"
        )


def check_file(path: str | None, key: str) -> None:
    """A user code file named in the config must exist."""
    if path and not Path(path).expanduser().is_file():
        raise ConfigError(f"{key}: file {path!r} does not exist (resolved: {Path(path).expanduser().resolve()})")


def check_resume_mode(mode: str, key: str) -> None:
    """auto, disable or an existing checkpoint folder; a near miss of auto/disable is named."""
    if mode in RESUME_MODES or Path(mode).expanduser().exists():
        return
    hint = difflib.get_close_matches(mode, RESUME_MODES, n=1, cutoff=0.5)
    if hint:
        raise ConfigError(f"{key}: {mode!r} is not auto, disable or an existing path; did you mean {hint[0]!r}?")
    raise ConfigError(f"{key}: no such checkpoint folder {mode!r}; use auto, disable or a global_step_N path")


def check_tracker_packages(names: list[str], key: str) -> None:
    """Each tracker's Python package must be installed (set trainer.allow_missing_logger to only warn)."""
    trackers = registry("npu_rl.tracking:REGISTRY")
    for name in names:
        package = getattr(trackers.get(name, key=key), "requires", None)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"{key}: tracker {name!r} needs the {package!r} package: pip install {package} "
                "(or drop it from trainer.logger, or set trainer.allow_missing_logger=true to continue without it)"
            )


def check_tensor_parallel(tp: int, world: int) -> None:
    """vLLM's tensor-parallel group is formed from trainer ranks, so it must fit the world."""
    if world == 1 and tp > 1:
        raise ConfigError(
            f"rollout.tensor_parallel_size={tp} spans trainer ranks: launch with torchrun --nproc_per_node >= {tp}"
        )
    if world % tp:
        raise ConfigError(f"rollout.tensor_parallel_size ({tp}) must divide the world size ({world})")


def check_vllm_engine_args(names: list[str], key: str) -> None:
    """Each name must be a vLLM engine argument (checked against the installed vLLM, when there is one:
    without it the vllm backend stops with its own install hint)."""
    if not names or importlib.util.find_spec("vllm") is None:
        return
    from vllm.engine.arg_utils import EngineArgs

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    for name in names:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            also = f"; did you mean {hint[0]!r}?" if hint else " (see vllm.EngineArgs)"
            raise ConfigError(f"{key}.{name}: not an argument of the installed vLLM{also}")


def warn_single_sample_groups(estimator: str, n: int) -> None:
    """One sample per prompt under a group-relative estimator: there is no group to compare within.

    (As in verl, a group of one gets mean 0 and std 1, so the advantage is the raw reward: REINFORCE
    without a baseline, not the estimator the config names.)"""
    fn = registry("npu_rl.core_algos:ADV_ESTIMATORS").get(estimator)
    if n == 1 and getattr(fn, "group_relative", False) and os.environ.get("RANK", "0") == "0":  # once per run
        print(
            f"[npu_rl] warning: rollout.n=1 with the group-relative algorithm.adv_estimator={estimator}: each group "
            "has one sample, so there is no group baseline (the advantage is the raw reward, and zero when every "
            "reward is 0); use rollout.n >= 2",
            file=sys.stderr,
            flush=True,
        )


def needs_sum_pi_squared(estimator: str) -> bool:
    """Whether the estimator reads sum_v pi_v^2 from the old-log-prob pass (optimal token baselines)."""
    return getattr(registry("npu_rl.core_algos:ADV_ESTIMATORS").get(estimator), "needs_sum_pi_squared", False)


def note_fixed_aggregation(policy_loss: str, loss_agg_mode: str, path: str) -> None:
    """Say so when the policy loss fixes its own aggregation (verl's gspo, sapo, geo_mean) and the config asks
    for another: actor.loss_agg_mode then reduces only the entropy and KL terms."""
    from npu_rl.core_algos import policy_agg_mode  # torch: imported when a config is checked, not loaded

    fixed = policy_agg_mode(policy_loss, loss_agg_mode)
    if fixed != loss_agg_mode and os.environ.get("RANK", "0") == "0":
        print(
            f"[npu_rl] note: {path}.policy_loss={policy_loss} is always reduced as {fixed} (as in verl); "
            f"{path}.loss_agg_mode={loss_agg_mode} applies to the entropy and KL terms only",
            file=sys.stderr,
            flush=True,
        )
