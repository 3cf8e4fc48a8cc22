"""The critic's values and training passes (npu_rl.critic) take the actor's machinery: the packed,
padding-free pass gives the padded pass's values and gradients (Qwen2, Qwen3, Llama value models),
with and without gradient checkpointing, and token-budget micro-batches (`critic.use_dynamic_bsz`)
give the fixed-size update's gradient.
"""

from __future__ import annotations

import pytest
import torch
from _arch_models import rollout_batch, sharp_model

from npu_rl import actor, critic
from npu_rl.compute import REFERENCE_PLAN, build_plan
from npu_rl.config import ConfigError, CriticConfig, load_config
from npu_rl.device import Accelerator
from npu_rl.metrics import StepStats

CPU = Accelerator("cpu")
PROMPTS = [[5, 17, 42, 99, 7, 301], [12, 250], [64, 65, 66, 67], [8, 9, 10]]
N = 3
LENGTHS = [11, 12, 5, 11, 2, 9, 3, 1, 2, 1, 12, 1]  # a long tail, responses up to the width


def value_model(kind: str) -> critic.ValueModel:
    """A value model whose head is not zero (as a trained critic's), so values and gradients are."""
    model = critic.ValueModel(sharp_model(kind))
    torch.manual_seed(1)
    torch.nn.init.normal_(model.value_head.weight, std=0.5)
    torch.nn.init.normal_(model.value_head.bias, std=0.5)
    return model


def value_batch(tool_answer: bool = False) -> actor.PolicyBatch:
    gen = torch.Generator().manual_seed(3)
    width = max(LENGTHS)
    responses = torch.randint(3, 400, (len(PROMPTS) * N, width), generator=gen)
    lengths = torch.tensor(LENGTHS)
    responses[torch.arange(width)[None, :] >= lengths[:, None]] = 0
    batch = actor.build_policy_batch(rollout_batch(PROMPTS, responses, lengths, N), 0)
    if tool_answer:  # a tool's answer inside row 1's response: attended, outside the loss
        batch.response_mask[1, 4:7] = 0
    batch.values = torch.randn(batch.response_mask.shape, generator=gen) * batch.response_mask
    batch.returns = torch.randn(batch.response_mask.shape, generator=gen) * batch.response_mask
    return batch


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "llama"])
def model(request):
    return value_model(request.param)


def values_and_grads(model, batch, plan):
    model.zero_grad(set_to_none=True)
    values = critic._response_values(model, batch, plan)
    (values * torch.linspace(-1, 1, values.shape[1])).sum().backward()
    return values.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_packed_values_equal_padded_values(model, checkpointing):
    plan = build_plan(model, CPU, "auto", "plain", gradient_checkpointing=checkpointing)
    assert plan.forward == "packed" and plan.checkpoint == checkpointing
    batch = value_batch(tool_answer=True)
    mask = batch.response_mask.bool()
    padded = values_and_grads(model, batch, REFERENCE_PLAN)
    packed = values_and_grads(model, batch, plan)
    assert (packed[0][~mask] == 0).all() and padded[0][mask].abs().min() > 0
    # the actor's packed-pass bounds (tests/test_packing.py), measured there on both kernel sets
    torch.testing.assert_close(packed[0][mask], padded[0][mask], atol=1.5e-5, rtol=0)
    assert packed[1].keys() == padded[1].keys() and "value_head.weight" in packed[1]
    for name, grad in padded[1].items():
        torch.testing.assert_close(packed[1][name], grad, atol=4e-5 * float(grad.abs().max()), rtol=0, msg=name)
    whole = critic.compute_values(model, batch, 100, torch.device("cpu"), REFERENCE_PLAN)
    budget = critic.compute_values(model, batch, 4, torch.device("cpu"), plan, max_tokens=20)
    torch.testing.assert_close(budget[mask], whole[mask], atol=1.5e-5, rtol=0)


class GradRecorder(torch.optim.SGD):
    """SGD at lr 0 that keeps the gradients it was stepped with."""

    def step(self, closure=None):
        self.grads = [p.grad.clone() for group in self.param_groups for p in group["params"]]
        return super().step(closure)


def update_grads(model, batch, budget: int | None) -> list[torch.Tensor]:
    cfg = CriticConfig(ppo_micro_batch_size_per_device=4, grad_clip=1e9)
    opt = GradRecorder(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    plan = build_plan(model, CPU, "auto", "plain")
    groups = len(PROMPTS)
    critic.update_critic(model, opt, sched, batch, cfg, 1, groups, 16, StepStats(), torch.device("cpu"), plan, budget)
    return opt.grads


def test_token_budget_critic_update_equals_fixed_size_update(monkeypatch):
    model, batch = value_model("qwen2"), value_batch()
    sizes = [len(rows) for rows in actor.micro_batch_rows(batch, 4, 20)]
    assert len(sizes) > 3 and len(set(sizes)) > 1  # more parts than the fixed path's 3, of varying rows
    passes = []
    forward = critic._response_values
    monkeypatch.setattr(
        critic, "_response_values", lambda m, micro, plan: passes.append(len(micro)) or forward(m, micro, plan)
    )
    fixed = update_grads(model, batch, None)
    assert passes == [4, 4, 4]
    passes.clear()
    budget = update_grads(model, batch, 20)
    assert sorted(passes) == sorted(sizes)  # the update ran the token-budget micro-batches
    for a, b in zip(fixed, budget, strict=True):
        torch.testing.assert_close(b, a, atol=4e-5 * float(a.abs().max()), rtol=0)  # bound as test_token_budget


def test_critic_token_budgets_follow_the_actor_and_must_hold_the_longest_row():
    base = ["model.path=m", "data.train_files=[a]", "data.max_prompt_length=64", "rollout.max_new_tokens=64"]
    grpo = load_config(None, [*base, "actor.use_dynamic_bsz=true"])
    assert not any(key.startswith("critic.") for key in grpo.token_budgets())  # no critic, no budget
    ppo = [*base, "algorithm.adv_estimator=gae"]
    follows = load_config(None, [*ppo, "actor.use_dynamic_bsz=true", "critic.ppo_max_token_len_per_device=512"])
    budgets = follows.token_budgets()
    assert budgets["critic.ppo_max_token_len_per_device"] == budgets["critic.forward_max_token_len_per_device"] == 512
    off = load_config(None, [*ppo, "actor.use_dynamic_bsz=true", "critic.use_dynamic_bsz=false"])
    assert off.token_budgets()["critic.ppo_max_token_len_per_device"] is None
    assert load_config(None, ppo).token_budgets()["critic.forward_max_token_len_per_device"] is None  # rows
    with pytest.raises(ConfigError, match=r"critic\.forward_max_token_len_per_device \(100\) must hold the longest"):
        load_config(None, [*ppo, "critic.use_dynamic_bsz=true", "critic.forward_max_token_len_per_device=100"])
