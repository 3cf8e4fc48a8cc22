"""How verl values become npu_rl values, for the keys whose value changes shape on the way (the
`convert` functions of npu_rl.verl_rules' SPECIAL rules, and verl's warmup rule the loader also applies
to npu_rl's own spelling)."""

from __future__ import annotations

from typing import Any


def val_do_sample(value: Any) -> list[tuple[str, Any]]:
    # verl validates greedily with do_sample=False; here greedy is temperature 0.
    return [] if value else [("rollout.val_kwargs.temperature", 0.0)]


def clip_ratio(value: Any) -> list[tuple[str, Any]]:
    return [("actor.clip_ratio_low", value), ("actor.clip_ratio_high", value)]


def resume_path(value: Any) -> list[tuple[str, Any]]:
    return [("trainer.resume_mode", value)] if value else []


def warmup_style(value: Any) -> list[tuple[str, Any]]:
    return [] if value is None else [("actor.optim.lr_scheduler", value)]  # null: unset (lr_scheduler_type decides)


def reward_manager(value: Any) -> list[tuple[str, Any]]:
    """verl's batch reward manager calls the custom function once with lists; naive, prime and dapo
    grade item by item, which the grading pool does (dapo's overlong buffer: reward.overlong_buffer)."""
    return [("reward.custom_function.batched", True)] if value == "batch" else []


def reward_model_enable(value: Any) -> list[tuple[str, Any]]:
    """verl scores with the reward model alone when it is on and no custom function is set (its legacy
    reward manager returns the model's scores); with a custom function, npu_rl's config check names the
    hybrid form (both terms in reward.functions)."""
    return [("reward.functions", [{"name": "reward_model"}])] if value else []


def warmup_steps(group: str, value: Any) -> list[tuple[str, Any]]:
    """verl: lr_warmup_steps < 0 means "use lr_warmup_steps_ratio" and 0 means no warmup; npu_rl reads
    0 as "use the ratio", so verl's 0 also zeroes the ratio (verl ignores it then)."""
    if isinstance(value, int) and value < 0:
        return []
    pairs = [(f"{group}.optim.lr_warmup_steps", value)]
    return [*pairs, (f"{group}.optim.lr_warmup_steps_ratio", 0.0)] if value == 0 else pairs


def critic_warmup_style(value: Any) -> list[tuple[str, Any]]:
    return [] if value is None else [("critic.optim.lr_scheduler", value)]


def target_modules(value: Any) -> list[tuple[str, Any]]:
    # verl takes a string ("all-linear") or a list of module names; the native key is always a list
    return [("actor.lora.target_modules", [value] if isinstance(value, str) else value)]


def offload_policy(value: Any) -> list[tuple[str, Any]]:
    # FSDP2's CPUOffloadPolicy: parameter, gradient and optimizer shards on the host (actor.fsdp.param_offload)
    return [("actor.fsdp.param_offload", True)] if value else []


def unbounded_turns(value: Any) -> list[tuple[str, Any]]:
    # verl's null means "bounded by the response length only"; that is the token budget here too
    return [] if value is None else [("rollout.multi_turn.max_assistant_turns", value)]


def fused_kernels(value: Any) -> list[tuple[str, Any]]:
    # verl's fused linear-for-PPO computes log-probs and entropy from hidden states 512 tokens at a time
    return [("actor.head_chunk_tokens", 512)] if value else []
