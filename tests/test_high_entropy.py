"""`actor.top_entropy_quantile` (TRL's option, "Beyond the 80/20 rule"): only the high-entropy tokens
keep a policy term; the selection matches torch.quantile, the update equals one whose other tokens
have zero advantage, and the trainer logs the share it kept."""

from __future__ import annotations

import json

import torch
from _arch_models import sharp_model
from test_token_budget import CPU, GradRecorder, policy_batch
from test_trainer import make_cfg, run

from npu_rl import actor
from npu_rl.algos.high_entropy import high_entropy_mask
from npu_rl.compute import build_plan
from npu_rl.config import ActorConfig
from npu_rl.metrics import StepStats


def test_selection_is_the_quantile_of_the_valid_tokens():
    entropy = torch.tensor([[0.1, 0.5, 0.9, 7.0], [0.3, 0.2, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # 7.0 is padding: never counted
    assert high_entropy_mask(entropy, mask, 1.0).tolist() == mask.bool().tolist()
    assert high_entropy_mask(entropy, mask, 0.5).tolist() == [[False, True, True, False], [True, False, False, False]]
    assert high_entropy_mask(entropy, mask, 0.0).tolist() == [[False, False, True, False], [False] * 4]
    assert not high_entropy_mask(entropy, torch.zeros(2, 4), 0.2).any()
    gen = torch.Generator().manual_seed(0)
    for keep in (0.05, 0.2, 0.37, 0.8):
        values, valid = torch.rand(6, 50, generator=gen), torch.rand(6, 50, generator=gen) > 0.3
        threshold = torch.quantile(values[valid], 1 - keep)
        assert torch.equal(high_entropy_mask(values, valid.float(), keep), valid & (values >= threshold))


def _grads(batch: actor.PolicyBatch, keep: float) -> list[torch.Tensor]:
    model = sharp_model("qwen2")
    cfg = ActorConfig(top_entropy_quantile=keep, grad_clip=1e9, ppo_micro_batch_size_per_device=len(batch))
    opt = GradRecorder([p for p in model.parameters() if p.requires_grad], lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    groups = len(torch.unique(batch.group))
    actor.update_policy(model, opt, sched, batch, cfg, 0.9, build_plan(model, CPU), groups, 16, StepStats())
    return opt.grads


def test_the_update_is_the_one_without_the_low_entropy_tokens_advantages():
    batch = policy_batch()
    with torch.no_grad():
        _, entropy, _ = actor.forward_logprobs(
            sharp_model("qwen2"), batch, 0.9, build_plan(sharp_model("qwen2"), CPU), True
        )
    selected = high_entropy_mask(entropy, batch.response_mask, 0.2)
    assert 0 < selected.sum() < batch.response_mask.sum()
    zeroed = batch.select(torch.arange(len(batch)))
    zeroed.advantages = batch.advantages * selected  # on-policy PPO: a zero advantage is a zero loss term
    got, want = _grads(batch, 0.2), _grads(zeroed, 1.0)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, atol=0, rtol=0)  # the same operations, zeros in the same places
    assert any((a - b).abs().max() > 1e-3 * a.abs().max() for a, b in zip(_grads(batch, 1.0), got, strict=True))


def test_the_trainer_logs_the_share_it_kept(tmp_path, tiny_model_dir, synthetic_parquet):
    keep = 0.2
    steps = ("trainer.total_training_steps=2", "trainer.test_freq=0", "trainer.save_freq=0")
    run(make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, *steps, f"actor.top_entropy_quantile={keep}"))
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "actor/grad_norm" in r]
    assert len(train) == 2
    for row in train:
        assert keep - 0.05 <= row["actor/entropy_selected_fraction"] <= keep + 0.1 and row["actor/grad_norm"] > 0
