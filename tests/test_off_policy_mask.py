"""DeepSeek-V3.2's stabilisers as TRL has them: off-policy sequence masking (`actor.off_policy_mask_threshold`)
and the importance-corrected KL loss (`actor.kl_loss_bias_correction`)."""

from __future__ import annotations

import math

import pytest
import torch
from _arch_models import sharp_model
from test_algorithms_e2e import BASE, _train_rows
from test_token_budget import CPU, GradRecorder, policy_batch
from test_trainer import make_cfg, run

from npu_rl import actor
from npu_rl.algos.off_policy_mask import off_policy_keep
from npu_rl.compute import build_plan
from npu_rl.config import ActorConfig
from npu_rl.metrics import StepStats


def test_keeps_positive_advantages_and_sequences_that_stayed_close():
    advantages = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0], [0.0, 0.0]])
    logprobs = torch.zeros(4, 2)
    # mean drift log pi_sampler - log pi per row: 2.0 (second token padding), 0.25, 1.0, 2.0
    sampler = torch.tensor([[2.0, 9.0], [0.5, 0.0], [1.0, 1.0], [2.0, 2.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    keep = off_policy_keep(advantages, logprobs, sampler, mask, threshold=0.5)
    # row 0: positive advantage; row 1: close; row 2: negative and far (dropped); row 3: A = 0 counts as >= 0
    assert keep.tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]


def _update(batch: actor.PolicyBatch, **cfg_keys) -> tuple[list[torch.Tensor], dict[str, float]]:
    model = sharp_model("qwen2")
    cfg = ActorConfig(grad_clip=1e9, ppo_micro_batch_size_per_device=len(batch), **cfg_keys)
    opt = GradRecorder([p for p in model.parameters() if p.requires_grad], lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    stats = StepStats()
    groups = len(torch.unique(batch.group))
    actor.update_policy(model, opt, sched, batch, cfg, 0.9, build_plan(model, CPU), groups, 16, stats)
    return opt.grads, stats.reduce()


def _current_logprobs(batch: actor.PolicyBatch) -> torch.Tensor:
    model = sharp_model("qwen2")
    with torch.no_grad():
        return actor.forward_logprobs(model, batch, 0.9, build_plan(model, CPU)).logprobs


def test_the_update_is_the_one_without_the_dropped_sequences_advantages():
    batch = policy_batch()
    drift = torch.tensor([0.0, 1.0] * (len(batch) // 2) + [1.0] * (len(batch) % 2))  # every other row drifted
    batch.rollout_logprobs = _current_logprobs(batch) + drift[:, None]
    dropped = (drift > 0.5) & ((batch.advantages * batch.response_mask).sum(-1) < 0)
    assert 0 < dropped.sum() < len(batch)
    zeroed = batch.select(torch.arange(len(batch)))
    zeroed.advantages = batch.advantages * ~dropped[:, None]  # on-policy PPO: a zero advantage is a zero loss term
    got, stats = _update(batch, off_policy_mask_threshold=0.5)
    want, _ = _update(zeroed)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, atol=0, rtol=0)  # the same operations, zeros in the same places
    share = float((batch.response_mask * dropped[:, None]).sum() / batch.response_mask.sum())
    assert stats["actor/off_policy_masked_fraction"] == pytest.approx(share)


def test_bias_corrected_kl_is_the_kl_times_the_importance_ratio():
    batch = policy_batch()
    current = _current_logprobs(batch)
    batch.ref_logprobs = current - 0.3 * batch.response_mask
    batch.old_logprobs = current - 0.5  # every token's ratio pi / pi_old is e^0.5
    _, plain = _update(batch, use_kl_loss=True, kl_loss_type="k1")
    _, corrected = _update(batch, use_kl_loss=True, kl_loss_type="k1", kl_loss_bias_correction=True)
    assert plain["actor/kl_loss"] == pytest.approx(0.3, rel=1e-4)
    assert corrected["actor/kl_loss"] == pytest.approx(0.3 * math.exp(0.5), rel=1e-4)


def test_the_trainer_masks_drifted_negative_sequences(tmp_path, tiny_model_dir, synthetic_parquet):
    run(
        make_cfg(
            tmp_path, tiny_model_dir, synthetic_parquet, *BASE, "actor.ppo_epochs=3", "actor.optim.lr=1e-2",
            "actor.off_policy_mask_threshold=1e-4", "actor.kl_loss_bias_correction=true",
        )
    )  # fmt: skip
    rows = _train_rows(tmp_path)
    assert all(0 <= r["actor/off_policy_masked_fraction"] <= 1 for r in rows)
    assert any(r["actor/off_policy_masked_fraction"] > 0 for r in rows), "later epochs drift from the sampler"


STAND_IN_TRL = """
import math

class GRPOTrainer:
    def unrelated(self):
        raise AssertionError("not read")

    @staticmethod
    def get_off_policy_mask(advantages, per_token_logps, sampling_per_token_logps, mask, off_policy_threshold):
        drift = ((sampling_per_token_logps - per_token_logps) * mask).sum(1, keepdim=True)
        drift = drift / mask.sum(1, keepdim=True).clamp(min=1.0)
        return ((advantages >= 0) | (drift <= off_policy_threshold)).to(mask.dtype)

    @staticmethod
    @torch.no_grad()
    def get_gamma_weights(advantages, log_ratio_per_token, mask, importance_sampling_ratio, k_pos=2.0,
                          lambda_pos=3.0, k_neg=3.0, lambda_neg=2.0):
        log_w = (log_ratio_per_token * mask).sum(-1, keepdim=True)  # deliberately unclamped and sign-blind
        return torch.exp(lambda_pos + k_pos * log_w - lambda_pos * log_w.exp())
"""


def test_trl_parity_script_compares_with_the_functions_it_is_given(tmp_path):
    """bench/trl_parity.py (run by hand against a TRL checkout) finds agreement and disagreement."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    trainer = tmp_path / "trl" / "trainer"
    trainer.mkdir(parents=True)
    (trainer / "grpo_trainer.py").write_text(STAND_IN_TRL)
    script = Path(__file__).resolve().parents[1] / "bench" / "trl_parity.py"
    done = subprocess.run(
        [sys.executable, str(script), "--trl", str(tmp_path), "--trials", "5"], capture_output=True, text=True
    )
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {m[1]: float(m[2]) for m in re.finditer(r"^(\S+) vs .* (\d\.\d\de[+-]\d\d)$", done.stdout, re.M)}
    assert rows["get_off_policy_mask"] == 0.0 and rows["get_gamma_weights"] > 1e-3
