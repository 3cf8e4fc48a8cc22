"""Token-budget micro-batches (`actor.use_dynamic_bsz`, npu_rl.seqlen) give the fixed-size path's
gradient: in one process, and across two gloo ranks whose rows want different numbers of
micro-batches (the count is agreed across ranks, so FSDP's collectives still pair up), there with
and without gradient checkpointing of the sharded layers and with the chunked head.
"""

from __future__ import annotations

import pytest
import torch
from _arch_models import rollout_batch, sharp_model
from _dist_utils import run_workers

from npu_rl import actor, optim, seqlen
from npu_rl.compute import build_plan
from npu_rl.config import ActorConfig
from npu_rl.device import Accelerator
from npu_rl.metrics import StepStats

CPU = Accelerator("cpu")
PROMPTS = [[5, 17, 42, 99, 7, 301], [12, 250], [64, 65, 66, 67], [8, 9, 10]]
N = 3
LENGTHS = [11, 12, 5, 11, 2, 9, 3, 1, 2, 1, 12, 1]  # a long tail, responses up to the width


class GradRecorder(torch.optim.SGD):
    """SGD that keeps the (full) gradients it was stepped with."""

    def step(self, closure=None):
        self.grads = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad.clone() for p in self.params]
        return super().step(closure)

    @property
    def params(self):
        return [p for group in self.param_groups for p in group["params"]]


def policy_batch(pad_id: int = 0) -> actor.PolicyBatch:
    gen = torch.Generator().manual_seed(3)
    width = max(LENGTHS)
    responses = torch.randint(3, 400, (len(PROMPTS) * N, width), generator=gen)
    lengths = torch.tensor(LENGTHS)
    responses[torch.arange(width)[None, :] >= lengths[:, None]] = pad_id
    batch = actor.build_policy_batch(rollout_batch(PROMPTS, responses, lengths, N), pad_id)
    batch.advantages = torch.randn(len(LENGTHS), 1, generator=gen) * batch.response_mask
    return batch


