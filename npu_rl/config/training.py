"""The config groups of how a trained model is optimized and laid out: AdamW and its schedule
(`optim`, the critic's too), FSDP2 sharding (`fsdp`) and LoRA adapters (`lora`) of the actor.

Split from npu_rl.config.schema, which assembles them into the run's `Config`; declared the same way
(`knob(...)` per key, each group's own `check`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

from npu_rl.config import environment
from npu_rl.config.fields import ConfigError, Section, join, knob


@dataclass
class OptimConfig(Section):
    """AdamW and its learning-rate schedule."""

    lr: float = knob(1e-6, "peak learning rate", ge=0)
    weight_decay: float = knob(0.01, "AdamW decoupled weight decay", ge=0)
    betas: list[float] = knob([0.9, 0.999], "AdamW (beta1, beta2)", ge=0, lt=1)
    eps: float = knob(1e-8, "AdamW epsilon", gt=0)
    lr_warmup_steps: int = knob(
        0, "linear warmup steps, from 0 at the first step as in verl; 0: use lr_warmup_steps_ratio", ge=0
    )
    lr_warmup_steps_ratio: float = knob(
        0.0, "warmup as a fraction of the total steps (when lr_warmup_steps=0)", ge=0, le=1
    )
    lr_scheduler: Literal["constant", "cosine", "linear"] = knob("constant", "decay after warmup")
    min_lr_ratio: float = knob(0.0, "floor of cosine / linear decay, as a fraction of lr", ge=0, le=1)
    num_cycles: float = knob(
        0.5, "cosine waves over the decay (verl's num_cycles): 0.5 falls once from lr to the floor", gt=0
    )

    def check(self, path: str) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"{join(path, 'betas')} must hold two numbers (beta1, beta2), got {self.betas}")


@dataclass
class FSDPConfig(Section):
    """FSDP2 settings; ignored in a single process without torch.distributed."""

    param_offload: bool = knob(False, "keep parameter shards in CPU memory between uses")
    optimizer_offload: bool = knob(
        False,
        "keep optimizer states in CPU memory and step there; under FSDP2 this is the same CPUOffloadPolicy as "
        "param_offload (parameter, gradient and optimizer shards on the host); no effect on the CPU device",
    )
    reshard_after_forward: bool = knob(True, "free gathered parameters after forward (less memory, one more gather)")
    mixed_precision: bool = knob(True, "bf16 parameters with fp32 reduction on accelerators; always fp32 on CPU")
    fsdp_size: int = knob(
        -1,
        "ranks each parameter is sharded over; -1 (or >= the world size): all of them (FSDP); a smaller divisor "
        "of the world size: HSDP, sharded within groups of that many ranks and replicated across the groups "
        "(verl's fsdp_size; one node's card count keeps all-gathers inside the node)",
    )

    def check(self, path: str) -> None:
        if self.fsdp_size == 0 or self.fsdp_size < -1:
            raise ConfigError(f"{join(path, 'fsdp_size')}={self.fsdp_size}: use -1 (every rank) or a rank count >= 1")
        world = environment.world_size()
        if 0 < self.fsdp_size < world and world % self.fsdp_size:
            raise ConfigError(
                f"{join(path, 'fsdp_size')}={self.fsdp_size} must divide the world size ({world}, from WORLD_SIZE): "
                "each replica group shards over the same number of ranks"
            )


@dataclass
class LoraConfig(Section):
    """LoRA adapters through peft (npu_rl.lora); rank 0 trains every weight."""

    rank: int = knob(0, "adapter rank; 0: no LoRA, full fine-tuning", ge=0)
    alpha: float = knob(16.0, "LoRA alpha (the update is scaled by alpha / rank)", gt=0)
    target_modules: list[str] = knob(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "linear layers that get adapters (peft's target_modules; 'all-linear' for every one)",
    )

    def check(self, path: str) -> None:
        if self.rank > 0 and importlib.util.find_spec("peft") is None:
            raise ConfigError(f"{join(path, 'rank')} > 0 (LoRA) needs peft: pip install 'npu_rl[lora]'")
