"""`ref.sync_steps` (TR-DPO; TRL's sync_ref_model): the reference moves towards the policy on schedule,
is checkpointed so a resumed run continues exactly, and mixes shard by shard under FSDP2."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import make_cfg, run, straight_and_resumed

from npu_rl.config import ConfigError
from npu_rl.model import mix_into


def test_mix_into_is_the_weighted_average_of_the_parameters():
    torch.manual_seed(0)
    target, source = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    mix_into(target, source, 0.6)
    for t, b, s in zip(target.parameters(), before, source.parameters(), strict=True):
        torch.testing.assert_close(t, 0.6 * s + 0.4 * b)


def _ref_weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.ref.state_dict().items()}


def test_the_reference_is_mixed_on_schedule(tmp_path, tiny_model_dir, synthetic_parquet):
    trainer = run(
        make_cfg(
            tmp_path, tiny_model_dir, synthetic_parquet, "trainer.total_training_steps=2", "trainer.test_freq=0",
            "trainer.save_freq=0", "ref.sync_steps=2", "ref.mixup_alpha=0.6",
        )
    )  # fmt: skip
    base = load_file(tiny_model_dir / "model.safetensors")
    policy = trainer.model.state_dict()
    ref = _ref_weights(trainer)
    moved = 0
    for name, initial in base.items():  # one mix, after step 2: 0.6 * policy + 0.4 * initial
        torch.testing.assert_close(ref[name], 0.6 * policy[name] + 0.4 * initial, rtol=0, atol=1e-6, msg=name)
        moved += not torch.equal(ref[name], initial)
    assert moved, "the policy trained, so the reference moved"


def test_a_resumed_run_continues_with_the_moved_reference(tmp_path, tiny_model_dir, synthetic_parquet):
    keys = ("trainer.test_freq=-1", "ref.sync_steps=1")
    straight, resumed = straight_and_resumed(tmp_path, tiny_model_dir, synthetic_parquet, *keys)
    want, got = _ref_weights(straight), _ref_weights(resumed)
    for name in want:  # bit-identical on this machine; 1e-6 admits a reordered reduction
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)


def test_a_reference_that_cannot_move_is_refused(tmp_path, tiny_model_dir, synthetic_parquet):
    with pytest.raises(ConfigError, match="no KL term uses a reference"):
        make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, "ref.sync_steps=4", "actor.use_kl_loss=false")
