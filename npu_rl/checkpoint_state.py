"""The state a checkpoint is made of: DCP reads and writes, RNG state, and the checks before a save.

npu_rl.checkpoint lays these out on disk (directories, marker, atomic publish); this module only
turns state into files and back. DCP stores each tensor with its global shape and the chunks every
rank held, so a state dict written by N ranks loads into any other number (it reshards on read).
Reads go through npu_rl.safe_load, so a crafted file fails to load and runs nothing.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.tensor import DTensor, Replicate

from npu_rl import device
from npu_rl.device import Accelerator
from npu_rl.distributed import all_reduce
from npu_rl.safe_load import SafeFileSystemReader, SafeLoadPlanner, UnsafeCheckpointError, load_plain
from npu_rl.storage import fmt_bytes, free_bytes, torch_bytes, write_durable

SPACE_MARGIN = 1.05  # the estimate counts tensor bytes only: headroom for file headers and metadata
SPACE_EXTRA_BYTES = 64 << 20  # tokenizer, configs, RNG and scheduler files


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


def _tensors(tree: Any, replicas: bool = True) -> list[torch.Tensor]:
    """Every tensor in a nested state dict (the local shard of a DTensor); `replicas=False` leaves out the
    shards this rank holds as a replica (HSDP's "ddp" copies, of which DCP writes one: coordinate 0)."""
    if isinstance(tree, DTensor):
        coordinate = tree.device_mesh.get_coordinate() or []
        copy = any(coordinate[d] for d, p in enumerate(tree.placements) if isinstance(p, Replicate))
        return [] if copy and not replicas else [tree.to_local()]
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _tensors(v, replicas)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in _tensors(v, replicas)]
    return []


def dcp_load(state_dict: dict[str, Any], path: Path) -> None:
    """DCP load in place into `state_dict`, resharding to whatever shapes its tensors have.

    Metadata and non-tensor entries are read by npu_rl.safe_load: a crafted file fails, running nothing.
    """
    reader = SafeFileSystemReader(path)
    reader.read_metadata()  # a refused file raises here, not wrapped into DCP's CheckpointException
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp.load(state_dict, storage_reader=reader, planner=SafeLoadPlanner(), no_dist=_no_dist())
        except CheckpointException as err:  # DCP wraps every rank's error; a refusal should read as one
            refused = [exc for exc, _ in err.failures.values() if isinstance(exc, UnsafeCheckpointError)]
            if refused:
                raise refused[0] from None
            raise


def rng_state_for_save(acc: Accelerator) -> dict[str, Any]:
    """RNG state in types `torch.load(weights_only=True)` accepts (NumPy's key array as a tensor)."""
    state = device.rng_state(acc)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
    return state


def restore_rng_state(state: dict[str, Any], acc: Accelerator) -> None:
    """Put back what `rng_state_for_save` captured (NumPy's key array back to uint32)."""
    kind, keys, pos, has_gauss, cached = state["numpy"]
    state = dict(state, numpy=(kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    device.set_rng_state(state, acc)


def plain_bytes(obj: Any, what: str) -> bytes:
    """Serialize `obj` and prove it loads back with weights_only, so a bad value fails at save, not resume."""
    data = torch_bytes(obj)
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as err:
        raise TypeError(f"{what} must hold only dicts, lists, tuples, str, numbers, None and tensors: {err}") from err
    return data


def nonfinite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf in this rank's part of `state_dict`."""
    return [
        name
        for name, value in state_dict.items()
        if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in _tensors(value))
    ]


def estimate_bytes(model_sd: dict[str, Any], optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes this rank writes of the model and optimizer state (tensor payload; an HSDP replica writes none)."""
    states = list(optimizer.state.values()) if optimizer is not None else []
    tensors = _tensors(model_sd, replicas=False) + _tensors(states, replicas=False)
    return sum(t.numel() * t.element_size() for t in tensors)


def mesh_info(model: nn.Module) -> dict[str, Any] | None:
    """The device mesh of the first sharded parameter (for metadata.json), None for an unsharded model."""
    for p in model.parameters():
        if isinstance(p, DTensor):
            mesh = p.device_mesh
            return {"device_type": mesh.device_type, "shape": list(mesh.shape), "dim_names": mesh.mesh_dim_names}
    return None


def refuse_save(
    step: int,
    root: Path,
    model_sd: dict[str, Any],
    optimizer: torch.optim.Optimizer | None,
    latest: Callable[[], Path | None],
) -> str | None:
    """Why step `step` must not be saved under `root`, or None: a parameter holds NaN/inf on some rank, or
    the disk has less room than the checkpoint's estimated size. Both counts are summed over ranks, so
    every rank refuses together, before anything is written; the message names the latest good
    checkpoint (`latest()`) and what to do."""
    bad = nonfinite_tensors(model_sd)
    if int(all_reduce(torch.tensor(float(len(bad))), "sum")):
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return (
            f"refusing to save step {step} to {root}: parameters hold NaN/inf ({shown or 'on another rank'}); "
            f"the latest good checkpoint is {latest() or 'none'}"
        )
    needed = all_reduce(torch.tensor(float(estimate_bytes(model_sd, optimizer))), "sum").item()
    needed = int(needed * SPACE_MARGIN) + SPACE_EXTRA_BYTES
    free = free_bytes(root)
    if free < needed:
        return (
            f"not enough free space to save step {step} in {root}: the checkpoint needs about "
            f"{fmt_bytes(needed)} ({needed} bytes: parameters and optimizer state), {fmt_bytes(free)} "
            "are free. Free space there, point trainer.default_local_dir elsewhere or set "
            f"trainer.max_ckpt_to_keep; the latest checkpoint is still {latest() or 'none'}"
        )
    return None


def save_role(role_dir: Path, module: nn.Module, optimizer: Any | None, scheduler: Any | None, is_main: bool) -> None:
    """A module saved beside the actor (`global_step_N/<role>/`): its shards, and its optimizer and
    scheduler when it has them (a critic does; a mixed reference policy does not). Collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    dcp_save(get_model_state_dict(module), role_dir / "model")
    if optimizer is not None:
        dcp_save(get_optimizer_state_dict(module, optimizer), role_dir / "optim")
    if scheduler is not None and is_main:
        write_durable(role_dir / "scheduler.pt", torch_bytes(scheduler.state_dict()))


def load_role(role_dir: Path, module: nn.Module, optimizer: Any | None, scheduler: Any | None) -> None:
    """What `save_role` wrote, into the built (and sharded) module, optimizer and scheduler. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    module_sd = get_model_state_dict(module)
    dcp_load(module_sd, role_dir / "model")
    set_model_state_dict(module, module_sd)
    if optimizer is not None:
        optim_sd = get_optimizer_state_dict(module, optimizer)
        dcp_load(optim_sd, role_dir / "optim")
        set_optimizer_state_dict(module, optimizer, optim_sd)
    if scheduler is not None:
        scheduler.load_state_dict(load_plain(role_dir / "scheduler.pt"))
