"""Sharded checkpoints that resume exactly, at the same or a different world size.

Layout (verl's, so users find their way around)::

    <root>/latest_checkpointed_iteration.txt      step number of the newest complete checkpoint
    <root>/global_step_N/actor/
        model/            torch.distributed.checkpoint (DCP) of the model state dict
        optim/            DCP of the optimizer state dict, keyed by parameter name
        scheduler.pt      LR scheduler state
        trainer_state.pt  what the trainer passed (step, data sampler position, ...)
        rng/rank_R.pt     every RNG of rank R
        huggingface/      config, tokenizer, generation config (for the merger and for eval)
        metadata.json     world size, mesh, dtypes, step, versions

DCP stores each tensor with its global shape and the chunks every rank held, so a checkpoint
written by 2 ranks loads into 1 or 8 (it reshards on read) and the model state dict is all the
merger needs. Without a process group DCP runs in single-process mode, so the same files come out
of a plain `python -m npu_rl.train`. Turning state into files and back (DCP, RNG state, the checks
before a save) is npu_rl.checkpoint_state; this module owns the layout and the publish protocol.

Crash safety: everything is written into `.tmp_global_step_N/`, fsynced, renamed into place (the
parent directory fsynced), and only then is the `latest` marker replaced (temp file + fsync +
os.replace + directory fsync). A save killed at any point leaves the previous marker pointing at a
complete checkpoint; `clean_debris` (run at start-up, under the run lock) puts back a checkpoint
whose same-step replacement was interrupted and removes every leftover (`.tmp_global_step_N`,
`.old_global_step_N`, `.latest_checkpointed_iteration.txt.tmp-PID`).

Safety: a save is refused before writing anything when a parameter is NaN/inf or the disk lacks
the estimated room (message names the path and the bytes); a failing write is reported with the
path. Loading never unpickles code (npu_rl.safe_load): a crafted checkpoint fails to load.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

import npu_rl
from npu_rl import device
from npu_rl.checkpoint_state import (
    SPACE_EXTRA_BYTES,
    SPACE_MARGIN,
    dcp_load,
    dcp_save,
    estimate_bytes,
    load_role,
    mesh_info,
    nonfinite_tensors,
    plain_bytes,
    refuse_save,
    restore_rng_state,
    rng_state_for_save,
    save_role,
)
from npu_rl.device import Accelerator
from npu_rl.distributed import DistInfo, barrier
from npu_rl.safe_load import load_plain
from npu_rl.storage import fsync_dir, fsync_tree, torch_bytes, write_atomic, write_durable

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MARKER",
    "SPACE_EXTRA_BYTES",
    "SPACE_MARGIN",
    "CheckpointError",
    "CheckpointManager",
    "dcp_load",
    "dcp_save",
    "estimate_bytes",
    "is_complete",
    "nonfinite_tensors",
]

log = logging.getLogger(__name__)

MARKER = "latest_checkpointed_iteration.txt"
FORMAT = "npu_rl.fsdp_dcp"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^global_step_(\d+)$")
_DEBRIS = re.compile(rf"^(\.tmp_global_step_\d+|\.old_global_step_\d+|\.{re.escape(MARKER)}\.tmp-\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit; the message names the path."""


def is_complete(step_dir: Path) -> bool:
    """A checkpoint is usable once its metadata and the model's DCP metadata exist (written last)."""
    actor = step_dir / "actor"
    return (actor / "metadata.json").is_file() and (actor / "model" / ".metadata").is_file()


