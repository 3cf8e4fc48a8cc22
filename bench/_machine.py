"""What every bench script prints beside its figures: the CPU they were measured on."""

from __future__ import annotations

from npu_rl.env_report import cpu_model

__all__ = ["cpu_model"]
