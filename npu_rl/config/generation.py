"""The config groups of response generation: the rollout backend and its sampling, the vLLM engine's
settings, validation sampling (`rollout.val_kwargs`) and multi-turn tool use (`rollout.multi_turn`).

Split from npu_rl.config.schema, which assembles them into the run's `Config`; declared the same way
(`knob(...)` per key, each group's own `check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from npu_rl import configs
from npu_rl.config import environment
from npu_rl.config.fields import ConfigError, Section, join, knob


@dataclass
class ValKwargs(Section):
    """Sampling for validation."""

    n: int = knob(1, "samples per validation prompt (mean@n, best@n, maj@n)", gt=0)
    temperature: float = knob(0.0, "sampling temperature; 0: greedy", ge=0)
    top_p: float = knob(1.0, "nucleus sampling mass", gt=0, le=1)
    top_k: int = knob(-1, "sample among the k most likely tokens; -1 or 0: off", ge=-1)


@dataclass
class MultiTurnConfig(Section):
    """Multi-turn tool use: the policy may call tools between assistant turns (docs/multi_turn.md)."""

    enable: bool = knob(False, "generate in turns, executing the tool calls the model makes")
    tool_config_path: str | None = knob(
        None, "verl-style tool config YAML (required when enabled, unless interaction_config_path is set)"
    )
    interaction_config_path: str | None = knob(
        None,
        "verl-style interaction config YAML: simulated user turns after assistant turns that call no tool, for "
        "rows with extra_info.interaction_kwargs (docs/multi_turn.md)",
    )
    max_user_turns: int | None = knob(
        None, "simulated user replies per response; null: bounded by max_assistant_turns only (verl's)", gt=0
    )
    interaction_timeout_s: float = knob(
        10.0, "wall clock of one simulated user reply; over it the conversation ends (interaction/timeouts)", gt=0
    )
    max_assistant_turns: int = knob(5, "assistant turns per response (the last one's tool calls are not run)", gt=0)
    max_tool_response_tokens: int = knob(256, "a tool answer is cut to this many tokens", gt=0)
    max_parallel_calls: int = knob(
        1,
        "calls of one assistant turn that are run (verl's name and default); the rest are answered with an error",
        gt=0,
    )
    max_concurrent_calls: int = knob(
        0, "tool calls run at once across a turn's rows (threads; 0: the CPU cores this process may use)", ge=0
    )
    tool_call_bonus: float = knob(0.0, "reward added per successful tool call (shaping; 0: off)", ge=0)
    failed_call_penalty: float = knob(0.0, "reward subtracted per failed tool call (shaping; 0: off)", ge=0)
    shaping_cap: float = knob(0.2, "the shaping term is clipped to [-cap, cap]", ge=0)

    def check(self, path: str) -> None:
        if not self.enable:
            if self.interaction_config_path:
                raise ConfigError(f"{join(path, 'interaction_config_path')} needs {join(path, 'enable')}=true")
            return
        if not self.tool_config_path and not self.interaction_config_path:
            raise ConfigError(
                f"{join(path, 'tool_config_path')} (or {join(path, 'interaction_config_path')}) is required when "
                f"{join(path, 'enable')} is true"
            )
        for key in ("tool_config_path", "interaction_config_path"):
            value = getattr(self, key)
            if value:
                packaged = configs.find(value)  # a packaged name such as tools_gsm8k works too
                environment.check_file(str(packaged or value), join(path, key))
                setattr(self, key, str(packaged or value))


@dataclass
class RolloutConfig(Section):
    """Response generation: backend, sampling and engine settings."""

    name: str = knob("hf", "generation backend", registry="npu_rl.rollout:ROLLOUTS")
    decoder: Literal["auto", "plain", "fast"] = knob(
        "auto",
        "hf decoder: fast = fused Llama-family decode with a preallocated cache; plain = transformers "
        "forward with DynamicCache; auto = fast where supported",
    )
    n: int = knob(5, "responses sampled per prompt (the GRPO group size)", gt=0)
    temperature: float = knob(1.0, "sampling temperature for training", gt=0)
    top_p: float = knob(1.0, "nucleus sampling mass", gt=0, le=1)
    top_k: int = knob(-1, "sample among the k most likely tokens; -1 or 0: off", ge=-1)
    min_p: float = knob(
        0.0,
        "drop tokens less likely than min_p x the most likely one (TRL's min_p); 0: off; validation too",
        ge=0,
        le=1,
    )
    repetition_penalty: float = knob(
        1.0,
        "divide positive / multiply negative logits of tokens already in the prompt or response (TRL's and vLLM's "
        "repetition_penalty); 1: off; validation too. Like top_p / top_k it shapes sampling only: the policy's "
        "log-probs are of the plain distribution",
        gt=0,
    )
    max_new_tokens: int = knob(1024, "longest response in tokens", gt=0)
    micro_batch_size: int = knob(
        64, "prompts per generate call of the hf backend (on a card, fewer where they do not fit)", gt=0
    )
    log_prob_micro_batch_size_per_device: int = knob(16, "sequences per old-policy logprob forward", gt=0)
    log_prob_use_dynamic_bsz: bool | None = knob(
        None, "old-policy logprob micro-batches by tokens; null: actor.use_dynamic_bsz"
    )
    log_prob_max_token_len_per_device: int = knob(
        16384, "with dynamic batching: tokens per old-policy logprob micro-batch", gt=0
    )
    val_kwargs: ValKwargs = knob(ValKwargs, "validation sampling")
    multi_turn: MultiTurnConfig = knob(MultiTurnConfig, "multi-turn tool use")
    gpu_memory_utilization: float = knob(0.5, "vllm: fraction of device memory for weights and KV cache", gt=0, le=1)
    tensor_parallel_size: int = knob(1, "vllm: ranks per engine (must divide the world size)", gt=0)
    enforce_eager: bool = knob(True, "vllm: no graph capture (faster start, slower decode)")
    max_num_seqs: int = knob(256, "vllm: sequences decoded at once", gt=0)
    free_cache_engine: bool = knob(True, "vllm: sleep (free KV cache and weights) between rollouts on accelerators")
    weight_sync_bucket_mb: int = knob(512, "vllm: weight-sync bucket size in MiB", gt=0)
    enable_chunked_prefill: bool | None = knob(
        None, "vllm: split long prefills across engine steps; null: vLLM's default; always off on the CPU"
    )
    max_num_batched_tokens: int | None = knob(None, "vllm: tokens per engine step; null: vLLM's default", gt=0)
    engine_kwargs: dict[str, Any] = knob(
        {}, "vllm: further vllm.LLM arguments, applied as given (verl's rollout.engine_kwargs.vllm)"
    )

    def check(self, path: str) -> None:
        if self.engine_kwargs and self.name != "vllm":
            raise ConfigError(f"{join(path, 'engine_kwargs')} is for {join(path, 'name')}=vllm, not {self.name!r}")
        for arg in self.engine_kwargs:
            if arg in VLLM_ARGS_SET_HERE:
                raise ConfigError(f"{join(path, 'engine_kwargs')}.{arg}: {VLLM_ARGS_SET_HERE[arg]}")
        environment.check_vllm_engine_args(list(self.engine_kwargs), join(path, "engine_kwargs"))


# vllm.LLM arguments that npu_rl derives from other keys or needs as they are: one place to set each.
VLLM_ARGS_SET_HERE = {
    **{
        arg: f"set rollout.{arg} instead"
        for arg in (
            "tensor_parallel_size", "enforce_eager", "max_num_seqs", "gpu_memory_utilization",
            "enable_chunked_prefill", "max_num_batched_tokens",
        )
    },
    "enable_sleep_mode": "set rollout.free_cache_engine instead",
    "dtype": "set model.dtype instead",
    "seed": "set trainer.seed instead",
    "max_model_len": "set from data.max_prompt_length + rollout.max_new_tokens",
    **{
        arg: "npu_rl sets it: the engine must serve the trained weights and report processed log-probs"
        for arg in (
            "model", "tokenizer", "logprobs_mode", "generation_config", "worker_extension_cls",
            "distributed_executor_backend", "data_parallel_size",
        )
    },
}  # fmt: skip