class CheckpointManager:
    """Saves, finds and restores the trainer's checkpoints under one root directory."""

    def __init__(
        self, root: str | Path, max_to_keep: int = -1, dist: DistInfo | None = None, acc: Accelerator | None = None
    ) -> None:
        self.root = Path(root)
        self.max_to_keep = max_to_keep
        self.dist = dist or DistInfo()
        self.acc = acc or Accelerator("cpu")  # whose RNG state is saved besides the host's

    def step_dir(self, step: int) -> Path:
        return self.root / f"global_step_{step}"

    # ------------------------------------------------------------------------------------------
    # save

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any | None,
        trainer_state: dict[str, Any],
        hf_config: Any | None,
        tokenizer: Any | None,
        generation_config: Any | None = None,
        extra_files: dict[str, bytes] | None = None,
        others: dict[str, tuple[nn.Module, torch.optim.Optimizer | None, Any]] | None = None,
    ) -> Path:
        """Write `global_step_{step}` (collective: every rank calls it) and mark it latest; return its path.

        `extra_files` (name -> bytes) are written into `actor/` by the main rank, e.g. the run's config.
        `others` maps a role (e.g. "critic") to its (model, optimizer, scheduler), saved beside the actor
        in `global_step_N/<role>/{model,optim,scheduler.pt}` within the same atomic publish.
        Refused before anything is written when a parameter is not finite or the disk lacks room;
        a failed write raises `CheckpointError` naming the path, and the previous checkpoint stays latest.
        """
        final = self.step_dir(step)
        tmp = self.root / f".tmp_global_step_{step}"
        actor = tmp / "actor"
        state_bytes = plain_bytes(trainer_state, "trainer_state")  # fail before writing anything
        model_sd = get_model_state_dict(model)
        refusal = refuse_save(step, self.root, model_sd, optimizer, self.latest)
        if refusal:
            raise CheckpointError(refusal)
        try:
            parts = (hf_config, tokenizer, generation_config)
            self._write(tmp, model, model_sd, optimizer, scheduler, state_bytes, parts, others or {})
            if self.dist.is_main:
                for name, data in (extra_files or {}).items():
                    write_durable(actor / name, data)
                meta = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "step": step,
                    "world_size": self.dist.world_size,
                    "mesh": mesh_info(model),
                    "dtypes": dict(Counter(str(t.dtype).removeprefix("torch.") for t in model_sd.values())),
                    "has_optimizer": optimizer is not None,
                    "has_scheduler": scheduler is not None,
                    "tie_word_embeddings": bool(getattr(hf_config, "tie_word_embeddings", False)),
                    "npu_rl_version": npu_rl.__version__,
                    "torch_version": torch.__version__,
                    "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
                write_durable(actor / "metadata.json", (json.dumps(meta, indent=2) + "\n").encode())
                fsync_tree(tmp)
                self._publish(tmp, final, step)
        except (OSError, RuntimeError, CheckpointException) as err:
            if self.dist.is_main:
                shutil.rmtree(tmp, ignore_errors=True)  # a half-written step would only take space
            previous = self.latest()
            raise CheckpointError(
                f"saving the step {step} checkpoint into {tmp} failed: {type(err).__name__}: {err}. "
                f"The latest complete checkpoint is still {previous or 'none'}; check that {self.root} is "
                "writable and has free space"
            ) from err
        if self.dist.is_main:
            self._prune(keep=final)
        barrier()
        return final

    def _write(
        self,
        tmp: Path,
        model: nn.Module,
        model_sd: dict[str, Any],
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any | None,
        state_bytes: bytes,
        hf_parts: tuple[Any, ...],
        others: dict[str, tuple[nn.Module, torch.optim.Optimizer | None, Any]],
    ) -> None:
        """Every rank's shards and the main rank's small files into `tmp` (complete once this returns)."""
        actor = tmp / "actor"
        if self.dist.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)  # leftovers of a save that crashed
            (actor / "rng").mkdir(parents=True)
        barrier()
        dcp_save(model_sd, actor / "model")
        if optimizer is not None:
            dcp_save(get_optimizer_state_dict(model, optimizer), actor / "optim")
        write_durable(actor / "rng" / f"rank_{self.dist.rank}.pt", torch_bytes(rng_state_for_save(self.acc)))
        for role, (other, other_optim, other_sched) in others.items():
            save_role(tmp / role, other, other_optim, other_sched, self.dist.is_main)

        if self.dist.is_main:
            if scheduler is not None:
                write_durable(actor / "scheduler.pt", torch_bytes(scheduler.state_dict()))
            write_durable(actor / "trainer_state.pt", state_bytes)
            hf_dir = actor / "huggingface"
            hf_dir.mkdir()
            for part in hf_parts:  # config, tokenizer, generation config
                if part is not None:
                    part.save_pretrained(hf_dir)
        barrier()  # every rank's files are in place before metadata declares the checkpoint complete

    def _publish(self, tmp: Path, final: Path, step: int) -> None:
        """Rename the finished directory into place, then point the marker at it (the commit point).

        Replacing the same step (the last step saved again after a resume) moves the old copy to
        `.old_global_step_N` first; `clean_debris` repairs a kill between the two renames.
        """
        if final.exists():
            old = final.with_name(f".old_{final.name}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            fsync_dir(self.root)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
            fsync_dir(self.root)
        write_atomic(self.root / MARKER, f"{step}\n".encode())

    def _prune(self, keep: Path) -> None:
        self.clean_debris()
        if self.max_to_keep <= 0:
            return
        steps = self.complete_steps()
        for step in steps[: max(0, len(steps) - self.max_to_keep)]:
            if self.step_dir(step) != keep:
                shutil.rmtree(self.step_dir(step), ignore_errors=True)

    def clean_debris(self) -> list[str]:
        """Repair an interrupted same-step replacement, then remove every leftover of interrupted saves.

        Call only while holding the run lock (npu_rl.run_guard): another live run's temp directory
        looks exactly like debris. Returns the names removed or restored, for a log line.
        """
        if not self.root.is_dir():
            return []
        done = []
        for old in self.root.glob(".old_global_step_*"):
            final = self.root / old.name.removeprefix(".old_")
            tmp = self.root / f".tmp_{final.name}"
            if not final.exists() and _STEP_DIR.match(final.name):
                # killed between "final -> .old" and ".tmp -> final": the new copy if it is whole, else the old one
                os.replace(tmp if is_complete(tmp) else old, final)
                done.append(f"restored {final.name}")
        for item in sorted(self.root.iterdir()):
            if _DEBRIS.match(item.name):
                if item.is_dir():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)
                done.append(f"removed {item.name}")
        if done:
            fsync_dir(self.root)
        return done

    # ------------------------------------------------------------------------------------------
    # find

    def complete_steps(self) -> list[int]:
        """Steps of the complete checkpoints under root, ascending."""
        if not self.root.is_dir():
            return []
        found = []
        for d in self.root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and is_complete(d):
                found.append(int(m.group(1)))
        return sorted(found)

    def latest(self) -> Path | None:
        """The checkpoint the marker names; if the marker is absent or stale, the newest complete one."""
        marker = self.root / MARKER
        if marker.is_file():
            text = marker.read_text().strip()
            if text.isdigit() and is_complete(self.step_dir(int(text))):
                return self.step_dir(int(text))
            log.warning("%s names %r, which is not a complete checkpoint; using the newest complete one", marker, text)
        steps = self.complete_steps()
        return self.step_dir(steps[-1]) if steps else None

    def resolve(self, resume_mode: str) -> Path | None:
        """`trainer.resume_mode` -> the `global_step_N` directory to load, or None to start fresh."""
        if resume_mode == "disable":
            return None
        if resume_mode == "auto":
            return self.latest()
        path = Path(resume_mode)
        if path.name == "actor":
            path = path.parent
        if not path.is_dir():
            raise CheckpointError(
                f"trainer.resume_mode={resume_mode!r}: no such directory; use auto, disable or a path "
                "to <default_local_dir>/global_step_N"
            )
        if not _STEP_DIR.match(path.name):
            raise CheckpointError(f"trainer.resume_mode={resume_mode!r}: expected a directory named global_step_N")
        if not is_complete(path):
            raise CheckpointError(
                f"trainer.resume_mode={resume_mode!r}: {path} is not a complete checkpoint (no "
                "actor/metadata.json or actor/model/.metadata; was its save interrupted?)"
            )
        return path

    # ------------------------------------------------------------------------------------------
    # load

    def load(
        self,
        path: str | Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any | None,
        others: dict[str, tuple[nn.Module, torch.optim.Optimizer | None, Any]] | None = None,
    ) -> dict[str, Any]:
        """Restore model, optimizer, scheduler and this rank's RNG (collective); return the trainer state.

        Build the model, shard it and create optimizer and scheduler exactly as for a fresh run
        first; DCP then fills the existing (possibly sharded) tensors. A different world size than
        at save time is fine for the weights and optimizer; the per-rank RNG streams cannot carry
        over, so each rank is re-seeded from (step, rank) and a warning says so.
        """
        step_dir = Path(path)
        if step_dir.name == "actor":
            step_dir = step_dir.parent
        actor = step_dir / "actor"
        if not is_complete(step_dir):
            raise CheckpointError(
                f"{step_dir} is not a complete checkpoint (no actor/metadata.json or model/.metadata)"
            )
        meta = json.loads((actor / "metadata.json").read_text())

        model_sd = get_model_state_dict(model)
        dcp_load(model_sd, actor / "model")
        set_model_state_dict(model, model_sd)
        if optimizer is not None:
            if not meta.get("has_optimizer", True):
                raise CheckpointError(f"{actor} holds no optimizer state but an optimizer was passed to load")
            optim_sd = get_optimizer_state_dict(model, optimizer)
            dcp_load(optim_sd, actor / "optim")
            set_optimizer_state_dict(model, optimizer, optim_sd)
        if scheduler is not None:
            scheduler.load_state_dict(load_plain(actor / "scheduler.pt"))
        for role, (other, other_optim, other_sched) in (others or {}).items():
            if not (step_dir / role / "model" / ".metadata").is_file():
                raise CheckpointError(f"{step_dir} holds no {role} (saved by a run without one); resume_mode=disable")
            load_role(step_dir / role, other, other_optim, other_sched)

        rng_file = actor / "rng" / f"rank_{self.dist.rank}.pt"
        if meta["world_size"] == self.dist.world_size and rng_file.is_file():
            restore_rng_state(load_plain(rng_file), self.acc)
        else:
            seed = 1_000_003 * (int(meta["step"]) + 1) + self.dist.rank
            warnings.warn(
                f"checkpoint {step_dir} was saved by {meta['world_size']} ranks, resuming with "
                f"{self.dist.world_size}: weights and optimizer are resharded exactly, but random streams "
                f"restart (rank {self.dist.rank} seeded with {seed})",
                stacklevel=2,
            )
            device.seed_everything(seed, self.acc)
        trainer_state = load_plain(actor / "trainer_state.pt")
        barrier()
        return trainer_state
