"""Keeping a resumed run's record true: the config it ran with and the metrics it logged.

Config: every start writes its resolved config to `<log_dir>/config.history/NNNN-<time>.yaml` and
replaces `<log_dir>/config.yaml` with it, so the history of a run that was resumed with other
settings stays readable. On resume the new config is compared with the one saved in the checkpoint
(`actor/run_config.yaml`; older checkpoints: the log directory's `config.yaml`) and the differences
are printed. Settings whose change a resume would otherwise apply silently or only half (the LR
schedule, whose base LR the optimizer state restores; the seeds and data order; the batch layout)
are refused unless `trainer.allow_config_change=true`, which applies them explicitly from the
resumed step (see `docs/reliability.md`).

Metrics: a step's row is made durable before the checkpoint covering it is published, so on resume
from step S the log may hold rows past S (written before a kill) but none is missing. `reconcile_log`
moves every row past S (and any torn last line) to `<name>.discarded.jsonl`, leaving steps 0..S once
each, so the resumed run's rows continue it with no duplicates and no gap.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from npu_rl.checkpoint import CheckpointManager
from npu_rl.config import Config, OptimConfig, format_path, to_dict
from npu_rl.config.yaml_io import load_yaml
from npu_rl.distributed import DistInfo, barrier
from npu_rl.run_guard import RunLock
from npu_rl.storage import fsync_dir, write_atomic

RUN_CONFIG = "run_config.yaml"  # the resolved config stored in each checkpoint's actor/ folder
LOGS = ("metrics.jsonl", "samples.jsonl")

# dotted key -> why its change is not silently fine on resume
_PROTECTED = {
    "actor.optim.lr": "the restored optimizer would keep the old base LR",
    "actor.optim.weight_decay": "the restored optimizer would keep the old value",
    "actor.optim.betas": "the restored optimizer would keep the old value",
    "actor.optim.eps": "the restored optimizer would keep the old value",
    "actor.optim.lr_scheduler": "LR schedule",
    "actor.optim.lr_warmup_steps": "LR schedule",
    "actor.optim.lr_warmup_steps_ratio": "LR schedule",
    "actor.optim.min_lr_ratio": "LR schedule",
    "trainer.seed": "sampling seeds",
    "data.seed": "data order",
    "data.shuffle": "data order",
    "data.train_batch_size": "batch layout",
    "rollout.n": "batch layout",
    "actor.ppo_mini_batch_size": "batch layout",
}
_SCHEDULE_LENGTH = ("trainer.total_training_steps", "trainer.total_epochs")  # protected when the LR schedule uses it
_IGNORED = ("trainer.resume_mode", "trainer.allow_config_change")  # how to start, not what runs


class ConfigChangeError(ValueError):
    """A resume would change settings that need `trainer.allow_config_change=true`."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _schedule_uses_length(flat: dict[str, Any]) -> bool:
    warmup_by_ratio = not flat.get("actor.optim.lr_warmup_steps") and flat.get("actor.optim.lr_warmup_steps_ratio")
    return flat.get("actor.optim.lr_scheduler", "constant") != "constant" or bool(warmup_by_ratio)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    """(dotted key, old, new, reason it is protected or "") for every setting that differs."""
    a, b = _flatten(old), _flatten(new)
    protected = dict(_PROTECTED)
    if _schedule_uses_length(a) or _schedule_uses_length(b):
        protected.update(dict.fromkeys(_SCHEDULE_LENGTH, "LR schedule length"))
    missing = object()
    changes = []
    for key in sorted(set(a) | set(b)):
        if key in _IGNORED:
            continue
        old_value, new_value = a.get(key, missing), b.get(key, missing)
        if old_value != new_value:
            changes.append((key, old_value, new_value, protected.get(key, "")))
    return [(k, None if o is missing else o, None if n is missing else n, why) for k, o, n, why in changes]


