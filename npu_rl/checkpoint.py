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
of a plain `python -m npu_rl.train`.

Crash safety: everything is written into `.tmp_global_step_N/`, renamed into place, and only then
is the `latest` marker replaced (temp file + fsync + os.replace). A save killed at any point leaves
the previous marker pointing at a complete checkpoint.
"""

from __future__ import annotations

import io
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

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

import npu_rl
from npu_rl import device
from npu_rl.device import Accelerator
from npu_rl.distributed import DistInfo, barrier

log = logging.getLogger(__name__)

MARKER = "latest_checkpointed_iteration.txt"
FORMAT = "npu_rl.fsdp_dcp"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^global_step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit; the message names the path."""


def _no_dist() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized())


def dcp_save(state_dict: dict[str, Any], path: Path) -> None:
    """DCP save that also works without a process group (DCP's single-process mode, warning muted).

    Host-resident state is written without DCP's overlapping device-to-host loader: that loader
    takes a stream of whatever GPU torch can see, so a CPU run would otherwise touch a visible GPU.
    """
    on_host = all(t.device.type == "cpu" for t in _tensors(state_dict))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        if on_host:
            writer = dcp.FileSystemWriter(path, per_thread_copy_ahead=0)
            dcp.save(state_dict, storage_writer=writer, no_dist=_no_dist())
        else:
            dcp.save(state_dict, checkpoint_id=path, no_dist=_no_dist())


def _tensors(tree: Any) -> list[torch.Tensor]:
    """Every tensor in a nested state dict (the local shard of a DTensor)."""
    if isinstance(tree, DTensor):
        return [tree.to_local()]
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _tensors(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in _tensors(v)]
    return []


def dcp_load(state_dict: dict[str, Any], path: Path) -> None:
    """DCP load in place into `state_dict`, resharding to whatever shapes its tensors have."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state_dict, checkpoint_id=path, no_dist=_no_dist())


def _safe_rng_state(acc: Accelerator) -> dict[str, Any]:
    """RNG state in types `torch.load(weights_only=True)` accepts (NumPy's key array as a tensor)."""
    state = device.rng_state(acc)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
    return state


def _restore_rng_state(state: dict[str, Any], acc: Accelerator) -> None:
    kind, keys, pos, has_gauss, cached = state["numpy"]
    state = dict(state, numpy=(kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    device.set_rng_state(state, acc)


def _load_plain(path: Path) -> Any:
    """Read a small torch file of plain containers, tensors and numbers; refuses pickled code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_plain(obj: Any, what: str) -> bytes:
    """Serialize `obj` and prove it loads back with weights_only, so a bad value fails at save, not resume."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    try:
        torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    except Exception as err:
        raise TypeError(f"{what} must hold only dicts, lists, tuples, str, numbers, None and tensors: {err}") from err
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _mesh_info(model: nn.Module) -> dict[str, Any] | None:
    for p in model.parameters():
        if isinstance(p, DTensor):
            mesh = p.device_mesh
            return {"device_type": mesh.device_type, "shape": list(mesh.shape), "dim_names": mesh.mesh_dim_names}
    return None


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
    ) -> Path:
        """Write `global_step_{step}` (collective: every rank calls it) and mark it latest; return its path."""
        final = self.step_dir(step)
        tmp = self.root / f".tmp_global_step_{step}"
        actor = tmp / "actor"
        state_bytes = _check_plain(trainer_state, "trainer_state")  # fail before writing anything
        if self.dist.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)  # leftovers of a save that crashed
            (actor / "rng").mkdir(parents=True)
        barrier()

        model_sd = get_model_state_dict(model)
        dcp_save(model_sd, actor / "model")
        if optimizer is not None:
            dcp_save(get_optimizer_state_dict(model, optimizer), actor / "optim")
        torch.save(_safe_rng_state(self.acc), actor / "rng" / f"rank_{self.dist.rank}.pt")

        if self.dist.is_main:
            if scheduler is not None:
                torch.save(scheduler.state_dict(), actor / "scheduler.pt")
            (actor / "trainer_state.pt").write_bytes(state_bytes)
            hf_dir = actor / "huggingface"
            hf_dir.mkdir()
            for part in (hf_config, tokenizer, generation_config):
                if part is not None:
                    part.save_pretrained(hf_dir)
        barrier()  # every rank's files are in place before metadata declares the checkpoint complete

        if self.dist.is_main:
            meta = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "step": step,
                "world_size": self.dist.world_size,
                "mesh": _mesh_info(model),
                "dtypes": dict(Counter(str(t.dtype).removeprefix("torch.") for t in model_sd.values())),
                "has_optimizer": optimizer is not None,
                "has_scheduler": scheduler is not None,
                "tie_word_embeddings": bool(getattr(hf_config, "tie_word_embeddings", False)),
                "npu_rl_version": npu_rl.__version__,
                "torch_version": torch.__version__,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (actor / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
            self._publish(tmp, final, step)
            self._prune(keep=final)
        barrier()
        return final

    def _publish(self, tmp: Path, final: Path, step: int) -> None:
        """Rename the finished directory into place, then point the marker at it (the commit point)."""
        if final.exists():  # same step saved again (e.g. the last step after a resume)
            old = final.with_name(f".old_{final.name}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _write_atomic(self.root / MARKER, f"{step}\n".encode())

    def _prune(self, keep: Path) -> None:
        for stale in self.root.glob(".tmp_global_step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.max_to_keep <= 0:
            return
        steps = self.complete_steps()
        for step in steps[: max(0, len(steps) - self.max_to_keep)]:
            if self.step_dir(step) != keep:
                shutil.rmtree(self.step_dir(step), ignore_errors=True)

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
        self, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any | None
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
            scheduler.load_state_dict(_load_plain(actor / "scheduler.pt"))

        rng_file = actor / "rng" / f"rank_{self.dist.rank}.pt"
        if meta["world_size"] == self.dist.world_size and rng_file.is_file():
            _restore_rng_state(_load_plain(rng_file), self.acc)
        else:
            seed = 1_000_003 * (int(meta["step"]) + 1) + self.dist.rank
            warnings.warn(
                f"checkpoint {step_dir} was saved by {meta['world_size']} ranks, resuming with "
                f"{self.dist.world_size}: weights and optimizer are resharded exactly, but random streams "
                f"restart (rank {self.dist.rank} seeded with {seed})",
                stacklevel=2,
            )
            device.seed_everything(seed, self.acc)
        trainer_state = _load_plain(actor / "trainer_state.pt")
        barrier()
        return trainer_state
