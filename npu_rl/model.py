"""Loading the policy and reference models and their tokenizer from a Hugging Face folder."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from npu_rl.config import ModelConfig
from npu_rl.device import Accelerator

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, acc: Accelerator) -> torch.dtype:
    """`auto` is bf16 on accelerators (FSDP keeps fp32 reduction) and fp32 on the CPU."""
    return acc.default_dtype() if name == "auto" else _DTYPES[name]


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`from_pretrained`'s dtype argument: `dtype=` since transformers 4.56, `torch_dtype=` before.

    Older releases do not know `dtype=` and pass it on to the model's config, silently loading fp32.
    """
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_tokenizer(cfg: ModelConfig) -> Any:
    # A missing chat template is reported by npu_rl.data when the prompts need one (chat-formatted data);
    # plain-string prompts (data.apply_chat_template=false) work with a base model's tokenizer.
    return AutoTokenizer.from_pretrained(cfg.tokenizer_path or cfg.path, trust_remote_code=cfg.trust_remote_code)


def load_model(cfg: ModelConfig, acc: Accelerator, *, trainable: bool) -> nn.Module:
    """The causal LM on the chosen device; a frozen copy (`trainable=False`) is put in eval mode."""
    model = AutoModelForCausalLM.from_pretrained(
        cfg.path,
        **dtype_kwarg(resolve_dtype(cfg.dtype, acc)),
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation="sdpa",
    )
    model.config.use_cache = False
    if trainable and cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not trainable:
        model.requires_grad_(False)
        model.eval()
    return model


def num_parameters(model: nn.Module) -> int:
    """Parameter count of the whole model (each tied weight once), for MFU."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
