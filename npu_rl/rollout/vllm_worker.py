"""Methods mixed into every vLLM worker (`worker_extension_cls`) so the trainer can stream weights in.

vLLM re-lays out weights after loading (fused qkv / gate_up projections, CPU GEMM repacking,
quantisation), so a live model cannot simply `load_weights` Hugging Face tensors again. Its
layerwise reload does: `initialize_layerwise_reload` moves every layer's parameters to the meta
device and wraps their loaders, `model.load_weights` buffers the incoming tensors of a layer until
the layer is complete and then processes it into the original storage, and
`finalize_layerwise_reload` restores anything untouched. `Worker.reload_weights(weights_iterator=...)`
runs those three stages in one call; here they are split over three RPCs so the trainer can send
its weights in buckets without ever holding a second full copy. A bucket may end in the middle of
a fused layer: the layer simply waits for its remaining tensors in the next bucket (per-bucket
`reload_weights` calls would instead finalise it half-loaded). This is the same lifecycle as vLLM's
own weight-transfer engines, without their CUDA-only transports, so it also runs on the CPU and
under vllm-ascend.

The methods are prefixed `npu_rl_` because vLLM refuses extension attributes that clash with the
worker's own.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class WeightSyncExtension:
    """Worker-side half of `VLLMRollout.update_weights`; `self` is the vLLM worker."""

    def npu_rl_begin_weight_sync(self) -> None:
        """Open a sync: put every layer into layerwise-reload mode."""
        from vllm.config import set_current_vllm_config

        try:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload
        except ImportError as err:
            raise RuntimeError(f"rollout.name=vllm needs vLLM >= 0.18 (layerwise weight reload): {err}") from err
        if getattr(self, "_npu_rl_loaded", None) is not None:
            raise RuntimeError("a weight sync is already open on this worker (missing npu_rl_finish_weight_sync)")
        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())
        self._npu_rl_loaded: set[str] | None = set()

    def npu_rl_load_weight_bucket(self, bucket: Iterable[tuple[str, torch.Tensor]] | bytes) -> int:
        """Load one bucket of (Hugging Face name, full tensor), given as pairs or as a safetensors blob
        (how it crosses a process boundary); returns how many names the model took."""
        from vllm.config import set_current_vllm_config

        if getattr(self, "_npu_rl_loaded", None) is None:
            raise RuntimeError("npu_rl_load_weight_bucket called outside a sync (call npu_rl_begin_weight_sync)")
        if isinstance(bucket, (bytes, bytearray, memoryview)):
            from safetensors.torch import load

            named_tensors: Iterable[tuple[str, torch.Tensor]] = load(bytes(bucket)).items()
        else:
            named_tensors = bucket
        with set_current_vllm_config(self.vllm_config):
            loaded = self.model_runner.get_model().load_weights(named_tensors)
        self._npu_rl_loaded.update(loaded or ())
        return len(loaded or ())

    def npu_rl_finish_weight_sync(self) -> list[str]:
        """Close the sync: process layers still pending, then drop caches built from the old weights.

        Returns the model parameters that received no tensor, so the caller can refuse a partial sync.
        """
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        loaded = getattr(self, "_npu_rl_loaded", None)
        if loaded is None:
            raise RuntimeError("npu_rl_finish_weight_sync called without npu_rl_begin_weight_sync")
        model = self.model_runner.get_model()
        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(model, self.model_config)
        self._npu_rl_loaded = None
        runner = self.model_runner
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            if hasattr(runner, reset):
                getattr(runner, reset)()
        return sorted(name for name, _ in model.named_parameters() if name not in loaded)
