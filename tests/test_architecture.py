"""The architecture's contracts: groups come from the batch, devices are decided once, the
evaluator sizes its engine from its own arguments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from _arch_models import sharp_model
from test_trainer import make_cfg, run

from npu_rl import actor, core_algos, optim
from npu_rl.compute import build_plan
from npu_rl.config import ActorConfig, OptimConfig
from npu_rl.data import PromptRecord
from npu_rl.device import Accelerator
from npu_rl.metrics import StepStats
from npu_rl.rollout import RolloutBatch, RolloutOutput

ROOT = Path(__file__).resolve().parents[1]

# Arithmetic that recovers groups from the configured sample count (`rollout.n`, `params.n`,
# `val_kwargs.n`, ...): `i * params.n`, `x // cfg.rollout.n`, or any `repeat_interleave`.
N_ARITHMETIC = re.compile(r"[*/%]\s*\w+(?:\.\w+)*\.n\b|\b\w+(?:\.\w+)*\.n\s*[*/%]|repeat_interleave|rows_per_mini")


def test_no_group_arithmetic_with_n_outside_the_rollout():
    offenders = []
    for path in sorted((ROOT / "npu_rl").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("npu_rl/rollout/") or rel.startswith("npu_rl/kernels/"):
            continue  # engines lay out their rows; kernels repeat caches by construction
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if N_ARITHMETIC.search(code):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == [], "groups must be read from RolloutBatch.group:\n" + "\n".join(offenders)


def _unequal_batch(vocab: int) -> RolloutBatch:
    """Two groups of 3 and 5 responses (as dynamic sampling or multi-turn would leave them)."""
    prompts = [[5, 17, 42, 99], [12, 250, 7]]
    records = [PromptRecord(i + 10, p, "", [], "t", "0", "math", {}, "f", i) for i, p in enumerate(prompts)]
    group = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    gen = torch.Generator().manual_seed(0)
    responses = torch.randint(3, vocab, (8, 6), generator=gen)
    lengths = torch.tensor([6, 2, 4, 1, 6, 3, 5, 2])
    out = RolloutOutput(
        responses, torch.zeros(8, 6), lengths, ["stop"] * 8, group, torch.tensor([0, 1, 2, 0, 1, 2, 3, 4])
    )
    return RolloutBatch.bind(records, out)


def test_unequal_groups_through_advantages_and_one_update():
    model = sharp_model("qwen2", 512)
    rollout = _unequal_batch(512)
    assert rollout.group_sizes.tolist() == [3, 5]
    assert rollout.uids.tolist() == [10, 10, 10, 11, 11, 11, 11, 11]
    assert rollout.prompt_lengths.tolist() == [4, 4, 4, 3, 3, 3, 3, 3]

    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    adv = core_algos.grpo_advantages(scores, rollout.group, norm_by_std=True)
    # by hand: group 0 mean 1/3, unbiased std sqrt(1/3); group 1 mean 2/5, std sqrt(0.3)
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (torch.tensor(1 / 3).sqrt() + 1e-6)
    torch.testing.assert_close(adv[:3], expected)
    torch.testing.assert_close(
        adv[3:], (torch.tensor([0.6, 0.6, -0.4, -0.4, -0.4])) / (torch.tensor(0.3).sqrt() + 1e-6)
    )

    batch = actor.build_policy_batch(rollout, pad_token_id=0)
    batch.advantages = adv[:, None] * batch.response_mask
    minis = batch.split_groups(1)
    assert [len(m) for m in minis] == [3, 5]  # a mini-batch is whole groups, whatever their sizes
    assert torch.equal(batch.input_ids[3, 1:4], torch.tensor([12, 250, 7]))  # row 3 is group 1's prompt

    cfg = ActorConfig(ppo_micro_batch_size_per_device=2, optim=OptimConfig(lr=1e-2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = optim.build_optimizer(model, cfg.optim)
    scheduler = optim.build_scheduler(optimizer, 1, cfg.optim)
    stats = StepStats()
    plan = build_plan(model, Accelerator("cpu"))
    actor.update_policy(model, optimizer, scheduler, batch, cfg, 1.0, plan, 2, horizon=6, stats=stats)
    metrics = stats.reduce()
    assert metrics["actor/grad_norm"] > 0
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_step_stats_reduce_each_kind():
    stats = StepStats()
    stats.add_values("len", torch.tensor([1.0, 5.0, 3.0]))
    stats.add_sum("count", 2)
    stats.add_sum("count", 3)
    stats.add_ratio("rate", 1.0, 4.0)
    stats.add_ratio("empty", 0.0, 0.0)
    stats.add_max("time", 2.0)
    stats.add_max("time", 1.0)
    assert stats.reduce() == {
        "len/mean": 3.0, "len/max": 5.0, "len/min": 1.0, "count": 5.0, "rate": 0.25, "empty": 0.0, "time": 2.0,
    }  # fmt: skip


def _poison_cuda(monkeypatch: pytest.MonkeyPatch, touched: list[str]) -> None:
    """A CUDA device that claims to exist; any use of it is recorded."""
    monkeypatch.delenv("NPU_RL_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in (
        "manual_seed", "manual_seed_all", "get_rng_state", "get_rng_state_all", "set_rng_state",
        "set_rng_state_all", "synchronize", "set_device", "current_device", "empty_cache", "max_memory_allocated",
        "max_memory_reserved", "get_device_name", "_lazy_init", "init",
    ):  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name, **k: touched.append(_n))


@pytest.mark.slow
def test_cpu_device_never_touches_another_visible_device(tmp_path, tiny_model_dir, synthetic_parquet, monkeypatch):
    touched: list[str] = []
    _poison_cuda(monkeypatch, touched)
    common = ("trainer.device=cpu", "trainer.save_freq=1", "trainer.test_freq=-1", "trainer.val_before_train=false")
    cfg = make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, "trainer.total_training_steps=1", *common)
    run(cfg)  # trains, saves RNG state
    cfg = make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, "trainer.total_training_steps=2", *common)
    trainer = run(cfg)  # resumes: restores RNG state
    assert trainer.global_step == 2
    assert touched == [], f"trainer.device=cpu touched torch.cuda: {touched}"
