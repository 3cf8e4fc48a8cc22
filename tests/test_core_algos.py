"""GRPO math checked against values worked out by hand.

Comparisons use assert_close's default fp32 tolerances (atol 1e-5, rtol 1.3e-6): the measured error is at
most 6e-8 on AVX-512 and on AVX2-emulated kernels (bench/tolerances.py), >= 180x below.
"""

import math

import pytest
import torch

from npu_rl import core_algos


def test_grpo_advantage_matches_hand_computation():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    groups = torch.tensor([7, 7, 7, 7, 3, 3])
    adv = core_algos.grpo_advantages(scores, groups, eps=0.0)
    # group 7: mean 0.5, unbiased std sqrt(1/3); group 3: mean 0.75, std sqrt(0.125)
    s7, s3 = math.sqrt(1 / 3), math.sqrt(0.125)
    expected = torch.tensor([0.5 / s7, -0.5 / s7, -0.5 / s7, 0.5 / s7, 0.25 / s3, -0.25 / s3])
    torch.testing.assert_close(adv, expected)


def test_dr_grpo_only_subtracts_the_mean():
    adv = core_algos.grpo_advantages(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0, 0, 0]), norm_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0]))


def test_equal_rewards_give_zero_advantage_and_no_nan():
    adv = core_algos.grpo_advantages(torch.ones(4), torch.zeros(4, dtype=torch.long))
    assert torch.equal(adv, torch.zeros(4))


def test_singleton_group_uses_mean_zero_std_one():
    adv = core_algos.grpo_advantages(torch.tensor([0.7]), torch.tensor([5]), eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([0.7]))


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    torch.testing.assert_close(core_algos.kl_estimate(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(core_algos.kl_estimate(logp, ref, "k2"), torch.tensor([0.125, 0.5]))
    # k3: exp(ref - logp) - (ref - logp) - 1
    expected = torch.tensor([math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1])
    torch.testing.assert_close(core_algos.kl_estimate(logp, ref, "low_var_kl"), expected)
    torch.testing.assert_close(core_algos.kl_estimate(logp, ref, "k3"), expected)


def test_low_var_kl_is_clamped():
    big = core_algos.kl_estimate(torch.tensor([-30.0]), torch.tensor([0.0]), "low_var_kl")
    assert big.item() == 10.0


def test_unknown_kl_estimator_is_rejected():
    with pytest.raises(ValueError, match="k1, kl, k2, mse, k3"):
        core_algos.kl_estimate(torch.zeros(1), torch.zeros(1), "k9")


LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", (1 + 2 + 3 + 4) / 4),
        ("seq-mean-token-sum", (6 + 4) / 2),
        ("seq-mean-token-mean", (2 + 4) / 2),
        ("seq-mean-token-sum-norm", (6 / 3 + 4 / 3) / 2),
    ],
)
def test_loss_aggregation_modes(mode, expected):
    assert core_algos.aggregate_loss(LOSS, MASK, mode).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batch_losses_sum_to_the_full_batch_loss(mode):
    full = core_algos.aggregate_loss(LOSS, MASK, mode, horizon=3)
    parts = sum(
        core_algos.aggregate_loss(LOSS[i : i + 1], MASK[i : i + 1], mode, MASK.sum(), 2, horizon=3) for i in range(2)
    )
    torch.testing.assert_close(parts, full)


def test_ppo_loss_clipping_by_hand():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.5, 5.0
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5, 5.0]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = core_algos.ppo_policy_loss(new, old, adv, mask, 0.2, 0.28, clip_ratio_c=3.0)
    # A>0, r=1.5: max(-1.5, -1.28) = -1.28 (clipped high); A>0, r=0.5: max(-0.5, -0.8) = -0.5
    # A<0, r=1.5: max(1.5, 1.28) = 1.5; A<0, r=5: max(5, 1.28) = 5 -> dual clip min(3, 5) = 3
    torch.testing.assert_close(loss, torch.tensor([[-1.28, -0.5, 1.5, 3.0]]))
    assert stats["pg_clipfrac"].item() == pytest.approx(0.25)
    assert stats["pg_clipfrac_lower"].item() == pytest.approx(0.25)


def test_ppo_loss_on_policy_is_minus_advantage_with_gradient():
    logp = torch.tensor([[-0.3, -1.2]], requires_grad=True)
    adv = torch.tensor([[2.0, -1.0]])
    loss, stats = core_algos.ppo_policy_loss(logp, logp.detach(), adv, torch.ones(1, 2))
    torch.testing.assert_close(loss, -adv)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, -adv)  # d(-A * ratio)/dlogp = -A at ratio 1
    assert stats["pg_clipfrac"].item() == 0.0 and stats["ppo_kl"].item() == 0.0


def test_entropy_and_logprobs_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, -10.0, -10.0, -10.0]])
    ent = core_algos.entropy_from_logits(logits)
    assert ent[0].item() == pytest.approx(math.log(4))
    assert ent[1].item() == pytest.approx(0.0, abs=1e-6)
    lp = core_algos.logprobs_from_logits(logits, torch.tensor([2, 0]))
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1)[[0, 1], [2, 0]])


def test_masked_mean_of_empty_mask_is_zero():
    assert core_algos.masked_mean(torch.ones(3), torch.zeros(3)).item() == 0.0


# -- registries: one signature per family, same numbers as the former if-chains, helpful unknown names ----------


def _reference_kl(logprob, ref, kind):
    """The estimators as written before the registry (the oracle for the registered functions)."""
    log_ratio = logprob.float() - ref.float()
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    neg = (-log_ratio).clamp(-20.0, 20.0)
    return (neg.exp() - neg - 1).clamp(-10.0, 10.0)