def saved_config(step_dir: Path, log_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The config a checkpoint was trained with (plain YAML, read as configs are), and where it came from."""
    for path in (step_dir / "actor" / RUN_CONFIG, log_dir / "config.yaml"):
        if path.is_file():
            loaded = load_yaml(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                return loaded, path
    return None, None


def config_yaml(cfg: Config) -> bytes:
    """The resolved config as YAML (every default filled in), as stored in checkpoints and config.history/."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False).encode()


def check_resume_config(
    cfg: Config, step_dir: Path, log_dir: Path, verbose: bool = True
) -> list[tuple[str, Any, Any, str]]:
    """Print what changed since the checkpoint (when `verbose`: the main rank); raise `ConfigChangeError`
    for protected changes unless `trainer.allow_config_change`. Every rank calls it and decides alike."""
    old, source = saved_config(step_dir, log_dir)
    if old is None:
        if verbose:
            print(f"[npu_rl] note: no saved config for {step_dir}; cannot show what changed since it was written")
        return []
    changes = config_changes(old, to_dict(cfg))
    if not changes:
        return []
    lines = [f"  {k}: {o!r} -> {n!r}" + (f"   [{why}]" if why else "") for k, o, n, why in changes]
    if verbose:
        print(f"[npu_rl] config changes since {source}:\n" + "\n".join(lines), flush=True)
    refused = [k for k, _, _, why in changes if why]
    if refused and not cfg.trainer.allow_config_change:
        raise ConfigChangeError(
            f"resuming from {step_dir} would change {', '.join(refused)} (see the list above). A resume would "
            "not apply these as a fresh run does, so they are refused: restore the old values, start a new run "
            "(another trainer.experiment_name, or trainer.resume_mode=disable), or pass "
            "trainer.allow_config_change=true to apply them from the resumed step on (docs/reliability.md)"
        )
    return changes


def record_config(cfg: Config, log_dir: Path, note: str) -> Path:
    """Append this start's resolved config to config.history/ and make it config.yaml; return the history file."""
    history = log_dir / "config.history"
    history.mkdir(parents=True, exist_ok=True)
    number = len(list(history.glob("*.yaml"))) + 1
    started = time.strftime("%Y%m%dT%H%M%S")
    header = f"# start {number}: {started} pid {os.getpid()} on {socket.gethostname()}; {note}\n"
    text = header.encode() + config_yaml(cfg)
    entry = history / f"{number:04d}-{started}.yaml"
    write_atomic(entry, text)
    write_atomic(log_dir / "config.yaml", text)
    return entry


def _row_step(line: str) -> int | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) else None


def reconcile_log(path: Path, last_step: int) -> tuple[int, list[int]]:
    """Keep rows with step <= `last_step` (the last of each step), move the rest to `*.discarded.jsonl`.

    `last_step` is -1 for a fresh start (every old row is discarded). Returns the number of rows
    moved and the steps in 1..last_step missing from a metrics log (logged by an older version, or
    by a run without the jsonl logger), for a warning.
    """
    if not path.is_file():
        return 0, []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep: dict[int, str] = {}
    dropped: list[str] = []
    for line in lines:
        step = _row_step(line)
        if step is None or step > last_step or not line.endswith("\n"):
            dropped.append(line if line.endswith("\n") else line + "\n")
        elif path.name == "metrics.jsonl":
            if step in keep:
                dropped.append(keep[step])
            keep[step] = line  # one row per step: the newest
        else:
            keep.setdefault(step, "")
            keep[step] += line  # samples: several rows per validation
    if dropped:
        discarded = path.with_name(path.stem + ".discarded.jsonl")
        with open(discarded, "a", encoding="utf-8") as fh:
            fh.writelines(dropped)
            fh.flush()
            os.fsync(fh.fileno())
        write_atomic(path, "".join(keep[s] for s in sorted(keep)).encode())
        fsync_dir(path.parent)
    missing = [s for s in range(1, last_step + 1) if s not in keep] if path.name == "metrics.jsonl" and keep else []
    return len(dropped), missing


