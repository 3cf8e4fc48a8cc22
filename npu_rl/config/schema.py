"""The typed configuration tree of a GRPO run: every key with its default, help and constraints
(the `algorithm` and `reward` groups are declared in npu_rl.config.objective, `rollout` in
npu_rl.config.generation, `model` and `data` in npu_rl.config.inputs).

Each group validates itself beside its fields (`knob(...)` constraints plus the group's `check`);
`Config.check` holds the checks that span groups or look at the environment (world size, files,
installed packages). `load_config` runs all of it before any model or data is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from npu_rl.config import environment
from npu_rl.config.fields import ConfigError, Section, join, knob
from npu_rl.config.generation import RolloutConfig
from npu_rl.config.inputs import DataConfig, ModelConfig
from npu_rl.config.objective import (
    KL_REGISTRY,
    AdaptiveEntropyConfig,
    AlgorithmConfig,
    PolicyLossParams,
    RewardConfig,
)
from npu_rl.config.training import FSDPConfig, LoraConfig, OptimConfig


@dataclass
class ActorConfig(Section):
    """The trained policy: PPO update, loss and how its forward passes run."""

    optim: OptimConfig = knob(OptimConfig, "optimizer")
    fsdp: FSDPConfig = knob(FSDPConfig, "sharding")
    lora: LoraConfig = knob(LoraConfig, "LoRA adapters (peft)")
    ppo_mini_batch_size: int = knob(8, "prompts per optimizer step (x rollout.n sequences), as in verl", gt=0)
    ppo_micro_batch_size_per_device: int = knob(8, "sequences per forward/backward on each device", gt=0)
    ppo_epochs: int = knob(1, "passes over each rollout batch", gt=0)
    use_dynamic_bsz: bool = knob(
        False, "micro-batches by token count (ppo_max_token_len_per_device) instead of by rows, as in verl"
    )
    ppo_max_token_len_per_device: int = knob(
        16384, "with use_dynamic_bsz: prompt + response tokens per training micro-batch (about; balanced)", gt=0
    )
    policy_loss: str = knob(
        "vanilla", "policy loss (verl's policy_loss.loss_mode)", registry="npu_rl.core_algos:POLICY_LOSSES"
    )
    policy_loss_params: PolicyLossParams = knob(PolicyLossParams, "parameters of clip_cov, kl_cov, sapo and vespo")
    forward: Literal["auto", "plain", "shared_prefix", "fused", "packed"] = knob(
        "auto",
        "logprob/training forward: plain = one forward over padded rows; shared_prefix = each prompt once, "
        "its KV reused by its n responses; fused = Llama-family fused kernels with shared prompts; "
        "packed = fused kernels over the real tokens only (no padding), attention kept within rows; "
        "auto = packed where supported (gradient checkpointing included), else shared_prefix (plain under gradient "
        "checkpointing)",
    )
    head_chunk_tokens: int = knob(
        0,
        "packed passes: the LM head's log-probs and entropy this many tokens at a time, each chunk's logits "
        "recomputed in backward, so the [tokens, vocabulary] logits are never held whole (verl's "
        "use_fused_kernels); 0: whole",
        ge=0,
    )
    clip_ratio_low: float = knob(0.2, "PPO ratio clipped below at 1 - clip_ratio_low", ge=0, lt=1)
    clip_ratio_high: float = knob(0.2, "PPO ratio clipped above at 1 + clip_ratio_high (> low: DAPO clip-higher)", ge=0)
    clip_ratio_c: float = knob(3.0, "dual-clip bound for negative advantages", gt=1)
    loss_agg_mode: str = knob(
        "token-mean", "how per-token losses reduce to one", registry="npu_rl.core_algos:LOSS_AGG_MODES"
    )
    loss_scale_factor: int | None = knob(
        None, "seq-mean-token-sum-norm's constant divisor (verl's key); null: rollout.max_new_tokens", gt=0
    )
    entropy_coeff: float = knob(0.0, "entropy bonus weight (subtracted from the loss); with adaptive_entropy its start")
    adaptive_entropy: AdaptiveEntropyConfig = knob(AdaptiveEntropyConfig, "entropy coefficient control (Skywork-OR1)")
    use_kl_loss: bool = knob(False, "add a KL(policy || reference) term to the loss")
    kl_loss_coef: float = knob(0.001, "weight of the KL loss term", ge=0)
    kl_loss_type: str = knob("low_var_kl", "KL estimator of the loss term", registry=KL_REGISTRY)
    grad_clip: float = knob(1.0, "global gradient-norm clip", gt=0)
    top_entropy_quantile: float = knob(
        1.0,
        "keep only this top fraction of a micro-batch's tokens, by entropy, in the policy term (the rest stay in "
        "its normaliser); 1: every token (TRL's top_entropy_quantile; 'Beyond the 80/20 rule' uses 0.2)",
        ge=0,
        le=1,
    )
    off_policy_mask_threshold: float | None = knob(
        None,
        "drop the policy term of responses with a negative advantage whose mean log-prob drift from the engine's "
        "sampling (log pi_engine - log pi) exceeds this (DeepSeek-V3.2's off-policy sequence masking, TRL's "
        "off_policy_mask_threshold, e.g. 0.5); null: off",
        gt=0,
    )
    kl_loss_bias_correction: bool = knob(
        False,
        "multiply the KL loss per token by the importance ratio pi / pi_old, so the KL is estimated for the "
        "current policy rather than the sampling one (DeepSeek-V3.2; TRL's use_bias_correction_kl)",
    )
    mask_truncated_completions: bool = knob(
        False,
        "leave responses cut at rollout.max_new_tokens out of the policy loss; they still count in their "
        "group's advantage statistics (TRL's mask_truncated_completions, DAPO's overlong filtering)",
    )

    def check(self, path: str) -> None:
        environment.note_fixed_aggregation(self.policy_loss, self.loss_agg_mode, path)


@dataclass
class CriticConfig(Section):
    """The value model of PPO with GAE, built when algorithm.adv_estimator=gae (verl's critic)."""

    model_path: str = knob("", "initialise the critic's decoder from this model folder; empty: from model.path")
    optim: OptimConfig = knob(OptimConfig, "the critic's AdamW and schedule (verl: critic.optim; e.g. lr 1e-5)")
    ppo_micro_batch_size_per_device: int = knob(8, "sequences per critic forward/backward", gt=0)
    forward_micro_batch_size_per_device: int | None = knob(
        None, "sequences per values-pass forward; null: ppo_micro_batch_size_per_device", gt=0
    )
    use_dynamic_bsz: bool | None = knob(None, "critic micro-batches by tokens; null: actor.use_dynamic_bsz")
    ppo_max_token_len_per_device: int = knob(
        32768, "with dynamic batching: tokens per critic training micro-batch (verl's ppo_max_token_len_per_gpu)", gt=0
    )
    forward_max_token_len_per_device: int | None = knob(
        None, "with dynamic batching: tokens per values-pass micro-batch; null: ppo_max_token_len_per_device", gt=0
    )
    cliprange_value: float = knob(0.5, "value clip around the values at rollout", gt=0)
    loss_agg_mode: str = knob(
        "token-mean", "how per-token value losses reduce to one", registry="npu_rl.core_algos:LOSS_AGG_MODES"
    )
    grad_clip: float = knob(1.0, "max gradient norm", gt=0)


@dataclass
class RefConfig(Section):
    """The frozen reference policy; only built when a KL term is on."""

    log_prob_micro_batch_size_per_device: int = knob(16, "sequences per reference logprob forward", gt=0)
    log_prob_use_dynamic_bsz: bool | None = knob(None, "reference micro-batches by tokens; null: actor.use_dynamic_bsz")
    log_prob_max_token_len_per_device: int = knob(
        16384, "with dynamic batching: tokens per reference logprob micro-batch", gt=0
    )
    param_offload: bool = knob(False, "keep the reference's FSDP shards in CPU memory")
    sync_steps: int = knob(
        0,
        "every this many steps move the reference towards the policy: ref = alpha * policy + (1 - alpha) * ref "
        "(TR-DPO; TRL's sync_ref_model with ref_model_sync_steps); 0: the reference stays the initial model",
        ge=0,
    )
    mixup_alpha: float = knob(
        0.6, "with sync_steps: the policy's share alpha (TRL's ref_model_mixup_alpha)", ge=0, le=1
    )


@dataclass
class TrainerConfig(Section):
    """Run length, device, logging and checkpoints."""

    project_name: str = knob("npu_rl", "project name (fills {project_name} in paths; tracker project)")
    experiment_name: str = knob("run", "experiment name (fills {experiment_name} in paths; tracker run)")
    device: Literal["auto", "npu", "cuda", "cpu"] = knob("auto", "accelerator; auto: npu, else cuda, else cpu")
    seed: int = knob(1, "seed of initialisation and sampling", ge=0)
    total_epochs: int = knob(1, "passes over the training set", gt=0)
    total_training_steps: int = knob(-1, "steps to run; -1: total_epochs over the training set", ge=-1)
    logger: list[str] = knob(["console"], "trackers", registry="npu_rl.tracking:REGISTRY")
    allow_missing_logger: bool = knob(
        False, "a tracker that cannot start only warns (default: an error at config load)"
    )
    log_dir: str = knob("outputs/{project_name}/{experiment_name}", "metrics, samples and config.yaml")
    log_val_generations: int = knob(4, "validation responses sent to the trackers each validation (verl's key)", ge=0)
    rollout_data_dir: str | None = knob(
        None, "write every step's training responses to <dir>/<step>.jsonl (verl's fields: input, output, gts, score)"
    )
    validation_data_dir: str | None = knob(
        None, "write every validation's responses to <dir>/<step>.jsonl (verl's fields; step 0: before training)"
    )
    balance_batch: bool = knob(
        True, "exchange whole groups between ranks after grading so every mini-batch's tokens are even (verl's key)"
    )
    profile_steps: list[int] = knob(
        [], "steps whose torch profiler trace is written to profile_dir (verl's global_profiler.steps)", ge=1
    )
    profile_dir: str = knob(
        "outputs/{project_name}/{experiment_name}/profile", "the profiled steps' traces (global_profiler.save_path)"
    )
    test_freq: int = knob(-1, "validate every N steps; -1: never (see val_before_train)", ge=-1)
    val_before_train: bool = knob(True, "validate once before the first step")
    val_only: bool = knob(
        False, "validate the policy (the model, or the checkpoint resumed from) once, log it and stop (verl's)"
    )
    save_freq: int = knob(-1, "checkpoint every N steps; -1: only at the end", ge=-1)
    default_local_dir: str = knob("checkpoints/{project_name}/{experiment_name}", "checkpoint directory")
    critic_warmup: int = knob(0, "steps that train only the critic before the actor starts (PPO with GAE)", ge=0)
    resume_mode: str = knob("auto", "auto (latest checkpoint if any) | disable | path to a global_step_N folder")
    max_ckpt_to_keep: int = knob(-1, "checkpoints kept; -1: all", ge=-1)
    num_threads: int = knob(
        0, "torch intra-op threads on CPU; 0: the cores this process may use (affinity) / ranks on the node", ge=0
    )
    max_nonfinite_steps: int = knob(
        3, "stop after this many steps in a row whose update was skipped for a NaN/inf loss or gradient", gt=0
    )
    allow_config_change: bool = knob(
        False, "resume even if the LR schedule, seeds or batch layout changed, applying them from the resumed step"
    )

    def steps(self, steps_per_epoch: int) -> int:
        """The run's length in optimizer steps: total_training_steps, or total_epochs of the sampler's."""
        return self.total_training_steps if self.total_training_steps > 0 else self.total_epochs * steps_per_epoch

    def check(self, path: str) -> None:
        environment.check_resume_mode(self.resume_mode, join(path, "resume_mode"))
        if not self.allow_missing_logger:
            environment.check_tracker_packages(self.logger, join(path, "logger"))


@dataclass
class Config(Section):
    """A whole run."""

    model: ModelConfig = knob(ModelConfig, "ModelConfig")
    data: DataConfig = knob(DataConfig, "DataConfig")
    actor: ActorConfig = knob(ActorConfig, "ActorConfig")
    ref: RefConfig = knob(RefConfig, "RefConfig")
    critic: CriticConfig = knob(CriticConfig, "CriticConfig")
    rollout: RolloutConfig = knob(RolloutConfig, "RolloutConfig")
    algorithm: AlgorithmConfig = knob(AlgorithmConfig, "AlgorithmConfig")
    reward: RewardConfig = knob(RewardConfig, "RewardConfig")
    trainer: TrainerConfig = knob(TrainerConfig, "TrainerConfig")

    def check(self, path: str) -> None:
        """Checks spanning groups; the world size comes from torchrun's WORLD_SIZE (1 when unset)."""
        data, actor, rollout = self.data, self.actor, self.rollout
        for key in ("train_batch_size", "gen_batch_size"):
            if (getattr(data, key) or 0) % actor.ppo_mini_batch_size:
                raise ConfigError(
                    f"data.{key} ({getattr(data, key)}) must be a multiple of actor.ppo_mini_batch_size "
                    f"({actor.ppo_mini_batch_size}): the ranks take equal shares of each mini-batch's prompts"
                )
        if data.generation_batch_size != data.train_batch_size and not self.algorithm.filter_groups.enable:
            raise ConfigError(
                f"data.gen_batch_size ({data.gen_batch_size}) differs from data.train_batch_size "
                f"({data.train_batch_size}), which only dynamic sampling uses (algorithm.filter_groups.enable=true); "
                "without it every generated group is trained on: set data.train_batch_size instead"
            )
        world = environment.world_size()
        if actor.ppo_mini_batch_size % world:
            raise ConfigError(
                f"actor.ppo_mini_batch_size ({actor.ppo_mini_batch_size}) must be divisible by the world size "
                f"({world}, from WORLD_SIZE)"
            )
        if rollout.name == "vllm":
            environment.check_tensor_parallel(rollout.tensor_parallel_size, world)
        longest = data.max_prompt_length + rollout.max_new_tokens
        for key, budget in self.token_budgets().items():
            if budget is not None and budget < longest:
                raise ConfigError(
                    f"{key} ({budget}) must hold the longest row: data.max_prompt_length + rollout.max_new_tokens "
                    f"= {longest}; raise it or turn dynamic batching off"
                )
        environment.warn_single_sample_groups(self.algorithm.adv_estimator, rollout.n)
        if self.trainer.val_only and not data.val_files:
            raise ConfigError("trainer.val_only=true needs data.val_files: it only runs validation")
        if self.algorithm.adv_estimator == "gdpo" and self.algorithm.use_kl_in_reward:
            raise ConfigError(
                "algorithm.adv_estimator=gdpo normalizes each reward term on its own, and a KL penalty in the reward "
                "is no reward term: set algorithm.use_kl_in_reward=false (actor.use_kl_loss=true keeps a KL term)"
            )
        if self.ref.sync_steps and (not self.needs_ref or actor.lora.rank > 0):
            why = "no KL term uses a reference" if not self.needs_ref else "with LoRA the reference is the frozen base"
            raise ConfigError(f"ref.sync_steps={self.ref.sync_steps} has no reference to move: {why}")
        if self.model.fp32_lm_head and actor.lora.rank > 0 and "lm_head" in actor.lora.target_modules:
            raise ConfigError(
                "model.fp32_lm_head computes the plain output head in fp32; actor.lora.target_modules puts an adapter "
                "on lm_head: drop lm_head from the targets or set model.fp32_lm_head=false"
            )
        bypass = self.algorithm.rollout_correction.bypass_mode
        if bypass and environment.needs_sum_pi_squared(self.algorithm.adv_estimator):
            raise ConfigError(
                f"algorithm.adv_estimator={self.algorithm.adv_estimator} needs the trainer's old-log-prob pass (its "
                "sum of squared probabilities per token), which algorithm.rollout_correction.bypass_mode skips; "
                "turn bypass_mode off or pick another estimator"
            )
        if bypass and actor.policy_loss != "vanilla":
            raise ConfigError(
                f"algorithm.rollout_correction.bypass_mode replaces the policy loss (loss_type ppo_clip or reinforce); "
                f"actor.policy_loss={actor.policy_loss} cannot be combined with it"
            )
        if self.use_critic and self.critic.model_path:  # read only when a critic is built
            environment.check_local_path(self.critic.model_path, "critic.model_path")
        if self.reward.overlong_buffer.enable and self.reward.overlong_buffer.len >= rollout.max_new_tokens:
            raise ConfigError(
                f"reward.overlong_buffer.len ({self.reward.overlong_buffer.len}) must be smaller than "
                f"rollout.max_new_tokens ({rollout.max_new_tokens})"
            )

    def token_budgets(self) -> dict[str, int | None]:
        """Tokens per micro-batch of the training, old-logprob and reference passes, and the critic's
        two when it is built (None: fixed rows), keyed by the config key that sets each."""
        dynamic = self.actor.use_dynamic_bsz

        def pick(flag: bool | None, budget: int) -> int | None:
            return budget if (dynamic if flag is None else flag) else None

        budgets = {
            "actor.ppo_max_token_len_per_device": pick(dynamic, self.actor.ppo_max_token_len_per_device),
            "rollout.log_prob_max_token_len_per_device": pick(
                self.rollout.log_prob_use_dynamic_bsz, self.rollout.log_prob_max_token_len_per_device
            ),
            "ref.log_prob_max_token_len_per_device": pick(
                self.ref.log_prob_use_dynamic_bsz, self.ref.log_prob_max_token_len_per_device
            ),
        }
        if self.use_critic:  # verl: the critic's values pass defaults to its training budget
            c = self.critic
            forward = c.forward_max_token_len_per_device or c.ppo_max_token_len_per_device
            budgets["critic.ppo_max_token_len_per_device"] = pick(c.use_dynamic_bsz, c.ppo_max_token_len_per_device)
            budgets["critic.forward_max_token_len_per_device"] = pick(c.use_dynamic_bsz, forward)
        return budgets

    @property
    def kl_in_loss(self) -> bool:
        return self.actor.use_kl_loss and self.actor.kl_loss_coef > 0

    @property
    def use_critic(self) -> bool:
        """A value model is trained when the estimator reads values (verl: adv_estimator == gae)."""
        return self.algorithm.adv_estimator == "gae"

    @property
    def needs_ref(self) -> bool:
        """A frozen reference model is built only when some KL term uses it."""
        return self.kl_in_loss or (self.algorithm.use_kl_in_reward and self.algorithm.kl_coef > 0)