def _reference_agg(loss, mask, mode, num_tokens=None, num_seqs=None, horizon=None):
    """Loss aggregation as written before the registry, with verl's count of sequences (non-empty rows)."""
    n_seq = num_seqs if num_seqs is not None else int((mask.sum(-1) > 0).sum())
    if mode == "token-mean":
        denom = num_tokens if num_tokens is not None else mask.sum()
        return (loss * mask).sum() / torch.as_tensor(denom, dtype=loss.dtype).clamp(min=1)
    seq = (loss * mask).sum(-1)
    if mode == "seq-mean-token-mean":
        seq = seq / mask.sum(-1).clamp(min=1)
    elif mode == "seq-mean-token-sum-norm":
        seq = seq / float(horizon or loss.shape[-1])
    return seq.sum() / torch.as_tensor(n_seq, dtype=loss.dtype).clamp(min=1)


def test_kl_registry_gives_the_former_numbers():
    gen = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(6, 9, generator=gen) * 30, -torch.rand(6, 9, generator=gen) * 30
    assert core_algos.KL_ESTIMATORS.names()[:6] == ["k1", "kl", "k2", "mse", "k3", "low_var_kl"]
    assert core_algos.KL_ESTIMATORS["kl"] is core_algos.KL_ESTIMATORS["k1"]  # verl's names for k1 and k2
    assert core_algos.KL_ESTIMATORS["mse"] is core_algos.KL_ESTIMATORS["k2"]
    for kind in ["k1", "k2", "k3", "low_var_kl"]:
        assert torch.equal(core_algos.kl_estimate(logp, ref, kind), _reference_kl(logp, ref, kind))
        assert torch.equal(core_algos.KL_ESTIMATORS[kind](logp, ref), _reference_kl(logp, ref, kind))


@pytest.mark.parametrize("totals", [(None, None, None), (40.0, 9, 16), (torch.tensor(17.0), torch.tensor(3.0), None)])
def test_loss_aggregation_registry_gives_the_former_numbers(totals):
    gen = torch.Generator().manual_seed(1)
    loss = torch.randn(6, 9, generator=gen)
    mask = (torch.arange(9)[None, :] < torch.tensor([9, 4, 1, 0, 7, 2])[:, None]).float()  # one empty row
    for mode in ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]:
        got = core_algos.aggregate_loss(loss, mask, mode, *totals)
        assert torch.equal(got, _reference_agg(loss, mask, mode, *totals)), mode


def test_vanilla_policy_loss_is_dual_clip_ppo_with_the_actor_clip_ratios():
    from npu_rl.config import ActorConfig

    gen = torch.Generator().manual_seed(2)
    new, old = -torch.rand(4, 5, generator=gen), -torch.rand(4, 5, generator=gen)
    adv, mask = torch.randn(4, 5, generator=gen), torch.ones(4, 5)
    cfg = ActorConfig(clip_ratio_low=0.1, clip_ratio_high=0.28, clip_ratio_c=2.5)
    assert ActorConfig().policy_loss == "vanilla"
    loss, stats = core_algos.POLICY_LOSSES["vanilla"](new, old, adv, mask, cfg)
    ref_loss, ref_stats = core_algos.ppo_policy_loss(new, old, adv, mask, 0.1, 0.28, 2.5)
    assert torch.equal(loss, ref_loss) and stats.keys() == ref_stats.keys()
    assert all(torch.equal(stats[k], ref_stats[k]) for k in stats)


def test_every_policy_loss_takes_the_one_signature():
    from npu_rl.config import ActorConfig

    logp = torch.zeros(2, 3)
    for name in core_algos.POLICY_LOSSES:
        loss, stats = core_algos.POLICY_LOSSES[name](logp, logp, torch.ones(2, 3), torch.ones(2, 3), ActorConfig())
        assert loss.shape == (2, 3) and all(v.dim() == 0 for v in stats.values()), name


def test_unknown_names_list_the_registered_ones():
    from npu_rl.registry import UnknownName

    with pytest.raises(
        UnknownName, match=r"unknown loss aggregation mode 'token-avg'.*; registered: token-mean, token-"
    ):
        core_algos.aggregate_loss(LOSS, MASK, "token-avg")
    with pytest.raises(UnknownName, match=r"actor\.policy_loss: unknown policy loss 'vanila' \(did you mean 'vanilla'"):
        core_algos.POLICY_LOSSES.get("vanila", key="actor.policy_loss")
    with pytest.raises(KeyError, match=r"estimator 'ppo' \(use 'gae'.*\); registered: grpo, grpo_vectorized, rloo"):
        core_algos.ADV_ESTIMATORS["ppo"]  # not the look-alike 'opo'
    with pytest.raises(KeyError, match=r"unknown advantage estimator 'xyz'; registered: grpo, grpo_vectorized, rloo"):
        core_algos.ADV_ESTIMATORS["xyz"]


def test_group_relative_estimators_are_marked():
    relative = {name for name in core_algos.ADV_ESTIMATORS if core_algos.ADV_ESTIMATORS[name].group_relative}
    assert relative == {
        "grpo", "grpo_vectorized", "rloo", "rloo_vectorized", "reinforce_plus_plus_baseline", "grpo_passk", "opo",
        "gpg", "grpo_batch_std", "gdpo", "optimal_token_baseline", "tir_optimal_token_baseline",
    }  # fmt: skip
    greedy = {name for name in core_algos.ADV_ESTIMATORS if core_algos.ADV_ESTIMATORS[name].greedy_baseline}
    assert greedy == {"remax"}
    variance = {name for name in core_algos.ADV_ESTIMATORS if core_algos.ADV_ESTIMATORS[name].needs_sum_pi_squared}
    assert variance == {"optimal_token_baseline", "tir_optimal_token_baseline"}
