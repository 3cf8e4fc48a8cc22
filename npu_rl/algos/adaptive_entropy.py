"""Adaptive entropy control (Skywork-OR1; TRL's use_adaptive_entropy): an entropy bonus that switches on
when the policy's entropy falls to a target and whose coefficient climbs while it stays there.

After every optimizer step the step's mean per-token entropy (all ranks' tokens) moves the coefficient
by `delta`: up while the entropy is at or below `target`, down otherwise, within [coef_min, coef_max].
The next step applies the coefficient only if that last entropy was at or below the target (no bonus
before the first measurement). The state is two numbers, saved with checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from npu_rl.config import ActorConfig


@dataclass
class AdaptiveEntropy:
    coef: float
    target: float
    coef_min: float
    coef_max: float
    delta: float
    last_entropy: float = math.inf

    @classmethod
    def from_config(cls, cfg: ActorConfig) -> AdaptiveEntropy | None:
        """The controller actor.adaptive_entropy asks for (actor.entropy_coeff its start), or None when off."""
        ae = cfg.adaptive_entropy
        return cls(cfg.entropy_coeff, ae.target, ae.coef_min, ae.coef_max, ae.delta) if ae.enable else None

    def applied(self) -> float:
        """The entropy coefficient of the coming optimizer step."""
        return self.coef if self.last_entropy <= self.target else 0.0

    def update(self, entropy: float) -> None:
        """After an optimizer step whose mean per-token entropy was `entropy` (TRL's order and bounds)."""
        if entropy <= self.target:
            self.coef = min(self.coef + self.delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.delta, self.coef_min)
        self.last_entropy = entropy

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.coef, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef, self.last_entropy = float(state["coef"]), float(state["last_entropy"])