def update_grads(
    model, batch, budget: int | None, micro: int, world_size: int = 1, checkpoint: bool = False, head_chunk: int = 0
) -> list[torch.Tensor]:
    cfg = ActorConfig()
    cfg.grad_clip = 1e9  # the recorded gradient is the raw one
    cfg.ppo_micro_batch_size_per_device = micro
    cfg.use_dynamic_bsz = budget is not None
    cfg.ppo_max_token_len_per_device = budget or 1
    opt = GradRecorder([p for p in model.parameters() if p.requires_grad], lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    groups = len(torch.unique(batch.group))
    plan = build_plan(model, CPU, gradient_checkpointing=checkpoint, head_chunk=head_chunk)
    assert plan.checkpoint == checkpoint
    actor.update_policy(model, opt, sched, batch, cfg, 0.9, plan, groups, 16, StepStats(), world_size=world_size)
    return opt.grads


def test_balanced_parts_are_deterministic_balanced_and_cover_every_row():
    costs = [40, 3, 17, 40, 8, 3, 12, 33, 8, 5, 45, 14]
    parts = seqlen.balanced_parts(costs, 4)
    assert sorted(r for p in parts for r in p) == list(range(len(costs)))
    assert all(p == sorted(p) for p in parts) and [p[0] for p in parts] == sorted(p[0] for p in parts)
    totals = [sum(costs[r] for r in p) for p in parts]
    assert max(totals) - min(totals) <= max(costs)  # LPT's bound; here much tighter
    assert max(totals) <= 60  # 228 tokens over 4 parts: 57 on average
    assert seqlen.balanced_parts(costs, 4) == parts
    alone = list(range(len(costs)))  # every row its own prompt, of no tokens: the costs are the rows'
    no_prompt = [0] * len(costs)
    assert seqlen.token_budget_rows(alone, no_prompt, costs, 60) == parts  # ceil(228 / 60) = 4 parts
    assert seqlen.token_budget_rows(alone, no_prompt, costs, 1) == [[r] for r in alone]  # never an empty part
    with pytest.raises(ValueError, match="non-empty"):
        seqlen.balanced_parts(costs, 13)


def test_a_prompts_responses_stay_together_within_the_budget():
    group, prompt, response = [0, 0, 0, 1, 1, 1], [10] * 6, [5, 5, 5, 30, 30, 30]
    units = seqlen.prompt_units(group, prompt, response, 50)
    assert units == [([0, 1, 2], 25), ([3], 40), ([4], 40), ([5], 40)]  # the prompt counted once per unit
    assert seqlen.token_budget_rows(group, prompt, response, 50) == [[0, 1, 2, 3], [4], [5]]  # 145 tokens: 3 parts


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_token_budget_gradient_equals_fixed_size_gradient(kind):
    model = sharp_model(kind)
    batch = policy_batch()
    fixed = update_grads(model, batch, None, 4)
    sizes = [len(r) for r in actor.micro_batch_rows(batch, 4, 20)]
    assert len(sizes) > 3 and len(set(sizes)) > 1  # more parts than the fixed path's, of varying rows
    budget = update_grads(model, batch, 20, 4)
    for a, b in zip(fixed, budget, strict=True):
        # fp32 reassociation between differently grouped micro-batches (same bound as test_packing)
        torch.testing.assert_close(b, a, atol=4e-5 * float(a.abs().max()), rtol=0)


def _two_rank_worker(info, expected_path: str) -> None:
    from npu_rl.config import FSDPConfig
    from npu_rl.distributed import shard_model

    expected = torch.load(expected_path)
    model = shard_model(sharp_model("qwen2"), FSDPConfig(), CPU, info, trainable=True)
    assert build_plan(model, CPU).forward == "packed"  # the packed pass runs through FSDP2's hooks
    batch = policy_batch()
    half = len(PROMPTS) // 2 * N  # rank 0: the first two prompts' rows, rank 1: the last two
    mine = batch.slice(info.rank * half, (info.rank + 1) * half)
    need = []
    for part in (batch.slice(0, half), batch.slice(half, 2 * half)):
        prompt, response = part.attention_mask[:, :-12].sum(-1).tolist(), part.response_mask.sum(-1).long().tolist()
        need.append(-(-sum(c for _, c in seqlen.prompt_units(part.group.tolist(), prompt, response, 20)) // 20))
    assert need[0] != need[1]  # the ranks want different numbers of micro-batches: the count is agreed
    grads = update_grads(model, mine, 20, 4, world_size=2)
    for a, b in zip(expected, grads, strict=True):
        torch.testing.assert_close(b, a, atol=4e-5 * float(a.abs().max()), rtol=0)
    # Gradient checkpointing of the sharded layers (recomputed under FSDP2's backward gather; the
    # learning rate is 0, so the weights are the same): the same gradients, bit for bit as measured.
    recomputed = update_grads(model, mine, 20, 4, world_size=2, checkpoint=True)
    for a, b in zip(grads, recomputed, strict=True):
        assert torch.equal(a, b)
    # ... and the chunked head (actor.head_chunk_tokens) reading the root unit's tied head: bound as test_packing
    chunked = update_grads(model, mine, 20, 4, world_size=2, checkpoint=True, head_chunk=5)
    for a, b in zip(grads, chunked, strict=True):
        torch.testing.assert_close(b, a, atol=4e-6 * float(a.abs().max()), rtol=0)


@pytest.mark.slow  # two gloo processes (~9 s); the one-process budget tests stay quick
@pytest.mark.dist
def test_token_budget_on_two_ranks_equals_one_process_fixed_size(tmp_path):
    expected = update_grads(sharp_model("qwen2"), policy_batch(), None, 4)
    torch.save(expected, tmp_path / "expected.pt")
    run_workers(_two_rank_worker, 2, str(tmp_path / "expected.pt"))


def test_multi_tensor_adamw_steps_like_the_per_parameter_loop():
    from npu_rl.config import OptimConfig

    models = [sharp_model("qwen2") for _ in range(2)]
    batch = policy_batch()
    opts = [optim.build_optimizer(models[0], OptimConfig(lr=1e-3))]
    opts.append(torch.optim.AdamW(models[1].parameters(), lr=1e-3, weight_decay=0.01, foreach=False))
    assert opts[0].defaults["foreach"]
    for model, opt in zip(models, opts, strict=True):
        for _ in range(2):
            opt.zero_grad()
            logprobs = actor.forward_logprobs(model, batch, 1.0, build_plan(model, CPU)).logprobs
            (logprobs * batch.advantages).sum().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
