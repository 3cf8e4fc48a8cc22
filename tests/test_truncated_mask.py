"""`actor.mask_truncated_completions` (TRL's option): responses cut at max_new_tokens keep their place
and their group's advantage statistics but leave the policy loss."""

from __future__ import annotations

import json

import torch
from _arch_models import sharp_model
from test_token_budget import LENGTHS, policy_batch, update_grads
from test_trainer import make_cfg, run

from npu_rl import actor


def test_masked_rows_give_the_gradient_of_the_batch_without_them():
    batch = policy_batch()
    truncated = [length == max(LENGTHS) for length in LENGTHS]  # the rows that ran to the width
    assert 0 < sum(truncated) < len(LENGTHS)
    masked = actor.without_truncated(batch, truncated)
    assert masked.response_mask[torch.tensor(truncated)].sum() == 0
    assert torch.equal(masked.attention_mask, batch.attention_mask) and torch.equal(masked.advantages, batch.advantages)
    kept = batch.select(torch.tensor([not t for t in truncated]).nonzero().flatten())
    for micro, budget in ((4, None), (4, 20)):  # fixed rows and a token budget
        got = update_grads(sharp_model("qwen2"), masked, budget, micro)
        want = update_grads(sharp_model("qwen2"), kept, None, len(kept))
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(b, a, atol=4e-5 * float(a.abs().max()), rtol=0)  # as test_token_budget


def test_a_step_whose_responses_are_all_truncated_does_not_move_the_policy(tmp_path, tiny_model_dir, synthetic_parquet):
    cfg = make_cfg(
        tmp_path, tiny_model_dir, synthetic_parquet, "actor.mask_truncated_completions=true", "rollout.max_new_tokens=2"
    )
    run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "actor/grad_norm" in r]
    assert any(r["response_length/clip_ratio"] == 1.0 for r in train)
    for r in train:  # the KL term is masked too: nothing is left to differentiate
        assert (r["actor/grad_norm"] == 0.0) == (r["response_length/clip_ratio"] == 1.0), r
