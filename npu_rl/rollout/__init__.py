"""Rollout engines behind one interface; `build_rollout` picks one from `rollout.name` (the
ROLLOUTS registry), and `generate` turns prompt records into a `RolloutBatch` that carries its groups."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from npu_rl.compute import ComputePlan
from npu_rl.config import Config
from npu_rl.data import PromptRecord
from npu_rl.registry import Registry
from npu_rl.rollout.base import RolloutEngine, RolloutOutput, SamplingParams
from npu_rl.rollout.batch import RolloutBatch

__all__ = [
    "ROLLOUTS",
    "RolloutBatch",
    "RolloutEngine",
    "RolloutOutput",
    "SamplingParams",
    "build_rollout",
    "dataset_options",
    "eos_and_pad_ids",
    "generate",
    "tool_schemas",
]


def generate(
    engine: RolloutEngine, records: Sequence[PromptRecord], params: SamplingParams, seeds: Sequence[int]
) -> RolloutBatch:
    """Sample for `records` (one seed per record) between the engine's `wake_up` and `sleep`."""
    engine.wake_up()
    extra: dict[str, Any] = {}
    if getattr(engine, "interactions", None):  # a multi-turn engine with simulated users reads the rows' kwargs
        extra["interaction_kwargs"] = [(r.extra_info or {}).get("interaction_kwargs") for r in records]
    try:
        out = engine.generate([r.prompt_ids for r in records], params, seeds=list(seeds), **extra)
    finally:
        engine.sleep()
    return RolloutBatch.bind(records, out)


def eos_and_pad_ids(tokenizer: Any, model: nn.Module | None = None) -> tuple[list[int], int]:
    """EOS ids (tokenizer's plus the generation config's, e.g. Qwen's <|im_end|> and <|endoftext|>) and pad id."""
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(extra, int):
        eos.add(extra)
    elif extra:
        eos.update(extra)
    if not eos:
        raise ValueError("the tokenizer has no eos_token_id: generation could never stop")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    return sorted(eos), pad


RolloutFactory = Callable[[Config, Any, Any, Any, Any, Any], RolloutEngine]
# rollout.name -> factory(cfg, model, tokenizer, acc, dist, plan). Factories import their backend when
# called, so registering (and validating a config against) `vllm` does not import vLLM.
ROLLOUTS: Registry[RolloutFactory] = Registry("rollout backend")


@ROLLOUTS.register("hf")
def _hf(cfg: Config, model: nn.Module | None, tokenizer: Any, acc: Any, dist: Any, plan: ComputePlan | None) -> Any:
    """Samples from the trainer's own module, decoding as the compute plan says."""
    from npu_rl.rollout.hf import HFRollout

    if model is None or plan is None:
        raise ValueError("the hf rollout samples from a loaded model and its compute plan")
    eos, pad = eos_and_pad_ids(tokenizer, model)
    free_memory = acc.memory_free_total if acc is not None else None
    return HFRollout(model, eos, pad, plan, micro_batch_size=cfg.rollout.micro_batch_size, free_memory=free_memory)


@ROLLOUTS.register("vllm")
def _vllm(cfg: Config, model: nn.Module | None, tokenizer: Any, acc: Any, dist: Any, plan: ComputePlan | None) -> Any:
    """A colocated vLLM / vllm-ascend engine with its own kernels (the plan does not apply)."""
    from npu_rl.rollout.vllm import VLLMRollout

    # Room for the longest prompt plus response, within what the model's positions allow.
    max_len = cfg.data.max_prompt_length + cfg.rollout.max_new_tokens
    config = getattr(model, "config", None)
    if config is None:  # the evaluator builds a vLLM engine without loading the HF model
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    limit = getattr(config, "max_position_embeddings", None)
    return VLLMRollout(
        cfg.rollout,
        cfg.model.path,
        tokenizer,
        acc,
        dist,
        cfg.model.dtype,
        max_model_len=min(max_len, int(limit)) if limit else max_len,
        seed=cfg.trainer.seed,
        fp32_head=cfg.model.fp32_lm_head,
    )


def tool_schemas(cfg: Config) -> list[dict[str, Any]] | None:
    """The function schemas prompts are rendered with (chat template `tools=`) when multi-turn is on."""
    if not cfg.rollout.multi_turn.enable or not cfg.rollout.multi_turn.tool_config_path:
        return None
    from npu_rl.agent_tools import load_tools

    return [tool.schema for tool in load_tools(cfg.rollout.multi_turn.tool_config_path).values()]


def dataset_options(cfg: Config) -> dict[str, Any]:
    """What loading the prompts needs from the multi-turn settings: the tools' schemas (rendered into the
    prompts) and the simulated users' names (each row's interaction_kwargs checked before any compute)."""
    mt = cfg.rollout.multi_turn
    names = None
    if mt.enable and mt.interaction_config_path:
        from npu_rl.agent_tools.interaction import load_interactions

        names = sorted(load_interactions(mt.interaction_config_path))
    return {"tools": tool_schemas(cfg), "interactions": names}


def build_rollout(
    cfg: Config, model: nn.Module | None, tokenizer: Any, acc: Any, dist: Any, plan: ComputePlan | None = None
) -> RolloutEngine:
    """The configured engine (ROLLOUTS[rollout.name]); `model` is the trainer's module (shared by the
    hf backend, which decodes as `plan` says). With `rollout.multi_turn.enable` the engine generates
    tool-using conversations (npu_rl.rollout.multi_turn) with the tools of `tool_config_path`."""
    engine = ROLLOUTS.get(cfg.rollout.name, key="rollout.name")(cfg, model, tokenizer, acc, dist, plan)
    mt = cfg.rollout.multi_turn
    if not mt.enable:
        return engine
    from npu_rl.agent_tools import load_tools
    from npu_rl.agent_tools.interaction import load_interactions
    from npu_rl.rollout.multi_turn import MultiTurnRollout

    _, pad = eos_and_pad_ids(tokenizer, model)
    tools = load_tools(mt.tool_config_path) if mt.tool_config_path else {}
    interactions = load_interactions(mt.interaction_config_path) if mt.interaction_config_path else None
    return MultiTurnRollout(
        engine, tokenizer, tools, pad, mt.max_assistant_turns, mt.max_tool_response_tokens,
        mt.max_parallel_calls, mt.max_concurrent_calls, cfg.data.apply_chat_template_kwargs,
        interactions, mt.max_user_turns, mt.interaction_timeout_s,
    )  # fmt: skip