def apply_optim_config(optimizer: torch.optim.Optimizer, scheduler: Any, o: OptimConfig) -> None:
    """Put the configured optimizer settings and LR schedule over restored ones (an allowed change).

    The optimizer state restores the old lr/betas/eps/weight_decay and the scheduler its old base
    LR; the schedule's shape already comes from the config. The LR of the next update is the new
    schedule's value at the resumed step.
    """
    scheduler.base_lrs = [o.lr] * len(optimizer.param_groups)
    for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group.update(initial_lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        group["lr"] = o.lr * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr reports


@dataclass
class RunStart:
    """What `open_run` decided: the directory lock (main rank), the checkpoint to resume, the config
    changes since it (allowed ones only: a refused change raises)."""

    lock: RunLock | None
    resume_from: Path | None
    changes: list[tuple[str, Any, Any, str]]


def open_run(cfg: Config, dist: DistInfo, log_dir: Path) -> RunStart:
    """Before the model loads: lock the run's directories (main rank), clean up interrupted saves,
    pick the checkpoint to resume and refuse a config change a resume would not apply cleanly."""
    checkpoints = CheckpointManager(format_path(cfg.trainer.default_local_dir, cfg), dist=dist)
    lock = RunLock([log_dir, checkpoints.root]) if dist.is_main else None
    try:
        if lock is not None:
            for note in lock.taken_over + checkpoints.clean_debris():
                print(f"[npu_rl] {note}")
        barrier()
        path = checkpoints.resolve(cfg.trainer.resume_mode)
        changes = [] if path is None else check_resume_config(cfg, path, log_dir, dist.is_main)
    except BaseException:
        if lock is not None:  # a refused start must not keep the directories locked
            lock.release()
        raise
    return RunStart(lock, path, changes)


def record_start(cfg: Config, log_dir: Path, resume_from: Path | None) -> None:
    """Main rank, before the trackers open: logs cut back to the resumed step, this start's config recorded."""
    step = -1 if resume_from is None else int(resume_from.name.removeprefix("global_step_"))
    for name in LOGS:
        dropped, missing = reconcile_log(log_dir / name, step)
        if dropped:
            print(f"[npu_rl] {name}: moved {dropped} rows after step {max(step, 0)} to the .discarded.jsonl file")
        if missing:
            print(f"[npu_rl] warning: {name} has no rows for steps {missing} (logged by an older version?)")
    record_config(cfg, log_dir, f"resumed from {resume_from}" if resume_from else "fresh start")


SAMPLER_KEYS = frozenset({"data.seed", "data.shuffle", "data.train_batch_size", "data.gen_batch_size"})


def trainer_state(step: int, sampler: Any, kl_ctrl: Any, entropy_control: Any | None) -> dict[str, Any]:
    """What a checkpoint keeps of the loop beside the weights: the step, the data position, and the
    controllers' coefficients (adaptive KL in the reward, adaptive entropy)."""
    entropy = None if entropy_control is None else entropy_control.state_dict()
    return {"global_step": step, "sampler": sampler.state_dict(), "kl_coef": kl_ctrl.value, "entropy_control": entropy}


def restore_trainer_state(
    state: dict[str, Any], changed: set[str], sampler: Any, kl_ctrl: Any, entropy_control: Any | None
) -> int:
    """Put `trainer_state`'s values back; return the step. A data-order key changed on resume (allowed by
    trainer.allow_config_change) starts the new order at the next epoch."""
    kl_ctrl.value = float(state.get("kl_coef", kl_ctrl.value))  # adaptive KL resumes where it was
    if entropy_control is not None and state.get("entropy_control"):  # so does adaptive entropy
        entropy_control.load_state_dict(state["entropy_control"])
    sampler_state = state["sampler"]
    if changed & SAMPLER_KEYS:
        sampler_state = dict(sampler_state, seed=sampler.seed, shuffle=sampler.shuffle, batch_size=sampler.batch_size)
        if sampler_state["position"]:
            sampler_state.update(epoch=sampler_state["epoch"] + 1, position=0)
    sampler.load_state_dict(sampler_state)
    return int(state["global_step"])
