"""The device layer: the only place that knows whether we run on an Ascend NPU, a CUDA GPU or the CPU.

Every other module asks this one for the device, the distributed backend, synchronisation,
memory statistics and peak FLOP/s. That keeps the NPU and CUDA paths a few lines each (they
cannot run on the CPU machines the project is tested on) and lets the selection logic itself be
tested everywhere.
"""

from __future__ import annotations

import importlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

ENV_OVERRIDE = "NPU_RL_DEVICE"

# Peak dense bf16 FLOP/s per device, for MFU. Matched by substring of the device name, longest first.
PEAK_BF16_FLOPS: dict[str, float] = {
    "Ascend910B1": 414e12,
    "Ascend910B2": 376e12,
    "Ascend910B3": 313e12,
    "Ascend910B4": 280e12,
    "Ascend910_9391": 376e12,  # Atlas A3 die
    "Ascend910": 313e12,  # unspecified 910 variant: the Atlas A2 training card's figure
    "A100": 312e12,
    "H100": 989e12,
    "H800": 989e12,
    "H200": 989e12,
    "H20": 148e12,
    "L40S": 362e12,
    "A800": 312e12,
}


class DeviceError(RuntimeError):
    """The requested accelerator cannot be used; the message says what to install or set."""


@dataclass(frozen=True)
class Accelerator:
    """What the rest of the package needs to know about the chosen device type."""

    type: str  # "npu" | "cuda" | "cpu"

    @property
    def dist_backend(self) -> str:
        return {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}[self.type]

    @property
    def visible_devices_env(self) -> str | None:
        return {"npu": "ASCEND_RT_VISIBLE_DEVICES", "cuda": "CUDA_VISIBLE_DEVICES", "cpu": None}[self.type]

    @property
    def module(self) -> ModuleType | None:
        """`torch.npu` / `torch.cuda`; None on the CPU."""
        if self.type == "cpu":
            return None
        return getattr(torch, self.type)

    @classmethod
    def for_backend(cls, backend: str) -> Accelerator:
        """The device type a torch.distributed backend communicates on (gloo: the CPU)."""
        types = {"hccl": "npu", "nccl": "cuda", "gloo": "cpu"}
        if backend not in types:
            raise DeviceError(f"unknown torch.distributed backend {backend!r}; expected one of {sorted(types)}")
        return cls(types[backend])

    def torch_device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cpu") if self.type == "cpu" else torch.device(self.type, local_rank)

    def set_device(self, local_rank: int) -> None:
        if self.module is not None:
            self.module.set_device(local_rank)

    def synchronize(self) -> None:
        if self.module is not None:
            self.module.synchronize()

    def empty_cache(self) -> None:
        if self.module is not None:
            self.module.empty_cache()

    def memory_stats(self) -> dict[str, float]:
        """Allocated / reserved / peak memory in GiB (process RSS on the CPU), and the host's used
        memory as verl logs it (where offloaded optimizer states and parameters live)."""
        gib = 1024**3
        host = host_memory_used_gib()
        stats = {} if host is None else {"perf/cpu_memory_used_gb": host}
        if self.module is None:
            import resource

            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return {**stats, "perf/cpu_peak_rss_gb": peak_kib * 1024 / gib}
        return {
            **stats,
            "perf/max_memory_allocated_gb": self.module.max_memory_allocated() / gib,
            "perf/max_memory_reserved_gb": self.module.max_memory_reserved() / gib,
        }

    def memory_free_total(self) -> tuple[int, int] | None:
        """(free, total) bytes of the current device as its driver reports them, after returning the
        caching allocator's unused blocks; None on the CPU."""
        if self.module is None:
            return None
        self.module.empty_cache()
        free, total = self.module.mem_get_info()
        return int(free), int(total)

    def set_allocator_settings(self, settings: str) -> bool:
        """Change the caching allocator's settings at runtime (e.g. "expandable_segments:False");
        False where this torch / torch_npu has no runtime switch (then only the env var applies)."""
        memory = getattr(self.module, "memory", None)
        setter = getattr(memory, "_set_allocator_settings", None)
        if setter is None:
            return False
        setter(settings)
        return True

    def device_name(self) -> str:
        if self.module is None:
            return "cpu"
        return str(self.module.get_device_name())

    def peak_flops(self) -> float | None:
        """Peak bf16 FLOP/s of one device, or None where unknown (the CPU): MFU is then not logged."""
        return peak_flops_for(self.device_name()) if self.type != "cpu" else None

    def default_dtype(self) -> torch.dtype:
        return torch.float32 if self.type == "cpu" else torch.bfloat16


