"""One typed configuration tree for a GRPO run.

- `schema`: the groups and their keys (default, help, constraints) and each group's own checks
  (`objective`: the algorithm and reward groups; `generation`: the rollout group; `training`: optimizer,
  FSDP and LoRA);
- `fields`: how a key is declared (`knob`) and checked (`Section.validate`);
- `environment`: checks against the machine (paths, installed trackers, WORLD_SIZE);
- `loading`: YAML + dotted overrides -> a validated `Config`, and back to YAML;
- `reference`: `--help` text and docs/config.md, generated from the same declarations.
"""

from npu_rl.config.fields import ConfigError, Section, knob
from npu_rl.config.generation import MultiTurnConfig, RolloutConfig, ValKwargs
from npu_rl.config.loading import build, format_path, load_config, parse_override, save_config, to_dict
from npu_rl.config.objective import AlgorithmConfig, CustomRewardFunction, RewardConfig, WeightedReward
from npu_rl.config.reference import help_text as describe_groups
from npu_rl.config.schema import (
    ActorConfig,
    Config,
    CriticConfig,
    DataConfig,
    FSDPConfig,
    ModelConfig,
    OptimConfig,
    RefConfig,
    TrainerConfig,
)

__all__ = [
    "ActorConfig",
    "AlgorithmConfig",
    "Config",
    "ConfigError",
    "CriticConfig",
    "CustomRewardFunction",
    "DataConfig",
    "FSDPConfig",
    "ModelConfig",
    "MultiTurnConfig",
    "OptimConfig",
    "RefConfig",
    "RewardConfig",
    "RolloutConfig",
    "Section",
    "TrainerConfig",
    "ValKwargs",
    "WeightedReward",
    "build",
    "describe_groups",
    "format_path",
    "knob",
    "load_config",
    "parse_override",
    "save_config",
    "to_dict",
]
