"""Process environment a colocated vLLM / vllm-ascend engine needs, decided in code before it starts.

Two settings cannot be left to launch scripts, because a script does not know the run's config:

- Expandable segments off under sleep mode. vLLM's sleep mode (`rollout.free_cache_engine=true`)
  allocates the engine's memory from a pool that must keep fixed addresses; vllm-ascend (and vLLM on
  CUDA) refuse to start when `expandable_segments:True` is in the allocator config, and where they do
  not refuse the first sleep frees nothing (ms-swift#6636; vllm-ascend #5855 only turns expandable
  segments on when sleep mode is off). So when sleep mode is on, `expandable_segments:True` is taken
  out of `PYTORCH_NPU_ALLOC_CONF` / `PYTORCH_CUDA_ALLOC_CONF` / `PYTORCH_ALLOC_CONF` (other options are
  kept) and, where torch allows it, switched off in this process's allocator at runtime as well.
- `VLLM_ASCEND_ENABLE_NZ=0` on Ascend unless the user set it: the NZ weight layout changes the
  rollout's numerics against the trainer's, which RL's importance ratios see (the Ascend GRPO sample
  sets it to 0 for this reason).

HCCL timeouts and ports must exist before the process group starts, so they stay in the launch
scripts (run/qwen2_5_1_5b_grpo.sh) and the Docker image.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

from npu_rl.device import Accelerator

ALLOC_CONF_VARS = ("PYTORCH_NPU_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def without_expandable_segments(conf: str) -> str:
    """`conf` with every `expandable_segments:True` option removed, the other options in order."""
    options = [o.strip() for o in conf.split(",") if o.strip()]
    kept = [o for o in options if o.replace(" ", "").lower() != "expandable_segments:true"]
    return ",".join(kept)


def _disable_in_process(device_type: str) -> None:
    """Best effort: an allocator already initialised with expandable segments reads the env no more."""
    try:
        if device_type == "npu":
            import torch_npu  # type: ignore[import-not-found]  # noqa: F401 - registers torch.npu

        Accelerator(device_type).set_allocator_settings("expandable_segments:False")
    except Exception as err:  # an older torch / torch_npu without the runtime switch: the env change stands
        print(f"[npu_rl] note: could not switch expandable segments off at runtime ({err})", file=sys.stderr)


def prepare_vllm_env(
    sleep_mode: bool, device_type: str, environ: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """Apply the settings above to `environ` (the process environment); returns what was changed."""
    env = os.environ if environ is None else environ
    changed: dict[str, str] = {}
    if sleep_mode:
        for var in ALLOC_CONF_VARS:
            if var in env:
                new = without_expandable_segments(env[var])
                if new != env[var]:
                    changed[var] = new
        if changed:
            print(
                "[npu_rl] vLLM sleep mode (rollout.free_cache_engine) is on: expandable_segments:True "
                f"removed from {', '.join(changed)}, which sleep mode cannot work with",
                file=sys.stderr,
            )
            if device_type in ("npu", "cuda") and environ is None:
                _disable_in_process(device_type)
    if device_type == "npu" and "VLLM_ASCEND_ENABLE_NZ" not in env:
        changed["VLLM_ASCEND_ENABLE_NZ"] = "0"
    for var, value in changed.items():
        if value:
            env[var] = value
        else:
            env.pop(var, None)  # nothing left of the option list
    return changed