def host_memory_used_gib() -> float | None:
    """The machine's used memory in GiB: MemTotal - MemAvailable, which is psutil.virtual_memory().used
    on Linux (verl's `perf/cpu_memory_used_gb`); None where /proc/meminfo is not there."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total, available = (int(fields[key].split()[0]) for key in ("MemTotal", "MemAvailable"))
    except (OSError, KeyError, ValueError):
        return None
    return (total - available) / 1024**2  # kB -> GiB


def peak_flops_for(device_name: str) -> float | None:
    compact = device_name.replace(" ", "")
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in compact:
            return PEAK_BF16_FLOPS[key]
    return None


def _npu_available() -> bool:
    try:
        importlib.import_module("torch_npu")
    except ImportError:
        return False
    return bool(hasattr(torch, "npu") and torch.npu.is_available())


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def select(requested: str = "auto") -> Accelerator:
    """Pick the device type: NPU_RL_DEVICE env > `trainer.device` > npu > cuda > cpu."""
    choice = os.environ.get(ENV_OVERRIDE) or requested or "auto"
    if choice == "auto":
        if _npu_available():
            return Accelerator("npu")
        if _cuda_available():
            return Accelerator("cuda")
        return Accelerator("cpu")
    if choice == "npu":
        try:
            importlib.import_module("torch_npu")
        except ImportError as err:
            raise DeviceError(
                "device 'npu' needs torch_npu: install the CANN toolkit, then `pip install 'npu_rl[npu]'` "
                "(torch_npu matching your torch version) and source CANN's set_env.sh"
            ) from err
        if not torch.npu.is_available():
            raise DeviceError("torch_npu is installed but no NPU is visible; check ASCEND_RT_VISIBLE_DEVICES")
        return Accelerator("npu")
    if choice == "cuda":
        if not _cuda_available():
            raise DeviceError("device 'cuda' requested but torch.cuda is not available (CPU-only torch build?)")
        return Accelerator("cuda")
    if choice == "cpu":
        return Accelerator("cpu")
    raise DeviceError(f"unknown device {choice!r}; use auto, npu, cuda or cpu")


def seed_everything(seed: int, acc: Accelerator) -> None:
    """Seed Python, NumPy, torch's host generator and `acc`'s generators (the run's configured
    device only: another visible device is never touched), so a run and its resume draw the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    if acc.module is not None:
        acc.module.manual_seed_all(seed)


def rng_state(acc: Accelerator) -> dict:
    """Every RNG a step draws from, for checkpoints: the host's and those of `acc` (the run's
    configured device; another visible device is never touched)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if acc.module is not None:
        state[acc.type] = acc.module.get_rng_state_all()
    return state


def set_rng_state(state: dict, acc: Accelerator) -> None:
    """Restore `rng_state`'s RNGs; an accelerator's state is restored only on that configured device."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if acc.module is not None and acc.type in state:
        acc.module.set_rng_state_all(state[acc.type])


def cpu_threads(requested: int = 0) -> int:
    """Intra-op threads for a CPU process: `requested`, or (0) the cores this process may run on
    (its affinity mask, which containers and taskset narrow; torch's own default counts every
    physical core) shared among the ranks torchrun started on this node."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
