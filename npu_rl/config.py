"""One typed configuration tree for a GRPO run.

A run is described by a YAML file plus dotted command-line overrides
(``rollout.n=8 trainer.logger=[console,jsonl]``), as verl users write them.
Everything is validated while loading, before any model or data is touched:
an unknown key is rejected with the closest valid name, a value of the wrong
type or outside its allowed choices is rejected with its dotted path.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from npu_rl import verl_compat


class ConfigError(ValueError):
    """A configuration problem, reported with the dotted path of the offending key."""


@dataclass
class ModelConfig:
    """Which weights to train and how to hold them."""

    path: str = ""
    tokenizer_path: str | None = None  # defaults to `path`
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on accelerators, fp32 on CPU
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    """Parquet files in verl's row schema and how prompts are batched."""

    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    prompt_key: str = "prompt"
    max_prompt_length: int = 512
    train_batch_size: int = 8  # prompts per step; each is sampled rollout.n times
    val_batch_size: int = 64  # prompts per validation generate call
    val_max_samples: int = -1  # -1: whole validation set
    shuffle: bool = True
    seed: int = 1
    filter_overlong_prompts: bool = True  # False: an overlong prompt is an error instead
    # False: the prompt column holds plain strings, tokenized as written (TRL's "standard" format)
    apply_chat_template: bool = True


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    lr_warmup_steps: int = 0
    lr_warmup_steps_ratio: float = 0.0  # used when lr_warmup_steps == 0
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.0  # floor of cosine / linear decay, as a fraction of lr


@dataclass
class FSDPConfig:
    """FSDP2 settings; ignored in a single process without torch.distributed."""

    param_offload: bool = False
    reshard_after_forward: bool = True
    mixed_precision: bool = True  # bf16 params with fp32 reduce on accelerators; always fp32 on CPU


@dataclass
class ActorConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    ppo_mini_batch_size: int = 8  # prompts per optimizer step (x rollout.n sequences), as in verl
    ppo_micro_batch_size_per_device: int = 8  # sequences per forward/backward
    ppo_epochs: int = 1
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2  # > clip_ratio_low is DAPO's clip-higher
    clip_ratio_c: float = 3.0  # dual-clip bound for negative advantages
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = (
        "token-mean"
    )
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: Literal["k1", "k2", "k3", "low_var_kl"] = "low_var_kl"
    grad_clip: float = 1.0


@dataclass
class RefConfig:
    """The frozen reference policy; only built when a KL term is on."""

    log_prob_micro_batch_size_per_device: int = 16
    param_offload: bool = False


@dataclass
class ValKwargs:
    n: int = 1
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = -1


@dataclass
class RolloutConfig:
    name: Literal["hf", "vllm"] = "hf"
    n: int = 5
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    max_new_tokens: int = 1024
    micro_batch_size: int = 64  # prompts per generate call of the hf backend
    log_prob_micro_batch_size_per_device: int = 16
    val_kwargs: ValKwargs = field(default_factory=ValKwargs)
    # vLLM engine settings (rollout.name=vllm)
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    enforce_eager: bool = True
    max_num_seqs: int = 256
    free_cache_engine: bool = True
    weight_sync_bucket_mb: int = 512


@dataclass
class AlgorithmConfig:
    adv_estimator: Literal["grpo"] = "grpo"
    norm_adv_by_std_in_grpo: bool = True  # False gives Dr.GRPO
    use_kl_in_reward: bool = False
    kl_penalty: Literal["k1", "k2", "k3", "low_var_kl"] = "k1"
    kl_coef: float = 0.001


@dataclass
class CustomRewardFunction:
    """A user's `compute_score(data_source, solution_str, ground_truth, extra_info)` by file and name."""

    path: str | None = None
    name: str = "compute_score"
    reward_kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments, as in verl


@dataclass
class WeightedReward:
    """One term of a weighted reward: a built-in name (see reward.REGISTRY) or a file's function."""

    name: str = "math"
    weight: float = 1.0
    path: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the function
    style: Literal["auto", "verl", "trl"] = "auto"  # calling convention (reward/user_functions.py)


@dataclass
class RewardConfig:
    custom_function: CustomRewardFunction = field(default_factory=CustomRewardFunction)
    functions: list[WeightedReward] = field(default_factory=list)  # empty: the default tiered math reward
    strict: bool = True  # training extracts only the requested answer format
    timeout_s: float = 5.0  # wall-clock budget per graded item
    num_workers: int = 2  # grading processes; 0 grades in-process
    # Tiers of the default math reward (docs/reward.md): incorrect -> incorrect_score; correct ->
    # correct_score + format_bonus (requested answer form) + reasoning_bonus x completeness.
    incorrect_score: float = 0.0
    correct_score: float = 1.0
    format_bonus: float = 0.1
    reasoning_bonus: float = 0.1
    # Requested answer form for every row; "" picks it from data_source (gsm8k: hash, else boxed).
    answer_format: Literal["", "boxed", "hash", "answer_tag", "answer_is"] = ""


