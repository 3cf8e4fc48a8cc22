"""verl's config keys and what each becomes in npu_rl: the table (data) behind the loader and the docs.

`RULES` is the only source: `npu_rl.verl_compat.to_native` applies it to a config, and the table in
`docs/verl_migration.md` is `npu_rl.verl_compat.markdown_table()` output, printed by
`python -m npu_rl.verl_compat` (tests/test_verl_compat.py checks that they agree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from npu_rl.verl_values import (
    clip_ratio,
    critic_warmup_style,
    fused_kernels,
    offload_policy,
    resume_path,
    reward_manager,
    reward_model_enable,
    target_modules,
    unbounded_turns,
    val_do_sample,
    warmup_steps,
    warmup_style,
)

ALIAS, SPECIAL, IGNORED, LAUNCHER, UNSUPPORTED = "alias", "special", "ignored", "launcher", "unsupported"
ANY_VALUE = object()  # `only` default: every value accepted


@dataclass(frozen=True)
class Rule:
    """How one verl key (a `*` segment matches any single key) maps onto npu_rl.

    alias        the value moves to `native` (a `*` there takes the matched segment)
    special      `convert(value)` gives the native (key, value) pairs; `native` names them for the docs
    ignored      accepted with a notice when the value is in `only` (every value if unset), else an error
    launcher     the world size: answered with the torchrun command
    unsupported  an error: npu_rl has no equivalent (`note` says what to do instead)
    """

    verl: str
    kind: str
    native: str = ""
    note: str = ""
    only: Any = ANY_VALUE
    convert: Callable[[Any], list[tuple[str, Any]]] | None = None
    priority: int = 0  # -1: yields to any other setting of its native keys; 1: overrides them all


_OWN_KERNELS = "npu_rl picks its kernels itself: actor.forward=auto runs fused / packed kernels where it can"


def _off(note: str) -> str:
    return f"only the default (off) exists here: {note}"


_AR = "actor_rollout_ref"
RULES: tuple[Rule, ...] = (
    # -- data -----------------------------------------------------------------------------------
    Rule("data.max_response_length", ALIAS, "rollout.max_new_tokens"),
    Rule("data.tokenizer", ALIAS, "model.tokenizer_path"),
    Rule("data.trust_remote_code", ALIAS, "model.trust_remote_code"),
    Rule("data.reward_fn_key", IGNORED, only=("data_source",), note="the reward is chosen by data_source"),
    Rule("data.return_raw_input_ids", IGNORED, note="no separate reward-model tokenizer"),
    Rule("data.return_raw_chat", IGNORED, note="the raw chat is always kept"),
    Rule("data.return_full_prompt", IGNORED, note="the rendered prompt is always kept"),
    Rule("data.filter_overlong_prompts_workers", IGNORED, note="filtering runs in the loader"),
    Rule("data.dataloader_num_workers", IGNORED, note="prompts are tokenized once, up front"),
    Rule("data.validation_shuffle", IGNORED, only=(False,), note="validation runs in file order"),
    Rule("data.use_shm", IGNORED, only=(False,), note="no shared-memory model copy"),
    Rule("data.image_key", IGNORED, note="text-only"),
    Rule("data.custom_cls.*", IGNORED, only=(None,), note="datasets are parquet in verl's row schema (README 'Data')"),
    # -- model ----------------------------------------------------------------------------------
    Rule(f"{_AR}.model.path", ALIAS, "model.path"),
    Rule(f"{_AR}.model.tokenizer_path", ALIAS, "model.tokenizer_path"),
    Rule(f"{_AR}.model.enable_gradient_checkpointing", ALIAS, "model.gradient_checkpointing"),
    Rule(f"{_AR}.model.trust_remote_code", ALIAS, "model.trust_remote_code"),
    Rule(f"{_AR}.model.use_remove_padding", IGNORED, note="the passes remove padding themselves (actor.forward)"),
    Rule(f"{_AR}.model.use_fused_kernels", SPECIAL, "actor.head_chunk_tokens", convert=fused_kernels),
    Rule(f"{_AR}.model.fused_kernel_options.*", IGNORED, note=_OWN_KERNELS),
    Rule(f"{_AR}.actor.use_fused_kernels", IGNORED, note=_OWN_KERNELS),
    Rule(
        f"{_AR}.actor.calculate_sum_pi_squared",
        IGNORED,
        note="the old-log-prob pass computes it whenever algorithm.adv_estimator reads it (optimal token baselines)",
    ),
    Rule(f"{_AR}.actor.sum_pi_squared_checkpointing", IGNORED, note="sum pi^2 is computed without gradients"),
    Rule(f"{_AR}.model.use_liger", IGNORED, only=(False,), note=_off("liger kernels are not available on NPU")),
    Rule(f"{_AR}.model.use_shm", IGNORED, only=(False,), note=_off("shared-memory model copy")),
    Rule(f"{_AR}.model.enable_activation_offload", ALIAS, "model.activation_offload"),
    Rule(f"{_AR}.model.lora_rank", ALIAS, "actor.lora.rank"),
    Rule(f"{_AR}.model.lora_alpha", ALIAS, "actor.lora.alpha"),
    Rule(
        f"{_AR}.model.target_modules",
        SPECIAL,
        "actor.lora.target_modules",
        note="a string (e.g. all-linear) becomes a one-item list",
        convert=target_modules,
    ),
    Rule(
        f"{_AR}.model.exclude_modules", IGNORED, only=(None,), note="list the wanted actor.lora.target_modules instead"
    ),
    Rule(f"{_AR}.model.external_lib", IGNORED, only=(None,), note="models load through transformers' Auto classes"),
    Rule(f"{_AR}.model.override_config.*", UNSUPPORTED, note="edit the model folder's config.json instead"),
    Rule(f"{_AR}.hybrid_engine", IGNORED, only=(True,), note="rollout and training are always colocated"),
    Rule(f"{_AR}.nccl_timeout", IGNORED, note="set NPU_RL_DIST_TIMEOUT_S (seconds) instead"),
    # -- actor ----------------------------------------------------------------------------------
    Rule(f"{_AR}.actor.strategy", IGNORED, only=("fsdp", "fsdp2"), note="always FSDP2 (megatron is not available)"),
    Rule(f"{_AR}.actor.ppo_mini_batch_size", ALIAS, "actor.ppo_mini_batch_size"),
    Rule(f"{_AR}.actor.ppo_micro_batch_size_per_gpu", ALIAS, "actor.ppo_micro_batch_size_per_device"),
    Rule(
        f"{_AR}.actor.ppo_micro_batch_size",
        UNSUPPORTED,
        note="the deprecated global micro-batch size; use actor.ppo_micro_batch_size_per_device",
    ),
    Rule(f"{_AR}.actor.use_dynamic_bsz", ALIAS, "actor.use_dynamic_bsz"),
    Rule(f"{_AR}.actor.ppo_max_token_len_per_gpu", ALIAS, "actor.ppo_max_token_len_per_device"),
    Rule(f"{_AR}.actor.ppo_epochs", ALIAS, "actor.ppo_epochs"),
    Rule(f"{_AR}.actor.shuffle", IGNORED, only=(False,), note=_off("mini-batch shuffling")),
    Rule(f"{_AR}.actor.grad_clip", ALIAS, "actor.grad_clip"),
    Rule(
        f"{_AR}.actor.clip_ratio",
        SPECIAL,
        "actor.clip_ratio_low, actor.clip_ratio_high",
        note="both, unless clip_ratio_low / clip_ratio_high are set",
        convert=clip_ratio,
        priority=-1,
    ),
    Rule(f"{_AR}.actor.clip_ratio_low", ALIAS, "actor.clip_ratio_low"),
    Rule(f"{_AR}.actor.clip_ratio_high", ALIAS, "actor.clip_ratio_high"),
    Rule(f"{_AR}.actor.clip_ratio_c", ALIAS, "actor.clip_ratio_c"),
    Rule(f"{_AR}.actor.loss_agg_mode", ALIAS, "actor.loss_agg_mode"),
    Rule(f"{_AR}.actor.loss_scale_factor", ALIAS, "actor.loss_scale_factor"),
    Rule(f"{_AR}.actor.entropy_coeff", ALIAS, "actor.entropy_coeff"),
    Rule(f"{_AR}.actor.use_kl_loss", ALIAS, "actor.use_kl_loss"),
    Rule(f"{_AR}.actor.kl_loss_coef", ALIAS, "actor.kl_loss_coef"),
    Rule(f"{_AR}.actor.kl_loss_type", ALIAS, "actor.kl_loss_type"),
    Rule(f"{_AR}.actor.policy_loss.loss_mode", ALIAS, "actor.policy_loss"),
    Rule(f"{_AR}.actor.policy_loss.clip_cov_ratio", ALIAS, "actor.policy_loss_params.clip_cov_ratio"),
    Rule(f"{_AR}.actor.policy_loss.clip_cov_lb", ALIAS, "actor.policy_loss_params.clip_cov_lb"),
    Rule(f"{_AR}.actor.policy_loss.clip_cov_ub", ALIAS, "actor.policy_loss_params.clip_cov_ub"),
    Rule(f"{_AR}.actor.policy_loss.kl_cov_ratio", ALIAS, "actor.policy_loss_params.kl_cov_ratio"),
    Rule(f"{_AR}.actor.policy_loss.ppo_kl_coef", ALIAS, "actor.policy_loss_params.ppo_kl_coef"),
    Rule(f"{_AR}.actor.tau_pos", ALIAS, "actor.policy_loss_params.tau_pos"),
    Rule(f"{_AR}.actor.tau_neg", ALIAS, "actor.policy_loss_params.tau_neg"),
    Rule(f"{_AR}.actor.ulysses_sequence_parallel_size", IGNORED, only=(1,), note=_off("sequence parallelism")),
    Rule(f"{_AR}.actor.checkpoint.*", IGNORED, note="checkpoints always hold model, optimizer and extra state"),
    Rule(f"{_AR}.actor.optim.lr", ALIAS, "actor.optim.lr"),
    Rule(
        f"{_AR}.actor.optim.lr_warmup_steps",
        SPECIAL,
        "actor.optim.lr_warmup_steps, actor.optim.lr_warmup_steps_ratio",
        note="verl's -1 is npu_rl's 0 (warm up by lr_warmup_steps_ratio); verl's 0 is no warmup",
        convert=lambda value: warmup_steps("actor", value),
        priority=1,
    ),
    Rule(f"{_AR}.actor.optim.lr_warmup_steps_ratio", ALIAS, "actor.optim.lr_warmup_steps_ratio"),
    Rule(f"{_AR}.actor.optim.min_lr_ratio", ALIAS, "actor.optim.min_lr_ratio"),
    Rule(f"{_AR}.actor.optim.weight_decay", ALIAS, "actor.optim.weight_decay"),
    Rule(f"{_AR}.actor.optim.betas", ALIAS, "actor.optim.betas"),
    Rule(f"{_AR}.actor.optim.clip_grad", ALIAS, "actor.grad_clip"),
    Rule(f"{_AR}.actor.optim.warmup_style", SPECIAL, "actor.optim.lr_scheduler", convert=warmup_style),
    Rule(f"{_AR}.actor.optim.lr_scheduler_type", ALIAS, "actor.optim.lr_scheduler"),
    Rule(f"{_AR}.actor.optim.total_training_steps", IGNORED, note="derived from trainer.total_training_steps"),
    Rule(f"{_AR}.actor.optim.num_cycles", ALIAS, "actor.optim.num_cycles"),
    Rule(f"{_AR}.actor.fsdp_config.param_offload", ALIAS, "actor.fsdp.param_offload"),
    Rule(f"{_AR}.actor.fsdp_config.reshard_after_forward", ALIAS, "actor.fsdp.reshard_after_forward"),
    Rule(f"{_AR}.actor.fsdp_config.optimizer_offload", ALIAS, "actor.fsdp.optimizer_offload"),
    Rule(
        f"{_AR}.actor.fsdp_config.offload_policy",
        SPECIAL,
        "actor.fsdp.param_offload",
        note="true: FSDP2's CPUOffloadPolicy, which is actor.fsdp.param_offload here",
        convert=offload_policy,
    ),
    Rule(f"{_AR}.actor.fsdp_config.fsdp_size", ALIAS, "actor.fsdp.fsdp_size"),
    Rule(f"{_AR}.actor.fsdp_config.wrap_policy.*", IGNORED, note="each decoder layer is one FSDP unit"),
    Rule(f"{_AR}.actor.fsdp_config.model_dtype", IGNORED, note="master weights are fp32; see model.dtype"),
    Rule(f"{_AR}.actor.fsdp_config.mixed_precision.*", IGNORED, note="bf16 compute, fp32 reduce: actor.fsdp"),
    # -- reference ------------------------------------------------------------------------------
    Rule(f"{_AR}.ref.log_prob_micro_batch_size_per_gpu", ALIAS, "ref.log_prob_micro_batch_size_per_device"),
    Rule(
        f"{_AR}.ref.log_prob_micro_batch_size",
        UNSUPPORTED,
        note="the deprecated global size; use ref.log_prob_micro_batch_size_per_device",
    ),
    Rule(f"{_AR}.ref.fsdp_config.param_offload", ALIAS, "ref.param_offload"),
    Rule(f"{_AR}.ref.fsdp_config.*", IGNORED, note="the reference shares the actor's FSDP layout"),
    Rule(f"{_AR}.ref.log_prob_use_dynamic_bsz", ALIAS, "ref.log_prob_use_dynamic_bsz"),
    Rule(f"{_AR}.ref.log_prob_max_token_len_per_gpu", ALIAS, "ref.log_prob_max_token_len_per_device"),
    Rule(f"{_AR}.ref.strategy", IGNORED, only=("fsdp", "fsdp2"), note="always FSDP2"),
    Rule(f"{_AR}.ref.ulysses_sequence_parallel_size", IGNORED, only=(1,), note=_off("sequence parallelism")),
    # -- rollout --------------------------------------------------------------------------------
    Rule(f"{_AR}.rollout.name", ALIAS, "rollout.name"),
    Rule(f"{_AR}.rollout.mode", IGNORED, note="the engine runs in the trainer's processes (verl's sync mode)"),
    Rule(f"{_AR}.rollout.n", ALIAS, "rollout.n"),
    Rule(f"{_AR}.rollout.temperature", ALIAS, "rollout.temperature"),
    Rule(f"{_AR}.rollout.top_p", ALIAS, "rollout.top_p"),
    Rule(f"{_AR}.rollout.top_k", ALIAS, "rollout.top_k"),
    # verl hands any rollout key that names a vLLM SamplingParams field to the engine (`+...min_p=0.05`)
    Rule(f"{_AR}.rollout.min_p", ALIAS, "rollout.min_p"),
    Rule(f"{_AR}.rollout.repetition_penalty", ALIAS, "rollout.repetition_penalty"),
    Rule(f"{_AR}.rollout.do_sample", IGNORED, only=(True,), note="training rollouts always sample"),
    Rule(f"{_AR}.rollout.response_length", ALIAS, "rollout.max_new_tokens"),
    Rule(f"{_AR}.rollout.prompt_length", IGNORED, note="data.max_prompt_length bounds prompts"),
    Rule(f"{_AR}.rollout.dtype", IGNORED, note="the engine uses model.dtype"),
    Rule(f"{_AR}.rollout.ignore_eos", IGNORED, only=(False,), note=_off("ignore_eos")),
    Rule(f"{_AR}.rollout.gpu_memory_utilization", ALIAS, "rollout.gpu_memory_utilization"),
    Rule(f"{_AR}.rollout.tensor_model_parallel_size", ALIAS, "rollout.tensor_parallel_size"),
    Rule(f"{_AR}.rollout.enforce_eager", ALIAS, "rollout.enforce_eager"),
    Rule(f"{_AR}.rollout.free_cache_engine", ALIAS, "rollout.free_cache_engine"),
    Rule(f"{_AR}.rollout.max_num_seqs", ALIAS, "rollout.max_num_seqs"),
    Rule(f"{_AR}.rollout.update_weights_bucket_megabytes", ALIAS, "rollout.weight_sync_bucket_mb"),
    Rule(f"{_AR}.rollout.log_prob_micro_batch_size_per_gpu", ALIAS, "rollout.log_prob_micro_batch_size_per_device"),
    Rule(
        f"{_AR}.rollout.log_prob_micro_batch_size",
        UNSUPPORTED,
        note="the deprecated global size; use rollout.log_prob_micro_batch_size_per_device",
    ),
    Rule(f"{_AR}.rollout.log_prob_use_dynamic_bsz", ALIAS, "rollout.log_prob_use_dynamic_bsz"),
    Rule(f"{_AR}.rollout.log_prob_max_token_len_per_gpu", ALIAS, "rollout.log_prob_max_token_len_per_device"),
    Rule(f"{_AR}.rollout.enable_chunked_prefill", ALIAS, "rollout.enable_chunked_prefill"),
    Rule(f"{_AR}.rollout.max_num_batched_tokens", ALIAS, "rollout.max_num_batched_tokens"),
    Rule(f"{_AR}.rollout.max_model_len", IGNORED, note="prompt + response length bounds it"),
    Rule(f"{_AR}.rollout.load_format", IGNORED, note="weights load from model.path, then sync from the trainer"),
    Rule(f"{_AR}.rollout.disable_log_stats", IGNORED, note="vLLM's statistics log is always off"),
    Rule(f"{_AR}.rollout.layered_summon", IGNORED, note="weights sync in buckets (rollout.weight_sync_bucket_mb)"),
    Rule(f"{_AR}.rollout.calculate_log_probs", IGNORED, note="rollout/logprob_diff is always logged"),
    Rule(f"{_AR}.rollout.engine_kwargs.vllm", ALIAS, "rollout.engine_kwargs"),
    Rule(f"{_AR}.rollout.engine_kwargs.vllm.*", ALIAS, "rollout.engine_kwargs.*"),
    Rule(f"{_AR}.rollout.engine_kwargs.*", IGNORED, note="other engines' arguments (the backends here: hf, vllm)"),
    Rule(f"{_AR}.rollout.val_kwargs.n", ALIAS, "rollout.val_kwargs.n"),
    Rule(f"{_AR}.rollout.val_kwargs.temperature", ALIAS, "rollout.val_kwargs.temperature"),
    Rule(f"{_AR}.rollout.val_kwargs.top_p", ALIAS, "rollout.val_kwargs.top_p"),
    Rule(f"{_AR}.rollout.val_kwargs.top_k", ALIAS, "rollout.val_kwargs.top_k"),
    Rule(
        f"{_AR}.rollout.val_kwargs.do_sample",
        SPECIAL,
        "rollout.val_kwargs.temperature",
        note="false sets temperature 0 (greedy); true keeps rollout.val_kwargs.temperature",
        convert=val_do_sample,
    ),
    Rule(f"{_AR}.rollout.multi_turn.enable", ALIAS, "rollout.multi_turn.enable"),
    Rule(f"{_AR}.rollout.multi_turn.tool_config_path", ALIAS, "rollout.multi_turn.tool_config_path"),
    Rule(
        f"{_AR}.rollout.multi_turn.max_assistant_turns",
        SPECIAL,
        "rollout.multi_turn.max_assistant_turns",
        note="null (verl: unbounded) keeps npu_rl's default; rollout.max_new_tokens bounds the conversation",
        convert=unbounded_turns,
    ),
    Rule(f"{_AR}.rollout.multi_turn.max_parallel_calls", ALIAS, "rollout.multi_turn.max_parallel_calls"),
    Rule(
        f"{_AR}.rollout.multi_turn.max_tool_response_length",
        ALIAS,
        "rollout.multi_turn.max_tool_response_tokens",
        note="verl cuts a tool answer to this many characters, npu_rl to this many tokens",
    ),
    Rule(f"{_AR}.rollout.multi_turn.tool_response_truncate_side", IGNORED, note="a long tool answer keeps its start"),
    Rule(
        f"{_AR}.rollout.multi_turn.format",
        IGNORED,
        only=("hermes",),
        note="calls are read in the Hermes/Qwen2.5 format",
    ),
    Rule(f"{_AR}.rollout.multi_turn.interaction_config_path", ALIAS, "rollout.multi_turn.interaction_config_path"),
    Rule(f"{_AR}.rollout.multi_turn.max_user_turns", ALIAS, "rollout.multi_turn.max_user_turns"),
    Rule(f"{_AR}.rollout.multi_turn.*", IGNORED, note="the chat template renders every turn; no tokenization checks"),
    Rule(f"{_AR}.rollout.agent.*", IGNORED, note="agent loops are not implemented; their settings are unused"),
    # -- critic, reward model, reward function --------------------------------------------------
    Rule("critic.enable", IGNORED, note="the critic is built when algorithm.adv_estimator=gae"),
    Rule("critic.model.path", ALIAS, "critic.model_path"),
    Rule("critic.strategy", IGNORED, only=("fsdp", "fsdp2"), note="always FSDP2"),
    Rule("critic.ppo_mini_batch_size", IGNORED, note="the critic updates on the actor's mini-batches"),
    Rule("critic.ppo_epochs", IGNORED, note="the critic updates for actor.ppo_epochs"),
    Rule("critic.ppo_micro_batch_size", UNSUPPORTED, note="deprecated: critic.ppo_micro_batch_size_per_gpu"),
    Rule("critic.forward_micro_batch_size", UNSUPPORTED, note="deprecated: critic.forward_micro_batch_size_per_gpu"),
    Rule("critic.model.use_remove_padding", IGNORED, note="the critic's passes remove padding themselves (packed)"),
    Rule("critic.model.enable_gradient_checkpointing", IGNORED, note="the critic follows model.gradient_checkpointing"),
    Rule("critic.model.enable_activation_offload", IGNORED, note="the critic follows model.activation_offload"),
    Rule("critic.optim.warmup_style", SPECIAL, "critic.optim.lr_scheduler", convert=critic_warmup_style),
    Rule("critic.optim.total_training_steps", IGNORED, note="derived from trainer.total_training_steps"),
    Rule(
        "critic.model.*",
        IGNORED,
        note="the critic is the model's decoder with a value head, in the actor's FSDP layout",
    ),
    Rule("critic.*", IGNORED, note="verl's other critic settings (checkpoint contents, profiler) have no effect here"),
    Rule(
        "reward_model.enable",
        SPECIAL,
        "reward.functions",
        convert=reward_model_enable,
        note="a discriminative reward model is the term {name: reward_model} of reward.functions (docs/reward.md)",
    ),
    Rule("reward_model.model.path", ALIAS, "reward.model.path"),
    Rule("reward_model.model.trust_remote_code", ALIAS, "reward.model.trust_remote_code"),
    Rule("reward_model.micro_batch_size_per_gpu", ALIAS, "reward.model.micro_batch_size"),
    Rule("reward_model.max_length", ALIAS, "reward.model.max_length"),
    Rule(
        "reward_model.model.input_tokenizer",
        IGNORED,
        note="the policy's tokenizer decodes the response, the reward model's renders it (always re-templated)",
    ),
    Rule(
        "reward_model.reward_manager",
        SPECIAL,
        "reward.custom_function.batched",
        only=("naive", "prime", "dapo", "batch"),
        note="batch: the custom function gets lists; the others: items graded in a process pool (dapo's overlong "
        "buffer is reward.overlong_buffer)",
        convert=reward_manager,
    ),
    Rule("reward_model.overlong_buffer.enable", ALIAS, "reward.overlong_buffer.enable"),
    Rule("reward_model.overlong_buffer.len", ALIAS, "reward.overlong_buffer.len"),
    Rule("reward_model.overlong_buffer.penalty_factor", ALIAS, "reward.overlong_buffer.penalty_factor"),
    Rule("reward_model.overlong_buffer.log", IGNORED, note="reward/overlong_reward is always logged"),
    Rule("reward_model.reward_kwargs.overlong_buffer_cfg.enable", ALIAS, "reward.overlong_buffer.enable"),
    Rule("reward_model.reward_kwargs.overlong_buffer_cfg.len", ALIAS, "reward.overlong_buffer.len"),
    Rule(
        "reward_model.reward_kwargs.overlong_buffer_cfg.penalty_factor", ALIAS, "reward.overlong_buffer.penalty_factor"
    ),
    Rule("reward_model.reward_kwargs.overlong_buffer_cfg.log", IGNORED, note="reward/overlong_reward is always logged"),
    Rule(
        "reward_model.reward_kwargs.max_resp_len",
        IGNORED,
        note="the overlong penalty counts from rollout.max_new_tokens",
    ),
    Rule("reward_model.launch_reward_fn_async", IGNORED, note="grading always runs in worker processes"),
    Rule("reward_model.*", IGNORED, note="the reward model's other settings: it runs unsharded, in inference mode"),
    Rule("custom_reward_function.path", ALIAS, "reward.custom_function.path"),
    Rule("custom_reward_function.name", ALIAS, "reward.custom_function.name"),
    Rule("custom_reward_function.reward_kwargs", ALIAS, "reward.custom_function.reward_kwargs"),
    # newer verl moved the reward settings under `reward.`, beside npu_rl's own reward keys
    Rule(
        "reward.reward_manager.name",
        SPECIAL,
        "reward.custom_function.batched",
        only=("naive", "prime", "dapo", "batch"),
        note="as reward_model.reward_manager",
        convert=reward_manager,
    ),
    Rule("reward.reward_kwargs.overlong_buffer_cfg.enable", ALIAS, "reward.overlong_buffer.enable"),
    Rule("reward.reward_kwargs.overlong_buffer_cfg.len", ALIAS, "reward.overlong_buffer.len"),
    Rule("reward.reward_kwargs.overlong_buffer_cfg.penalty_factor", ALIAS, "reward.overlong_buffer.penalty_factor"),
    Rule("reward.reward_kwargs.overlong_buffer_cfg.log", IGNORED, note="reward/overlong_reward is always logged"),
    Rule("reward.reward_kwargs.max_resp_len", IGNORED, note="the overlong penalty counts from rollout.max_new_tokens"),
    Rule("reward.custom_reward_function.path", ALIAS, "reward.custom_function.path"),
    Rule("reward.custom_reward_function.name", ALIAS, "reward.custom_function.name"),
    Rule("reward.custom_reward_function.reward_kwargs", ALIAS, "reward.custom_function.reward_kwargs"),
    # -- algorithm ------------------------------------------------------------------------------
    Rule("algorithm.kl_ctrl.kl_coef", ALIAS, "algorithm.kl_coef"),
    Rule("algorithm.use_pf_ppo", IGNORED, only=(False,), note=_off("PF-PPO reweighting")),
    # -- trainer --------------------------------------------------------------------------------
    Rule("trainer.n_gpus_per_node", LAUNCHER, note="torchrun --nproc_per_node"),
    Rule("trainer.nnodes", LAUNCHER, note="torchrun --nnodes"),
    Rule("trainer.max_actor_ckpt_to_keep", ALIAS, "trainer.max_ckpt_to_keep"),
    Rule("trainer.max_critic_ckpt_to_keep", IGNORED, note="one checkpoint holds actor and critic (max_ckpt_to_keep)"),
    Rule(
        "trainer.resume_from_path",
        SPECIAL,
        "trainer.resume_mode",
        note="the path becomes trainer.resume_mode (verl's resume_mode=resume_path)",
        convert=resume_path,
        priority=1,
    ),
    Rule("trainer.default_hdfs_dir", IGNORED, note="local checkpoints only"),
    Rule("trainer.del_local_ckpt_after_load", IGNORED, only=(False,), note="checkpoints are kept"),
    Rule("trainer.use_legacy_worker_impl", IGNORED, note="one worker implementation"),
    Rule("trainer.tensorboard_dir", UNSUPPORTED, note="set the TENSORBOARD_DIR environment variable instead"),
    Rule("ray_init.*", IGNORED, note="no Ray: processes come from torchrun"),
    Rule("global_profiler.steps", ALIAS, "trainer.profile_steps"),
    Rule("global_profiler.save_path", ALIAS, "trainer.profile_dir"),
    Rule("global_profiler.tool", IGNORED, only=(None, "torch", "npu"), note="torch's profiler (torch_npu's on NPU)"),
    Rule("global_profiler.*", IGNORED, note="the profiler records whole steps on every rank (trainer.profile_steps)"),
)

# Top-level groups that only verl has: an unknown key under them is verl's, with no equivalent here.
VERL_GROUPS = ("actor_rollout_ref", "critic", "reward_model", "custom_reward_function", "ray_init", "global_profiler")


def find_rule(key: str) -> tuple[Rule | None, str]:
    """The rule for dotted verl `key` and the native key it maps to (exact rules win over patterns)."""
    parts = key.split(".")
    best: tuple[Rule | None, str] = (None, "")
    for rule in RULES:
        pattern = rule.verl.split(".")
        if pattern[-1] == "*":
            if len(parts) < len(pattern) or parts[: len(pattern) - 1] != pattern[:-1]:
                continue
            rest = ".".join(parts[len(pattern) - 1 :])
            native = rule.native.replace("*", rest) if rule.native else ""
            if best[0] is None:
                best = (rule, native)
        elif pattern == parts:
            return rule, rule.native
    return best
