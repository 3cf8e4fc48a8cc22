"""Run a test function in N real processes joined by a gloo process group, as torchrun would.

Workers are spawned (not forked) so each imports torch afresh, exactly like a torchrun launch; an
assertion failing in any worker fails the calling test with that worker's traceback. Collectives
time out after a minute so a bug cannot hang the test run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    import _tolerances

    from npu_rl.device import Accelerator
    from npu_rl.distributed import barrier, destroy, init_distributed

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        NPU_RL_DIST_TIMEOUT_S="60",
        NPU_RL_DEVICE="cpu",
    )
    torch.set_num_threads(1)
    _tolerances.install()
    info = init_distributed(Accelerator("cpu"))
    fn(info, *args)
    barrier()  # no rank tears the group down while another still talks to it
    destroy()
    # Skip interpreter teardown: gloo's background threads sometimes abort the process there
    # ("terminate called without an active exception") after the work has passed.
    os._exit(0)


def run_workers(fn: Callable[..., None], world_size: int, *args: Any) -> None:
    """Call `fn(dist_info, *args)` on `world_size` ranks; `fn` must be a module-level function."""
    mp.start_processes(
        _entry, args=(world_size, free_port(), fn, args), nprocs=world_size, join=True, start_method="spawn"
    )
