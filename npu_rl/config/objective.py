"""The config groups of what a run optimises: the advantage estimator and its KL terms, rollout
correction, dynamic sampling (`algorithm`) and the reward functions with their shaping (`reward`).

Split from npu_rl.config.schema, which assembles them into the run's `Config`; declared the same way
(`knob(...)` per key, each group's own `check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from npu_rl.config import environment
from npu_rl.config.fields import ConfigError, Section, join, knob

KL_REGISTRY = "npu_rl.core_algos:KL_ESTIMATORS"


@dataclass
class KLControlConfig(Section):
    """How the in-reward KL coefficient (algorithm.kl_coef, its initial value) moves (verl's algorithm.kl_ctrl)."""

    type: Literal["fixed", "adaptive"] = knob("fixed", "fixed coefficient, or adapted towards target_kl")
    target_kl: float = knob(0.1, "adaptive: the KL per token the coefficient steers towards", gt=0)
    horizon: int = knob(10000, "adaptive: sequences over which the coefficient moves by up to 20%", gt=0)


@dataclass
class AdaptiveEntropyConfig(Section):
    """Adaptive entropy control (Skywork-OR1, TRL's use_adaptive_entropy); actor.entropy_coeff is the
    initial coefficient."""

    enable: bool = knob(False, "move the entropy coefficient after every optimizer step towards the target")
    target: float = knob(
        0.2, "mean per-token entropy (nats) at or below which the bonus applies and its coefficient grows", ge=0
    )
    coef_min: float = knob(0.0, "lower bound of the coefficient", ge=0)
    coef_max: float = knob(1.0, "upper bound of the coefficient", ge=0)
    delta: float = knob(0.005, "change of the coefficient per optimizer step", gt=0)

    def check(self, path: str) -> None:
        if self.coef_min > self.coef_max:
            raise ConfigError(
                f"{join(path, 'coef_min')} ({self.coef_min}) must not exceed {join(path, 'coef_max')} ({self.coef_max})"
            )


@dataclass
class RolloutCorrectionConfig(Section):
    """Importance weights and rejection between the rollout engine's and the trainer's log-probs
    (verl's algorithm.rollout_correction; npu_rl.algos.rollout_correction)."""

    rollout_is: Literal["none", "token", "sequence"] | None = knob(
        "none",
        "weight the policy loss by min(pi_train/pi_rollout, C) per token, or by min(prod over the sequence, C) "
        "on each of its tokens; none or null (verl's default): no weights",
    )
    rollout_is_threshold: float = knob(2.0, "the cap C of the importance weight", gt=0)
    rollout_is_batch_normalize: bool = knob(False, "divide the weights by their mean over the step batch")
    rollout_rs: str | None = knob(
        None,
        "reject tokens or sequences whose divergence leaves a band, comma-separated options "
        "token_k1..3, seq_sum_k1..3, seq_mean_k1..3, seq_max_k2..3 (all must pass); null: no rejection",
    )
    rollout_rs_threshold: str | None = knob(
        None,
        "bounds of rollout_rs, one for all options or one per option: 'lower_upper' ratio bounds for k1 "
        "(one number u: 1/u_u), an upper bound for k2 / k3",
    )
    bypass_mode: bool = knob(
        False,
        "the engine's log-probs are the old policy: no old-logprob forward pass; PPO's ratio compares the current "
        "policy with the engine, and the weights / rejection are taken per micro-batch against the current policy",
    )
    loss_type: Literal["ppo_clip", "reinforce"] = knob(
        "ppo_clip", "bypass mode's loss: PPO's clip on that ratio, or -w A log pi with the weights (verl's)"
    )

    def check(self, path: str) -> None:
        if self.loss_type != "ppo_clip" and not self.bypass_mode:
            raise ConfigError(
                f"{join(path, 'loss_type')}={self.loss_type} only applies with {join(path, 'bypass_mode')}=true"
            )
        if self.bypass_mode and self.rollout_is_batch_normalize:
            raise ConfigError(
                f"{join(path, 'rollout_is_batch_normalize')} needs the step batch's weights, which bypass mode never "
                "has at once (they are taken per micro-batch): turn one of them off"
            )
        if self.rollout_rs is None:
            if self.rollout_rs_threshold is not None:
                raise ConfigError(f"{join(path, 'rollout_rs_threshold')} is set but {join(path, 'rollout_rs')} is not")
            return
        from npu_rl.algos.rollout_correction import parse_rejection  # torch: only when rejection is asked for

        try:
            parse_rejection(self.rollout_rs, self.rollout_rs_threshold)
        except ValueError as err:
            raise ConfigError(f"{join(path, 'rollout_rs')}={self.rollout_rs!r}: {err}") from None

    @property
    def weighted(self) -> bool:
        return self.rollout_is in ("token", "sequence")

    @property
    def enabled(self) -> bool:
        """Whether the trainer corrects the step batch before the update, from its own log-probs (bypass mode
        corrects inside the loss instead)."""
        return (self.weighted or self.rollout_rs is not None) and not self.bypass_mode


@dataclass
class FilterGroupsConfig(Section):
    """DAPO dynamic sampling (verl's algorithm.filter_groups)."""

    enable: bool = knob(False, "drop groups whose metric is equal on every sample; sample more prompts to refill")
    metric: Literal["acc", "score", "seq_reward", "seq_final_reward"] = knob(
        "acc",
        "the per-sample value compared in a group: acc, or the score with its shaping terms (score; verl's "
        "seq_reward and seq_final_reward, the same here: groups are filtered before a KL penalty enters the reward)",
    )
    max_num_gen_batches: int = knob(0, "generation batches per step before giving up with an error; 0: no cap", ge=0)


@dataclass
class PolicyLossParams(Section):
    """Parameters of the policy losses that have their own (verl: actor.policy_loss.* and actor.tau_*; TRL:
    sapo_temperature_*, vespo_*)."""

    clip_cov_ratio: float = knob(
        0.0002, "clip_cov: fraction of a micro-batch's tokens whose gradient is removed", gt=0, le=1
    )
    clip_cov_lb: float = knob(1.0, "clip_cov: a token is a candidate when its covariance is above this ...")
    clip_cov_ub: float = knob(5.0, "clip_cov: ... and below this")
    kl_cov_ratio: float = knob(0.0002, "kl_cov: fraction of a micro-batch's tokens that get the KL penalty", gt=0, le=1)
    ppo_kl_coef: float = knob(0.1, "kl_cov: weight of the |log ratio| penalty on those tokens", ge=0)
    tau_pos: float = knob(1.0, "sapo: gate temperature of tokens with a positive advantage", gt=0)
    tau_neg: float = knob(1.05, "sapo: gate temperature of the others (larger: negative updates fade faster)", gt=0)
    vespo_k_pos: float = knob(2.0, "vespo: power of the sequence ratio w for tokens with A >= 0 (fades w << 1)", ge=0)
    vespo_lambda_pos: float = knob(3.0, "vespo: decay in w for tokens with A >= 0 (fades w >> 1)", ge=0)
    vespo_k_neg: float = knob(3.0, "vespo: power of w for tokens with A < 0", ge=0)
    vespo_lambda_neg: float = knob(2.0, "vespo: decay in w for tokens with A < 0", ge=0)

    def check(self, path: str) -> None:
        if self.clip_cov_lb >= self.clip_cov_ub:
            raise ConfigError(
                f"{join(path, 'clip_cov_lb')} ({self.clip_cov_lb}) must be below {join(path, 'clip_cov_ub')} "
                f"({self.clip_cov_ub}): no covariance lies between them"
            )


@dataclass
class AlgorithmConfig(Section):
    """Advantage estimation and the in-reward KL penalty."""

    adv_estimator: str = knob("grpo", "advantage estimator", registry="npu_rl.core_algos:ADV_ESTIMATORS")
    norm_adv_by_std_in_grpo: bool = knob(True, "divide by the group's std; false: Dr.GRPO")
    use_kl_in_reward: bool = knob(False, "subtract a KL penalty from the reward")
    kl_penalty: str = knob("k1", "KL estimator of the reward penalty", registry=KL_REGISTRY)
    kl_coef: float = knob(0.001, "weight of the reward KL penalty (initial value when adaptive)", ge=0)
    kl_ctrl: KLControlConfig = knob(KLControlConfig, "in-reward KL coefficient control")
    gamma: float = knob(1.0, "discount of token returns (reinforce_plus_plus, gae)", ge=0, le=1)
    lam: float = knob(1.0, "GAE lambda", ge=0, le=1)
    rollout_correction: RolloutCorrectionConfig = knob(RolloutCorrectionConfig, "rollout/trainer mismatch correction")
    filter_groups: FilterGroupsConfig = knob(FilterGroupsConfig, "DAPO dynamic sampling")


@dataclass
class CustomRewardFunction(Section):
    """A user's `compute_score(data_source, solution_str, ground_truth, extra_info)` by file and name."""

    path: str | None = knob(None, "Python file defining the function; replaces the default reward")
    name: str = knob("compute_score", "function name in that file")
    reward_kwargs: dict[str, Any] = knob({}, "extra keyword arguments for the function (verl's reward_kwargs)")
    batched: bool = knob(
        False,
        "call it once per step with lists (data_sources, solution_strs, ground_truths, extra_infos), in the trainer "
        "process: verl's reward_manager=batch",
    )

    def check(self, path: str) -> None:
        environment.check_file(self.path, join(path, "path"))
        if self.batched and not self.path:
            raise ConfigError(f"{join(path, 'batched')} needs {join(path, 'path')}: the function to call with lists")


@dataclass
class WeightedReward(Section):
    """One term of a weighted reward: a built-in name or a file's function."""

    name: str = knob(
        "math",
        "built-in reward, or the function's name when path is set",
        registry="reward.scoring:REGISTRY",
        unless="path",
    )
    weight: float = knob(1.0, "weight of this term in the sum")
    path: str | None = knob(None, "Python file defining the function `name`")
    kwargs: dict[str, Any] = knob({}, "extra keyword arguments for the function")
    style: Literal["auto", "verl", "trl"] = knob(
        "auto", "calling convention: verl per item by keyword, trl batched (prompts, completions, **columns)"
    )
    batched: bool = knob(
        False,
        "one call per step with every response, in the trainer process, as TRL calls reward functions (verl style: "
        "data_sources, solution_strs, ...); false: one item at a time in the grading pool, each with its own budget",
    )

    def check(self, path: str) -> None:
        environment.check_file(self.path, join(path, "path"))
        if self.batched and not self.path:
            raise ConfigError(f"{join(path, 'batched')}: only a function loaded from a file (path) is called batched")


@dataclass
class OverlongBufferConfig(Section):
    """DAPO's soft overlong punishment (verl's reward_model.overlong_buffer)."""

    enable: bool = knob(False, "penalise responses that reach into the last `len` tokens of rollout.max_new_tokens")
    len: int = knob(0, "buffer length in tokens (the penalty ramps over it)", ge=0)
    penalty_factor: float = knob(1.0, "penalty of a response that reaches rollout.max_new_tokens", ge=0)


REWARD_MODEL_TERM = "reward_model"  # the reward.functions name scored by reward.model (npu_rl.reward_model)


@dataclass
class RewardModelConfig(Section):
    """The discriminative reward model scoring the `{name: reward_model}` term of reward.functions (verl's
    reward_model.model; docs/reward.md)."""

    path: str | None = knob(
        None, "Hugging Face folder of a classification model with one label (e.g. a Skywork-Reward checkpoint)"
    )
    tokenizer_path: str | None = knob(
        None, "its tokenizer (it renders prompt + response with its chat template); null: path"
    )
    max_length: int = knob(4096, "tokens it reads per response; longer inputs are cut from the right (as verl)", gt=0)
    micro_batch_size: int = knob(8, "sequences per forward", gt=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = knob(
        "auto", "parameter dtype; auto: bfloat16 on accelerators, float32 on CPU"
    )
    trust_remote_code: bool = knob(False, "allow the model folder's own Python code (only for folders you trust)")


@dataclass
class RewardConfig(Section):
    """How responses are graded (docs/reward.md)."""

    custom_function: CustomRewardFunction = knob(CustomRewardFunction, "verl-style custom reward")
    functions: list[WeightedReward] = knob([], "weighted reward terms; empty: the default tiered math reward")
    strict: bool = knob(False, "true: only the requested answer form is graded; false: any clearly stated final answer")
    timeout_s: float = knob(5.0, "wall-clock budget per graded item, seconds", gt=0)
    num_workers: int = knob(2, "grading processes; 0 grades in-process", ge=0)
    incorrect_score: float = knob(0.0, "default reward of a wrong or missing answer")
    correct_score: float = knob(1.0, "default reward of a correct answer")
    format_bonus: float = knob(0.1, "added when a correct answer is in the requested form")
    reasoning_bonus: float = knob(0.1, "added (x completeness) when a correct answer shows its reasoning")
    overlong_buffer: OverlongBufferConfig = knob(OverlongBufferConfig, "soft overlong punishment (DAPO)")
    model: RewardModelConfig = knob(RewardModelConfig, "the reward model of a {name: reward_model} term")
    answer_format: Literal["", "boxed", "hash", "answer_tag", "answer_is"] = knob(
        "", "requested answer form for every row; empty: from data_source (gsm8k: hash, else boxed)"
    )

    def check(self, path: str) -> None:
        if self.overlong_buffer.enable and self.overlong_buffer.len <= 0:
            raise ConfigError(f"{path}.overlong_buffer.len must be > 0 when {path}.overlong_buffer.enable is true")
        if self.custom_function.path and self.functions:
            raise ConfigError(
                f"set either {path}.custom_function.path or {path}.functions, not both (to add a reward model to "
                f"your function, list both: {path}.functions=[{{name: compute_score, path: ...}}, "
                f"{{name: {REWARD_MODEL_TERM}}}])"
            )
        if self.uses_model and not self.model.path:
            raise ConfigError(
                f"{path}.functions has a {REWARD_MODEL_TERM!r} term but {path}.model.path is not set "
                "(a Hugging Face folder of a one-label classification model)"
            )
        if self.uses_model:
            environment.check_local_path(self.model.path, join(path, "model.path"))

    @property
    def uses_model(self) -> bool:
        """Whether a term is scored by the reward model."""
        return any(f.name == REWARD_MODEL_TERM and not f.path for f in self.functions)
