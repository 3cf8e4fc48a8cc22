"""Adaptive entropy control (Skywork-OR1, TRL's use_adaptive_entropy): the controller's rule, the
coefficient the update applies, its measurement, and its state across a resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _arch_models import sharp_model
from test_token_budget import CPU, GradRecorder, policy_batch
from test_trainer import make_cfg, run

from npu_rl import actor
from npu_rl.algos.adaptive_entropy import AdaptiveEntropy
from npu_rl.compute import build_plan
from npu_rl.config import ActorConfig, ConfigError
from npu_rl.metrics import StepStats


def test_the_coefficient_climbs_while_entropy_is_low_and_applies_only_then():
    ctrl = AdaptiveEntropy(coef=0.01, target=0.5, coef_min=0.0, coef_max=0.02, delta=0.005)
    assert ctrl.applied() == 0.0  # nothing measured yet
    ctrl.update(0.3)
    assert (ctrl.coef, ctrl.applied()) == (pytest.approx(0.015), pytest.approx(0.015))
    ctrl.update(0.5)  # at the target counts as low
    ctrl.update(0.1)
    assert ctrl.coef == pytest.approx(0.02)  # capped at coef_max
    ctrl.update(0.9)
    assert (ctrl.coef, ctrl.applied()) == (pytest.approx(0.015), 0.0)  # decreases, and is not applied
    for _ in range(5):
        ctrl.update(0.9)
    assert ctrl.coef == 0.0  # floored at coef_min
    restored = AdaptiveEntropy(coef=1.0, target=0.5, coef_min=0.0, coef_max=1.0, delta=0.1)
    restored.load_state_dict(ctrl.state_dict())
    assert (restored.coef, restored.last_entropy) == (0.0, 0.9)


def _update(batch, entropy_coeff: float = 0.0, control: AdaptiveEntropy | None = None):
    model = sharp_model("qwen2")
    cfg = ActorConfig(grad_clip=1e9, ppo_micro_batch_size_per_device=4, entropy_coeff=entropy_coeff)
    opt = GradRecorder([p for p in model.parameters() if p.requires_grad], lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    stats = StepStats()
    groups = len(torch.unique(batch.group))
    plan = build_plan(model, CPU)
    actor.update_policy(model, opt, sched, batch, cfg, 0.9, plan, groups, 16, stats, entropy_control=control)
    return opt.grads, stats.reduce()


def test_the_update_applies_the_controllers_coefficient_and_measures_the_step_entropy():
    batch = policy_batch()
    control = AdaptiveEntropy(coef=0.3, target=1e9, coef_min=0.0, coef_max=1.0, delta=0.05)
    first, stats = _update(batch, control=control)
    for a, b in zip(_update(batch)[0], first, strict=True):  # nothing measured yet: no bonus
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    # the measurement is the mini-batch's token-mean entropy, what actor/entropy logs under token-mean
    assert control.last_entropy == pytest.approx(stats["actor/entropy"], rel=1e-5)
    assert control.coef == stats["actor/entropy_coeff"] == pytest.approx(0.35)
    second, _ = _update(batch, control=AdaptiveEntropy(**{**control.__dict__}))
    for a, b in zip(_update(batch, entropy_coeff=0.35)[0], second, strict=True):  # now the bonus is on
        torch.testing.assert_close(b, a, atol=0, rtol=0)


def test_the_controller_state_survives_a_resume(tmp_path, tiny_model_dir, synthetic_parquet):
    keys = (
        "trainer.test_freq=-1", "actor.entropy_coeff=0.01", "actor.adaptive_entropy.enable=true",
        "actor.adaptive_entropy.target=100",
    )  # fmt: skip
    first = make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, *keys)
    first.trainer.total_training_steps = 2
    saved = run(first).entropy_control.state_dict()
    assert saved["coef"] == pytest.approx(0.01 + 0.005 * 4)  # two steps of two mini-batches, entropy below 100
    resumed = run(make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, *keys))
    assert resumed.global_step == 4 and resumed.entropy_control.coef == pytest.approx(0.01 + 0.005 * 8)
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [round(r["actor/entropy_coeff"], 6) for r in rows if "actor/entropy_coeff" in r] == [0.02, 0.03, 0.04, 0.05]
    assert math.isfinite(saved["last_entropy"])


def test_bounds_are_checked(tmp_path, tiny_model_dir, synthetic_parquet):
    with pytest.raises(ConfigError, match="coef_min"):
        make_cfg(
            tmp_path, tiny_model_dir, synthetic_parquet, "actor.adaptive_entropy.coef_min=0.5",
            "actor.adaptive_entropy.coef_max=0.1",
        )  # fmt: skip
