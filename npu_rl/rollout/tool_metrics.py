"""Tool-use reward shaping and metrics, read from a multi-turn rollout's per-row counts.

The final answer is graded as in single-turn training; shaping is an optional, capped extra term:
``clip(bonus * successful_calls - penalty * failed_calls + tool_reward, -cap, cap)`` where
`tool_reward` is what the tools themselves returned (0 for the built-in ones). It is logged as its
own reward term (reward/tool_shaping/mean) so it can be told apart from the graded score.
"""

from __future__ import annotations

import torch

from npu_rl.config import MultiTurnConfig
from npu_rl.metrics import StepStats


def tool_shaping(row_metrics: dict[str, torch.Tensor], cfg: MultiTurnConfig) -> torch.Tensor | None:
    """[rows] the shaping term, or None when shaping is off or the rollout made no tool calls."""
    if "tool_calls" not in row_metrics or not (cfg.tool_call_bonus or cfg.failed_call_penalty):
        return None
    calls, ok = row_metrics["tool_calls"], row_metrics["tool_successes"]
    raw = cfg.tool_call_bonus * ok - cfg.failed_call_penalty * (calls - ok) + row_metrics["tool_reward"]
    return raw.clamp(-cfg.shaping_cap, cfg.shaping_cap)


def record_tool_metrics(stats: StepStats, row_metrics: dict[str, torch.Tensor]) -> None:
    """multi_turn/turns/mean (assistant turns), verl's num_turns/{mean,max,min} (the prompt, assistant turns,
    tool messages and simulated user replies, as verl's tool agent loop counts them), tool/calls/mean,
    tool/success_rate and tool/latency_s (mean per call)."""
    if "tool_calls" not in row_metrics:
        return
    calls = float(row_metrics["tool_calls"].sum())
    stats.add_values("multi_turn/turns", row_metrics["turns"])
    stats.add_values("num_turns", row_metrics["num_turns"])
    stats.add_values("tool/calls", row_metrics["tool_calls"])
    stats.add_ratio("tool/success_rate", float(row_metrics["tool_successes"].sum()), calls)
    stats.add_ratio("tool/latency_s", float(row_metrics["tool_latency_s"].sum()), calls)
    stats.add_ratio("tool/call_rate", float((row_metrics["tool_calls"] > 0).sum()), len(row_metrics["tool_calls"]))
    if "user_turns" in row_metrics:  # simulated user turns: replies per response and the last turn score
        stats.add_values("interaction/user_turns", row_metrics["user_turns"])
        stats.add_values("interaction/score", row_metrics["interaction_score"])
        stats.add_sum("interaction/timeouts", float(row_metrics["interaction_timeouts"].sum()))
