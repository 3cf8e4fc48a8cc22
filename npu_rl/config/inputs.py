"""The groups that say what is trained on: the model's weights (`model`) and the prompts (`data`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from npu_rl.config import environment
from npu_rl.config.fields import ConfigError, Section, join, knob


@dataclass
class ModelConfig(Section):
    """Which weights to train and how to hold them."""

    path: str = knob("", "Hugging Face model folder or hub id (required); a local-looking path must exist")
    tokenizer_path: str | None = knob(None, "tokenizer folder or hub id; null: model.path")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = knob(
        "auto", "parameter dtype; auto: bfloat16 on accelerators, float32 on CPU"
    )
    gradient_checkpointing: bool = knob(
        False, "recompute activations in backward (less memory, one more forward per backward)"
    )
    activation_offload: bool = knob(
        False,
        "with gradient_checkpointing: keep each decoder layer's input (all checkpointing keeps) in host memory "
        "between forward and backward (verl's enable_activation_offload; the fused layers of Llama-family models)",
    )
    trust_remote_code: bool = knob(False, "allow the model folder's own Python code (only for folders you trust)")
    fp32_lm_head: bool = knob(
        False,
        "compute the output head in fp32 (bf16 weights, fp32 product and logits) in the trainer, the reference, "
        "the hf rollout and vLLM (head_dtype=float32), so the engines' log-probs agree (TRL's "
        "cast_lm_head_to_fp32, ScaleRL); no effect on an fp32 model",
    )
    disable_dropout: bool = knob(
        True,
        "zero every dropout probability of the loaded models, so the old-log-prob pass, the reference and the "
        "update see the same function (TRL's disable_dropout; most LLMs have none)",
    )

    def check(self, path: str) -> None:
        if not self.path:
            raise ConfigError(f"{join(path, 'path')} is required (a Hugging Face model folder)")
        if self.activation_offload and not self.gradient_checkpointing:
            raise ConfigError(
                f"{join(path, 'activation_offload')} moves what gradient checkpointing keeps (each layer's input) to "
                f"host memory; set {join(path, 'gradient_checkpointing')}=true as well"
            )
        environment.check_local_path(self.path, join(path, "path"))
        if self.tokenizer_path:
            environment.check_local_path(self.tokenizer_path, join(path, "tokenizer_path"))


@dataclass
class DataConfig(Section):
    """Parquet files in verl's row schema and how prompts are batched."""

    train_files: list[str] = knob([], "training parquet files (required)")
    val_files: list[str] = knob([], "validation parquet files; empty: no validation")
    prompt_key: str = knob("prompt", "column holding the chat-message prompt")
    max_prompt_length: int = knob(512, "longest prompt in tokens (chat template applied)", gt=0)
    train_batch_size: int = knob(8, "prompts per step; each is sampled rollout.n times", gt=0)
    gen_batch_size: int | None = knob(
        None,
        "with algorithm.filter_groups (DAPO's dynamic sampling): prompts per generation batch, drawn and generated "
        "at once until train_batch_size informative groups are kept (verl's key); the data order and "
        "trainer.total_epochs count these batches; null: train_batch_size",
        gt=0,
    )
    val_batch_size: int = knob(64, "prompts per validation generate call", gt=0)
    val_max_samples: int = knob(-1, "validation prompts used; -1: the whole validation set", ge=-1)
    shuffle: bool = knob(True, "reshuffle the training prompts every epoch")
    seed: int = knob(1, "seed of the shuffling order", ge=0)
    filter_overlong_prompts: bool = knob(
        True, "drop prompts over max_prompt_length; false: data.truncation says what happens to them"
    )
    truncation: Literal["error", "left", "right", "middle"] = knob(
        "error",
        "a prompt over max_prompt_length when filter_overlong_prompts=false (verl's data.truncation): error, or cut "
        "to the limit keeping its last (left) / first (right) tokens, or both ends (middle: the first half and "
        "the last half); no effect while overlong prompts are filtered, as in verl",
    )
    apply_chat_template: bool = knob(
        True, "prompts are chat messages rendered by the tokenizer's template; false: plain strings, as written"
    )
    apply_chat_template_kwargs: dict[str, Any] = knob(
        {},
        "keyword arguments for the tokenizer's chat template, e.g. {enable_thinking: false} for Qwen3 (also used "
        "for multi-turn tool answers; verl's data.apply_chat_template_kwargs, TRL's chat_template_kwargs)",
    )

    def check(self, path: str) -> None:
        if not self.train_files:
            raise ConfigError(f"{join(path, 'train_files')} is required (one or more parquet files)")
        if self.gen_batch_size is not None and self.gen_batch_size < self.train_batch_size:
            raise ConfigError(
                f"{join(path, 'gen_batch_size')} ({self.gen_batch_size}) must be at least "
                f"{join(path, 'train_batch_size')} ({self.train_batch_size}): a step trains on that many groups"
            )

    @property
    def generation_batch_size(self) -> int:
        """Prompts per generation batch (the sampler's batch)."""
        return self.gen_batch_size or self.train_batch_size
