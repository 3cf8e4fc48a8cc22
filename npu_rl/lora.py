"""LoRA training through peft (`actor.lora.rank > 0`): small adapters trained, the base frozen.

The adapters are injected into the Hugging Face model in place (peft's `inject_adapter_in_model`,
no PeftModel wrapper), so the model keeps its class, config and `generate`, the trainer, FSDP and
the checkpoint code see an ordinary module, and only the adapter weights need gradients and AdamW
state: for a 7B model that is what lets it train on one 64 GB card. The LoRA scaling
(alpha / rank) is kept in the model's state dict as a buffer (`lora_scaling`), so a checkpoint
carries what is needed to merge it.

Everything outside the trainer sees merged weights W + scaling * B @ A under the base model's
names (`merged_tensors`): the rollout engines' weight sync, the merge tool and so evaluation.
The fused/packed forwards and the fast decoder read weights directly; they fold each decoder-layer
adapter in as W + scaling * B @ A (npu_rl.llama.weight_of), so a LoRA model keeps the packed,
padding-free passes. Adapters on the embedding or LM head are not read there: such a model takes the
transformers path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

SCALING_BUFFER = "lora_scaling"
_MARKERS = (".lora_A.", ".lora_B.", ".base_layer.")


def wrap(model: nn.Module, rank: int, alpha: float, target_modules: list[str]) -> nn.Module:
    """Inject LoRA adapters (B initialised to zero: the model's outputs are unchanged) and freeze
    everything else; returns the same module."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:  # pragma: no cover - the lora extra is installed in CI
        raise ImportError("actor.lora.rank > 0 needs peft: pip install 'npu_rl[lora]'") from err
    # peft reads "all-linear" (every linear but the output head) only as a plain string, not inside a list
    targets: str | list[str] = "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none")
    model.requires_grad_(False)
    try:
        model = inject_adapter_in_model(config, model)
    except ValueError as err:  # peft's "Target modules ... not found"
        raise ValueError(f"actor.lora.target_modules {list(target_modules)} matched no linear layer: {err}") from None
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_A." in name or ".lora_B." in name)
    ref = next(model.parameters())
    model.register_buffer(SCALING_BUFFER, torch.tensor(alpha / rank, dtype=torch.float32, device=ref.device))
    return model


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The frozen base under the adapters, with them switched off (peft's per-layer switch, which
    also sets and then restores their requires_grad): a LoRA run's reference policy without a second
    copy of the weights, as verl computes it. A model without adapters is left as it is."""
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "enable_adapters")]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, SCALING_BUFFER)


def is_lora_name(name: str) -> bool:
    return name == SCALING_BUFFER or any(m in name for m in _MARKERS)


def merged_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """(base name, tensor) with each adapted weight merged, from a LoRA model's state-dict stream.

    Streams: a layer's base weight is held only until its A and B have passed (state-dict order
    keeps them together). Names that are not LoRA's pass through unchanged, so a plain model's
    stream comes out as it went in.
    """
    scaling: float | None = None
    held: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in named:
        if name == SCALING_BUFFER:
            scaling = float(tensor)
            continue
        if ".lora_A." in name or ".lora_B." in name or ".base_layer.weight" in name:
            module = name.split(".lora_")[0].split(".base_layer.")[0]
            kind = "A" if ".lora_A." in name else "B" if ".lora_B." in name else "W"
            parts = held.setdefault(module, {})
            parts[kind] = tensor
            if len(parts) == 3:
                if scaling is None:
                    raise ValueError(f"LoRA weights without the {SCALING_BUFFER!r} entry: cannot merge {module}")
                del held[module]
                a, b, w = parts["A"], parts["B"], parts["W"]
                delta = (b.float() @ a.float()) * scaling
                yield f"{module}.weight", (w.float() + delta).to(w.dtype)
            continue
        yield name.replace(".base_layer.", "."), tensor
    if held:
        raise ValueError(f"incomplete LoRA weights for {sorted(held)[:3]}: each needs base, lora_A and lora_B")