@dataclass
class TrainerConfig:
    project_name: str = "npu_rl"
    experiment_name: str = "run"
    device: Literal["auto", "npu", "cuda", "cpu"] = "auto"
    seed: int = 1
    total_epochs: int = 1
    total_training_steps: int = -1  # -1: total_epochs over the training set
    logger: list[str] = field(default_factory=lambda: ["console"])
    # A tracker that cannot start (e.g. swanlab not installed) stops the run with what to install;
    # true: warn and continue with the trackers that did start.
    allow_missing_logger: bool = False
    log_dir: str = "outputs/{project_name}/{experiment_name}"
    test_freq: int = -1  # -1: no periodic validation
    val_before_train: bool = True
    save_freq: int = -1  # -1: only at the end
    default_local_dir: str = "checkpoints/{project_name}/{experiment_name}"
    resume_mode: str = "auto"  # auto | disable | <path to global_step_N>
    max_ckpt_to_keep: int = -1
    num_threads: int = 0  # torch intra-op threads on CPU; 0 leaves torch's default


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        """Cross-field checks that a type alone cannot express."""
        positive = {
            "data.train_batch_size": self.data.train_batch_size,
            "data.max_prompt_length": self.data.max_prompt_length,
            "rollout.n": self.rollout.n,
            "rollout.max_new_tokens": self.rollout.max_new_tokens,
            "actor.ppo_mini_batch_size": self.actor.ppo_mini_batch_size,
            "actor.ppo_micro_batch_size_per_device": self.actor.ppo_micro_batch_size_per_device,
            "actor.ppo_epochs": self.actor.ppo_epochs,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} must be positive, got {value}")
        if self.data.train_batch_size % self.actor.ppo_mini_batch_size:
            raise ConfigError(
                f"data.train_batch_size ({self.data.train_batch_size}) must be a multiple of "
                f"actor.ppo_mini_batch_size ({self.actor.ppo_mini_batch_size})"
            )
        if not 0 <= self.actor.clip_ratio_low < 1 or self.actor.clip_ratio_high < 0:
            raise ConfigError("actor.clip_ratio_low must be in [0, 1) and actor.clip_ratio_high >= 0")
        if self.actor.clip_ratio_c <= 1:
            raise ConfigError(f"actor.clip_ratio_c must be > 1, got {self.actor.clip_ratio_c}")
        if not self.model.path:
            raise ConfigError("model.path is required (a Hugging Face model folder)")
        if not self.data.train_files:
            raise ConfigError("data.train_files is required (one or more parquet files)")
        from npu_rl.tracking import REGISTRY  # the tracker names live with the trackers

        for name in self.trainer.logger:
            if name not in REGISTRY:
                hint = difflib.get_close_matches(name, list(REGISTRY), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(f"trainer.logger: unknown tracker {name!r}{extra}; available: {sorted(REGISTRY)}")
        if self.rollout.temperature <= 0:
            raise ConfigError("rollout.temperature must be > 0 for training (GRPO needs diverse samples)")

    @property
    def kl_in_loss(self) -> bool:
        return self.actor.use_kl_loss and self.actor.kl_loss_coef > 0

    @property
    def needs_ref(self) -> bool:
        """A frozen reference model is built only when some KL term uses it."""
        return self.kl_in_loss or (self.algorithm.use_kl_in_reward and self.algorithm.kl_coef > 0)


# ----------------------------------------------------------------------------------------------
# Building the typed tree from plain data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check (and minimally convert) `value` against the annotation `tp`."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{path}: {value!r} is not one of {list(choices)}{extra}")
        return value
    if origin is dict:  # free-form keyword arguments: a mapping with string keys, values as given
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{path}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `trainer.logger=console` means a one-item list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-6` as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported annotation {_type_name(tp)}")


def build(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in hints:
            hint = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            suggestion = f"; did you mean '{(path + '.') if path else ''}{hint[0]}'?" if hint else ""
            raise ConfigError(f"unknown config key '{dotted}'{suggestion} (valid: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-parsed value (`[x,y]` is a list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("+")
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: cannot parse value ({err})") from err
    return key.split("."), value


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read YAML (optional), apply dotted overrides, build and validate the typed tree."""
    tree: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config groups")
        tree = loaded
    for text in overrides:
        keys, value = parse_override(text)
        _set_dotted(tree, keys, value)
    tree = verl_compat.to_native(tree, overrides)  # verl's key spellings and ${...} references
    cfg = build(Config, tree)
    cfg.validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (every default filled in) so a run can be reproduced from it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


def describe_groups() -> str:
    """Text for `--help`: each group with its keys and defaults."""
    lines = []
    for group in dataclasses.fields(Config):
        lines.append(f"{group.name}:")
        lines.extend(_describe(group.default_factory(), "  "))  # type: ignore[misc]
    return "\n".join(lines)


def _describe(obj: Any, indent: str) -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.append(f"{indent}{f.name}:")
            out.extend(_describe(value, indent + "  "))
        else:
            out.append(f"{indent}{f.name} = {value!r}")
    return out


def format_path(template: str, cfg: Config) -> str:
    """Fill `{project_name}` / `{experiment_name}` in trainer paths."""
    return template.format(project_name=cfg.trainer.project_name, experiment_name=cfg.trainer.experiment_name)
