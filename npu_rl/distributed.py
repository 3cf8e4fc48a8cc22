"""torch.distributed and FSDP2 for the trainer: one code path from a single process to many nodes.

Launch is torchrun's job (`torchrun --nproc_per_node N -m npu_rl.train ...`); a plain
`python -m npu_rl.train` runs as world size 1 with no process group at all, so nothing here may
assume one exists. Every helper below degrades to a no-op (or to the plain single-process
computation) in that case, which keeps the trainer free of `if distributed:` branches.

The collectives are torch's own (HCCL on NPU, NCCL on CUDA, gloo on CPU, picked by the device
layer); this module only decides how the model is sharded and how to read it back.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate

from npu_rl.config import FSDPConfig
from npu_rl.device import Accelerator

TIMEOUT_ENV = "NPU_RL_DIST_TIMEOUT_S"


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        """True under torchrun, even with one process: FSDP and DCP then run their collective paths."""
        return self.world_size > 1 or _pg_ready()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pg_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def _torchrun_env() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(acc: Accelerator) -> DistInfo:
    """Join the torchrun job described by the environment, or run alone when there is none.

    The device is pinned to LOCAL_RANK before the process group exists so that HCCL/NCCL bind the
    right card. Calling this twice returns the existing group's view.
    """
    if _pg_ready():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if not _torchrun_env():
        if acc.type == "cpu":
            return DistInfo()
        # Alone on an accelerator, still go through FSDP2 (as a world of one): its mixed precision
        # keeps fp32 master weights for AdamW while computing in bf16, one code path with torchrun.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"RANK/WORLD_SIZE are set but {', '.join(missing)} is not: launch with torchrun "
            "(it sets all of them) or unset RANK and WORLD_SIZE for a single process"
        )
    acc.set_device(local_rank)
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 1800)))
    dist.init_process_group(backend=acc.dist_backend, rank=rank, world_size=world_size, timeout=timeout)
    return DistInfo(rank, world_size, local_rank)


def comm_device() -> torch.device:
    """Where this rank's collectives run, read from the process group itself (no module state):
    the CPU for gloo (and without a group), this rank's card for HCCL / NCCL. Metric tensors often
    live on the CPU, which HCCL/NCCL cannot reduce, so they are staged here."""
    if not _pg_ready():
        return torch.device("cpu")
    return Accelerator.for_backend(dist.get_backend()).torch_device(int(os.environ.get("LOCAL_RANK", 0)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def destroy() -> None:
    """Leave the process group (a no-op without one), so the process exits without NCCL/HCCL warnings."""
    if _pg_ready():
        dist.destroy_process_group()


def barrier() -> None:
    if _pg_ready():
        dist.barrier()


_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce `tensor` in place across all ranks and return it; single-process it is returned as is.

    "mean" is a sum divided by the world size because gloo has no AVG. A CPU tensor under HCCL/NCCL
    is reduced through a device copy, so metric code can stay device-agnostic.
    """
    if op not in _OPS:
        raise ValueError(f"all_reduce op must be one of {sorted(_OPS)}, got {op!r}")
    if not _pg_ready():
        return tensor
    target = comm_device()
    work = tensor if tensor.device.type == target.type else tensor.to(target)
    dist.all_reduce(work, op=_OPS[op])
    if op == "mean":
        work /= dist.get_world_size()
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def all_gather_object(obj: object) -> list[object]:
    """Every rank's `obj` (picklable, small), in rank order, in one collective; `[obj]` alone.

    Step metrics are reduced this way: each rank sends its local sums, maxima and minima keyed by
    name and reduces the gathered dicts itself, one collective per step however many metrics,
    and a metric that only some ranks recorded (a reward component no item of a rank produced)
    cannot desynchronise the ranks.
    """
    if not _pg_ready():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def device_mesh(acc: Accelerator, fsdp_size: int = -1) -> DeviceMesh:
    """The data-parallel mesh: 1-D ("fsdp") over every rank, or 2-D ("ddp", "fsdp") for HSDP.

    verl's create_device_mesh rule, so a verl fsdp_size means the same here: a negative size or one
    of at least the world size shards over every rank; a smaller one shards within consecutive groups
    of `fsdp_size` ranks (torchrun numbers a node's ranks consecutively, so a node's card count keeps
    every all-gather and reduce-scatter inside the node) and replicates across the groups, whose
    gradients FSDP2 then all-reduces once per step. Every rank is still one data-parallel rank.
    """
    world = dist.get_world_size()
    if fsdp_size < 0 or fsdp_size >= world:
        return init_device_mesh(acc.type, (world,), mesh_dim_names=("fsdp",))
    return init_device_mesh(acc.type, (world // fsdp_size, fsdp_size), mesh_dim_names=("ddp", "fsdp"))


def _block_modules(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks, each of which becomes its own FSDP unit.

    Hugging Face models name their block class in `_no_split_modules` (Qwen2DecoderLayer, ...);
    `model.model.layers` is the fallback for models that do not.
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        layers = getattr(getattr(model, "model", None), "layers", None)
        blocks = list(layers) if layers is not None else []
    if not blocks:
        raise ValueError(
            f"cannot find the decoder layers of {type(model).__name__} to shard: expected "
            "`_no_split_modules` or `model.model.layers`"
        )
    return blocks


def fp32_masters(model: nn.Module) -> None:
    """Cast the parameters that train, and the floating buffers, to fp32 in place; frozen parameters
    keep their dtype. In place (`.data`), so tied weights stay one tensor, as `Module.to` keeps them."""
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point():
            param.data = param.data.float()
    for buf in model.buffers():
        if buf.is_floating_point():
            buf.data = buf.data.float()


def shard_model(
    model: nn.Module, fsdp_cfg: FSDPConfig, acc: Accelerator, dist_info: DistInfo, *, trainable: bool
) -> nn.Module:
    """Apply FSDP2 `fully_shard` to each decoder layer and then to the root; no-op without a process group.

    Pass the model while it is still on the CPU: FSDP moves one layer at a time to the device and
    keeps only its shard, so no rank ever holds the whole model on the card.

    Under mixed precision the trainable parameters are first cast to fp32: the sharded parameters are
    the optimizer's master weights, while FSDP all-gathers bf16 copies for compute and reduces gradients
    in fp32. Frozen parameters keep the dtype they were loaded in (`model.dtype`, bf16 on a card): a
    whole frozen model (the reference) and the frozen base under LoRA adapters, whose fp32 copy would
    only be rounded back to the same bf16 for every forward (7B: 15 GB saved). `param_offload`
    parks its shards in host memory between uses, `optimizer_offload` does the same for a trainable
    model, whose AdamW then steps on the host (meaningless, and skipped, on the CPU).
    Tied input/output embeddings sit in the root unit together, so the tie survives sharding.
    """
    if not dist_info.is_distributed:
        return model
    on_accel = acc.type != "cpu"
    if fsdp_cfg.mixed_precision and on_accel:
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if trainable:
            fp32_masters(model)
    else:
        mp = MixedPrecisionPolicy()
    # FSDP2 offloads parameter, gradient and optimizer shards together: either flag turns it on.
    offloaded = (fsdp_cfg.param_offload or (trainable and fsdp_cfg.optimizer_offload)) and on_accel
    offload = CPUOffloadPolicy(pin_memory=True) if offloaded else OffloadPolicy()
    if not trainable:
        model.requires_grad_(False)
    mesh = device_mesh(acc, fsdp_cfg.fsdp_size)
    kwargs = dict(mesh=mesh, mp_policy=mp, offload_policy=offload)
    for block in _block_modules(model):
        fully_shard(block, reshard_after_forward=fsdp_cfg.reshard_after_forward, **kwargs)
    # A trainable root is used last in forward and first in backward: keeping it gathered saves an
    # all-gather. A frozen model has no backward, so its root reshards like the layers.
    root_reshard = fsdp_cfg.reshard_after_forward if not trainable else False
    fully_shard(model, reshard_after_forward=root_reshard, **kwargs)
    return model


def clip_grad_norm_(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale gradients so their global L2 norm is at most `max_norm`; return that norm before clipping.

    Works on FSDP2's sharded DTensor gradients (squared norms of the local shards are summed across
    the mesh, one all-reduce) and on plain gradients alike. The returned plain tensor is the same on
    every rank. When the norm is not finite the gradients are left untouched so the caller can skip
    `optimizer.step()` for this batch instead of writing NaN into the weights.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    target = comm_device()
    sharded_sq = torch.zeros((), dtype=torch.float32, device=target)
    plain_sq = torch.zeros((), dtype=torch.float32, device=target)
    group = None
    locals_: list[torch.Tensor] = []
    for p in params:
        if isinstance(p, DTensor) and group is None:
            # Squares summed over the ranks one copy is sharded across: under HSDP the "ddp" replicas
            # hold the same shards again and must not be counted twice.
            group = p.device_mesh.get_group("fsdp")
        g = p.grad
        if g is None:
            continue
        if isinstance(g, DTensor):
            local = g.to_local()
            sq = torch.linalg.vector_norm(local, dtype=torch.float32).square().to(target)
            if all(isinstance(pl, Replicate) for pl in g.placements):
                plain_sq += sq
            else:
                sharded_sq += sq
        else:
            local = g
            plain_sq += torch.linalg.vector_norm(local, dtype=torch.float32).square().to(target)
        locals_.append(local)
    if group is not None:  # every rank holds DTensor params, so every rank joins this all-reduce
        dist.all_reduce(sharded_sq, group=group)
    total = (sharded_sq + plain_sq).sqrt()
    if torch.isfinite(total):
        coef = float(max_norm) / (float(total) + 1e-6)
        if coef < 1.0:
            with torch.no_grad():
                for local in locals_:
                    local.mul_(coef)
    return total


def iter_full_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, full tensor) for every parameter and persistent buffer, one at a time.

    Sharded tensors are all-gathered individually, so a rank never holds more than one full tensor
    beyond its shards: this feeds the rollout engine's weight sync and HF weight export. Every rank
    must consume the iterator to the end in the same order (each item is a collective). `dtype`
    casts floating tensors before the gather (halving traffic for a bf16 rollout engine). Tied
    weights appear under both names. Single-process, the tensors alias the live parameters.
    """
    target = comm_device()
    for name, tensor in model.state_dict().items():
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if isinstance(tensor, DTensor):
            if tensor.device.type != target.type:  # shards offloaded to host memory
                tensor = tensor.to(target)
            tensor = tensor.full_tensor()
        yield name, tensor.detach()


@contextmanager
def gathered_params(model: nn.Module) -> Iterator[None]:
    """Hold every FSDP unit of `model` unsharded for the duration; a no-op for a plain module.

    Generation needs this: each forward of a sharded model all-gathers, and ranks that stop
    decoding at different steps would leave the others waiting in that all-gather forever.
    With full weights held, decode steps run without collectives (entering and leaving are
    collectives, made by every rank at the same point). Costs one full copy of the weights per
    rank while generating, as verl's HF rollout does.
    """
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    # FSDP2 keeps "reshard after forward" per parameter group; remember it to restore it exactly.
    saved = [(g, g.post_forward_mesh_info) for m in units for g in m._get_fsdp_state()._fsdp_param_groups]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for group, mesh_info in saved:
            group.post_forward_mesh_info = mesh_info
        for unit in units:
            unit.reshard()
