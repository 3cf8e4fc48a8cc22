"""Loading the policy and reference models and their tokenizer from a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from npu_rl.config import ModelConfig
from npu_rl.config.environment import looks_local
from npu_rl.device import Accelerator
from npu_rl.head import use_fp32_head

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


MODEL_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def source_kwargs(path: str, key: str, expect: tuple[str, ...] = ()) -> dict[str, Any]:
    """`from_pretrained` arguments for `path`: a local-looking one must be a folder and is read offline,
    so a typo fails at once naming the path instead of asking the Hub about it (or retrying for a minute).
    The folder must hold one of the `expect` files (transformers' own error for a folder without them
    is a long traceback about hub repo ids or slow tokenizers)."""
    if not path:
        raise FileNotFoundError(f"{key} is empty; set it to a Hugging Face model folder")
    if not looks_local(path):
        return {}
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"{key}={path!r} {what}; expected a Hugging Face model folder (with config.json)")
    if expect and not any((folder / name).is_file() for name in expect):
        raise FileNotFoundError(f"{key}={path!r} has no {' or '.join(expect)}; point it to a Hugging Face model folder")
    return {"local_files_only": True}


def pretrained(loader: Any, path: str, key: str, expect: tuple[str, ...], **kwargs: Any) -> Any:
    """`loader.from_pretrained(path, **kwargs)` under `source_kwargs`' rules. A Hub id that cannot be
    fetched (no network, a typo in the id, a gated repo) is reported in one line naming the key, where
    transformers would end the run in a traceback about its cache."""
    source = source_kwargs(path, key, expect)
    try:
        return loader.from_pretrained(path, **kwargs, **source)
    except OSError as err:
        if source:  # a local folder: transformers' message names the file that is wrong
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FileNotFoundError(
            f"{key}={path!r} is no folder here and could not be loaded from the Hub ({reason}); "
            "give a local model folder, or check the repo id and the network (HF_HUB_OFFLINE=1 reads the cache only)"
        ) from err


def load_tokenizer(cfg: ModelConfig) -> Any:
    path, key = (cfg.tokenizer_path, "model.tokenizer_path") if cfg.tokenizer_path else (cfg.path, "model.path")
    # A missing chat template is reported by npu_rl.data when the prompts need one (chat-formatted data);
    # plain-string prompts (data.apply_chat_template=false) work with a base model's tokenizer.
    return pretrained(AutoTokenizer, path, key, TOKENIZER_FILES, trust_remote_code=cfg.trust_remote_code)


def load_model(cfg: ModelConfig, acc: Accelerator, *, trainable: bool) -> nn.Module:
    """The causal LM on the chosen device; a frozen copy (`trainable=False`) is put in eval mode."""
    model = pretrained(
        AutoModelForCausalLM, cfg.path, "model.path", MODEL_FILES,
        **dtype_kwarg(resolve_dtype(cfg.dtype, acc)), trust_remote_code=cfg.trust_remote_code,
        attn_implementation="sdpa",
    )  # fmt: skip
    model.config.use_cache = False
    if cfg.fp32_lm_head:
        use_fp32_head(model)
    if cfg.disable_dropout:
        disable_dropout(model)
    if trainable and cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not trainable:
        model.requires_grad_(False)
        model.eval()
    return model


def disable_dropout(model: nn.Module) -> None:
    """Zero the dropout of every `nn.Dropout` and the float dropout rates attention modules read at call
    time (transformers' `attention_dropout`); the model's config.json is left as it was."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout", "hidden_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


@torch.no_grad()
def mix_into(target: nn.Module, source: nn.Module, alpha: float) -> None:
    """target <- alpha * source + (1 - alpha) * target, parameter by parameter (TR-DPO's reference update,
    `ref.sync_steps`). Both are built from the same folder and sharded alike, so each rank mixes its own
    shards (DTensor local tensors; the target's may rest on the CPU, offloaded)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        local_t = t.to_local() if isinstance(t, DTensor) else t
        local_s = s.to_local() if isinstance(s, DTensor) else s
        local_t.mul_(1.0 - alpha).add_(local_s.detach().to(device=local_t.device, dtype=local_t.dtype), alpha=alpha)


def num_parameters(model: nn.Module) -> int:
    """Parameter count of the whole model (each tied weight once), for MFU."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
