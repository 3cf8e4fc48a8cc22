"""Reading verl's own FSDP checkpoints for `npu_rl.merge`: `model_world_size_W_rank_R.pt` per rank.

verl's FSDP checkpoint manager writes, in `global_step_N/actor/`, one `torch.save`d model state dict
per rank, `fsdp_config.json` (`{"FSDP_version": 1 | 2, "world_size": W}`) and a `huggingface/`
folder with the config and tokenizer. A state dict holds:

- DTensors (FSDP2, and FSDP1's sharded state dict): each rank's local piece plus the device mesh and
  placements. A tensor is rebuilt by walking the mesh: `Shard(d)` concatenates the pieces of that
  mesh dimension along tensor dim d, `Replicate()` takes the first (HSDP's ("ddp", "fsdp") meshes too).
- plain tensors: a world-size-1 save (the whole tensor), or buffers FSDP does not shard, which every
  rank holds in full. A plain tensor is taken once, after checking that every rank holds the same
  one; it is never concatenated (verl's merger turns a (1,) buffer into (W,) that way).

Each tensor keeps the dtype it was saved in. Files are opened with `torch.load(weights_only=True,
mmap=True)`: only tensors and the torch.distributed types that describe DTensors are unpickled (the
allow-list below, for torch releases that do not register them themselves), and pages are read from
disk as tensors are assembled, so memory stays near the largest tensor plus its pieces.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from npu_rl.merge import MergeError
from npu_rl.safetensors_out import Entry, checked_dtype

_RANK_FILE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")


def is_verl_checkpoint(path: Path) -> bool:
    return path.is_dir() and any(_RANK_FILE.match(p.name) for p in path.iterdir())


def _safe_globals() -> list[Any]:
    """The classes a DTensor pickle refers to: DTensor, its spec, mesh and placements (importing the
    module also registers DTensor's own unpickling with torch.load on recent torch)."""
    import torch.distributed.tensor as dt
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor._dtensor_spec import DTensorSpec, TensorMeta

    return [dt.DTensor, DeviceMesh, dt.Shard, dt.Replicate, dt.Partial, DTensorSpec, TensorMeta]


def load_rank_file(path: Path) -> dict[str, Any]:
    """One rank's state dict, unpickling tensors and DTensor metadata only."""
    mesh_logger = logging.getLogger("torch.distributed.device_mesh")
    level = mesh_logger.level
    mesh_logger.setLevel(logging.ERROR)  # "unpickling of the DeviceMesh before the PGs were created": expected
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle.UnpicklingError, or a file cut short
        raise MergeError(f"{path}: cannot read it as a verl model state dict (weights only): {err}") from err
    finally:
        mesh_logger.setLevel(level)
    if not isinstance(state, dict):
        raise MergeError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


class VerlSource:
    """The tensors of a verl FSDP checkpoint directory, planned from rank 0 and assembled on demand."""

    def __init__(self, actor: Path) -> None:
        ranks: dict[int, Path] = {}
        sizes = set()
        for p in actor.iterdir():
            m = _RANK_FILE.match(p.name)
            if m:
                sizes.add(int(m.group(1)))
                ranks[int(m.group(2))] = p
        if len(sizes) != 1:
            raise MergeError(f"{actor}: model files of several world sizes {sorted(sizes)}; keep one save per folder")
        (world,) = sizes
        missing = sorted(set(range(world)) - set(ranks))
        if missing:
            raise MergeError(f"{actor}: world size {world} but no model_world_size_{world}_rank_R.pt for R={missing}")
        config = actor / "fsdp_config.json"
        if config.is_file():
            declared = json.loads(config.read_text()).get("world_size", world)
            if declared != world:
                raise MergeError(f"{config} says world_size {declared}, the files say {world}")
        else:
            warnings.warn(f"{config} is missing; taking world size {world} from the file names", stacklevel=2)
        self.actor = actor
        self.states = [load_rank_file(ranks[r]) for r in range(world)]
        names = list(self.states[0])
        for r, state in enumerate(self.states[1:], start=1):
            if list(state) != names:
                diff = sorted(set(names) ^ set(state))[:5]
                raise MergeError(f"rank {r}'s state dict has other keys than rank 0's (e.g. {diff})")
        self.names = names

    def entries(self, dtype: torch.dtype | None) -> list[Entry]:
        out = []
        for name in self.names:
            value = self.states[0][name]
            if not isinstance(value, torch.Tensor):
                warnings.warn(f"skipping non-tensor entry {name!r} of the model state dict", stacklevel=2)
                continue
            saved = _local(value).dtype
            checked_dtype(name, saved)
            out.append(Entry(name, list(value.shape), saved, dtype if dtype and saved.is_floating_point else saved))
        return out

    def load(self, entries: list[Entry]) -> dict[str, torch.Tensor]:
        return {e.name: self._full(e.name) for e in entries}

    def _full(self, name: str) -> torch.Tensor:
        first = self.states[0][name]
        if _is_dtensor(first):
            mesh = first.device_mesh.mesh
            full = _assemble(name, self.states, mesh, first.placements, 0, ())
            if list(full.shape) != list(first.shape):
                raise MergeError(
                    f"{name}: the rank pieces make {list(full.shape)}, the DTensor says {list(first.shape)}"
                )
            return full
        for r, state in enumerate(self.states[1:], start=1):
            if not torch.equal(state[name], first):
                raise MergeError(
                    f"{name} is a plain tensor that differs between rank 0 and rank {r}: not a replicated buffer, "
                    "and a plain tensor carries no sharding layout to rebuild it from"
                )
        return first


def _is_dtensor(value: Any) -> bool:
    return hasattr(value, "placements") and hasattr(value, "_local_tensor")


def _local(value: torch.Tensor) -> torch.Tensor:
    return value._local_tensor if _is_dtensor(value) else value  # type: ignore[attr-defined]


def _assemble(
    name: str, states: list[dict[str, Any]], mesh: torch.Tensor, placements: Any, dim: int, coords: tuple[int, ...]
) -> torch.Tensor:
    """The tensor spanned by mesh dimensions `dim`.. at fixed coordinates `coords` of the ones before."""
    if dim == mesh.ndim:
        rank = int(mesh[coords])
        if rank >= len(states):
            raise MergeError(f"{name}: the device mesh names rank {rank}, but only {len(states)} rank files exist")
        return _local(states[rank][name])
    placement = placements[dim]
    if placement.is_replicate():
        return _assemble(name, states, mesh, placements, dim + 1, (*coords, 0))
    if placement.is_shard():
        pieces = [_assemble(name, states, mesh, placements, dim + 1, (*coords, i)) for i in range(mesh.shape[dim])]
        return torch.cat(pieces, dim=placement.dim)
    raise MergeError(f"{name}: placement {placement} (a pending reduction) cannot be merged")
