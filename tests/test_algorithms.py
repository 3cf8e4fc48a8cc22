"""Estimators, GSPO, KL variants, the KL controller and DAPO's pieces against values computed by hand."""

import dataclasses
import math

import pytest
import torch

from npu_rl import core_algos
from npu_rl.algos.advantages import AdvantageInputs, masked_whiten, place_scores
from npu_rl.algos.policy_losses import gspo_loss
from npu_rl.config import ActorConfig


def _inputs(scores, group, lengths, width=3, **kw):
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()
    return AdvantageInputs(place_scores(torch.tensor(scores), mask), mask, torch.tensor(group), **kw)


def test_place_scores_puts_the_score_on_the_last_valid_token():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    got = place_scores(torch.tensor([2.0, 3.0, 4.0]), mask)
    assert got.tolist() == [[0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [4.0, 0.0, 0.0]]
    # a multi-turn response: tool answer at columns 1-2, the model's final turn at 3-4
    holed = place_scores(torch.tensor([5.0]), torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]]))
    assert holed.tolist() == [[0.0, 0.0, 0.0, 0.0, 5.0, 0.0]]


def test_rloo_leave_one_out_and_group_of_one_keeps_raw_reward():
    # group 0: rewards 1, 0, 0 -> 1 - 0 = 1; 0 - 0.5 = -0.5 (twice). group 1 (alone): 0.7 stays 0.7.
    adv, ret = core_algos.ADV_ESTIMATORS["rloo"](_inputs([1.0, 0.0, 0.0, 0.7], [0, 0, 0, 1], [2, 3, 1, 2]))
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.0, -0.5, -0.5, 0.7]))
    assert adv[0, 2] == 0 and adv[2, 1] == 0  # zero on padding
    assert torch.equal(adv, ret)


def test_vectorized_variants_differ_from_grpo_and_rloo_only_where_verl_does():
    # rewards 0 and 1e-4: variance 5e-9, floored at 1e-6 (std 1e-3) by grpo_vectorized only
    near = _inputs([0.0, 1e-4, 1.0], [0, 0, 1], [1, 1, 1], width=1)
    plain = core_algos.ADV_ESTIMATORS["grpo"](near)[0][:, 0]
    floored = core_algos.ADV_ESTIMATORS["grpo_vectorized"](near)[0][:, 0]
    own_std = 5e-5 / (1e-4 / math.sqrt(2) + 1e-6)  # about 0.697
    assert plain[:2].tolist() == pytest.approx([-own_std, own_std], rel=1e-3)
    assert floored[:2].tolist() == pytest.approx([-5e-5 / (1e-3 + 1e-6), 5e-5 / (1e-3 + 1e-6)], rel=1e-3)
    assert plain[2] == floored[2] == pytest.approx(1.0 / (1.0 + 1e-6))  # a group of one: mean 0, std 1 in both
    # a group of one: rloo keeps the raw reward, rloo_vectorized gives 0
    alone = _inputs([1.0, 0.0, 0.7], [0, 0, 1], [1, 1, 1], width=1)
    assert core_algos.ADV_ESTIMATORS["rloo"](alone)[0][:, 0].tolist() == pytest.approx([1.0, -1.0, 0.7])
    assert core_algos.ADV_ESTIMATORS["rloo_vectorized"](alone)[0][:, 0].tolist() == pytest.approx([1.0, -1.0, 0.0])


def test_rloo_all_equal_group_is_zero():
    adv, _ = core_algos.ADV_ESTIMATORS["rloo"](_inputs([1.0, 1.0], [3, 3], [1, 1]))
    assert torch.equal(adv, torch.zeros(2, 3))


def test_grpo_registered_estimator_spreads_the_sequence_advantage():
    adv, _ = core_algos.ADV_ESTIMATORS["grpo"](_inputs([1.0, 0.0], [0, 0], [2, 1], eps=0.0))
    s = math.sqrt(0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.5 / s, 0.5 / s, 0.0], [-0.5 / s, 0.0, 0.0]]))


def test_masked_whiten_unbiased_over_valid_tokens():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # mean 2, unbiased var ((1)^2 + (1)^2) / 1 = 2
    torch.testing.assert_close(masked_whiten(values, mask)[0, :2], torch.tensor([-1.0, 1.0]) / math.sqrt(2 + 1e-8))
    with pytest.raises(ValueError, match="at least 2 valid response tokens"):
        masked_whiten(values, torch.tensor([[1.0, 0.0, 0.0]]))


def test_whitening_statistics_come_from_all_ranks():
    """Rows split over two 'ranks' whiten like the whole batch when all_sum adds the other rank's share."""
    values, mask = torch.tensor([[1.0, 2.0], [4.0, 7.0]]), torch.ones(2, 2)

    def all_sum_rank0(t: torch.Tensor) -> torch.Tensor:  # rank 1 holds row 1
        if t.numel() == 2:  # [sum, count]
            return t + torch.stack([values[1].sum(), torch.tensor(2.0)])
        return t + ((values[1] - values.mean()) ** 2).sum()  # squared deviations from the global mean

    torch.testing.assert_close(masked_whiten(values[:1], mask[:1], all_sum_rank0), masked_whiten(values, mask)[:1])


def test_reinforce_plus_plus_baseline_centres_per_group_then_whitens():
    # group 0 rewards 1, 0 (mean 0.5) -> 0.5 on 2 tokens, -0.5 on 1 token; lone row (group 1) keeps 2.0 on 1 token
    adv, _ = core_algos.ADV_ESTIMATORS["reinforce_plus_plus_baseline"](_inputs([1.0, 0.0, 2.0], [0, 0, 1], [2, 1, 1]))
    tokens = torch.tensor([0.5, 0.5, -0.5, 2.0])
    mean, var = tokens.mean(), tokens.var()  # torch.var is unbiased
    w = (tokens - mean) / torch.sqrt(var + 1e-8)
    torch.testing.assert_close(adv[0, :2], w[:2])
    torch.testing.assert_close(adv[1, 0], w[2])
    torch.testing.assert_close(adv[2, 0], w[3])
    assert adv[1, 1] == 0 and adv[2, 2] == 0


def test_reinforce_plus_plus_discounts_and_carries_through_masked_tokens():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])  # row 0: an observation token at t=1
    inputs = AdvantageInputs(rewards, mask, torch.tensor([0, 1]), gamma=0.5)
    adv, ret = core_algos.ADV_ESTIMATORS["reinforce_plus_plus"](inputs)
    # row 0: G3 = 1, G2 = 0.5, t=1 skipped (carries 0.5, no discount), G0 = 0.25; row 1: G1 = 2, G0 = 1
    torch.testing.assert_close(ret, torch.tensor([[0.25, 0.0, 0.5, 1.0], [1.0, 2.0, 0.0, 0.0]]))
    valid = torch.tensor([0.25, 0.5, 1.0, 1.0, 2.0])
    w = (valid - valid.mean()) / torch.sqrt(valid.var() + 1e-8)
    torch.testing.assert_close(adv[mask.bool()], w)
    assert adv[0, 1] == 0 and adv[1, 3] == 0


def test_gae_by_hand_with_a_skipped_token():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 9.0, 0.25], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    inputs = AdvantageInputs(rewards, mask, torch.tensor([0, 1]), values=values, gamma=0.9, lam=0.5)
    adv, ret = core_algos.ADV_ESTIMATORS["gae"](inputs)
    # row 0: t=2: delta = 1 - 0.25 = 0.75, A2 = 0.75. t=1 masked: skipped (V=9 unused), carries V=0.25, A=0.75.
    #        t=0: delta = 0 + 0.9*0.25 - 0.5 = -0.275; A0 = -0.275 + 0.45*0.75 = 0.0625
    # row 1: t=2 masked (next V stays 0, A stays 0). t=1: delta = 1 - 0.5 = 0.5, A1 = 0.5.
    #        t=0: delta = 0.9*0.5 - 0.5 = -0.05; A0 = -0.05 + 0.45*0.5 = 0.175
    raw = torch.tensor([0.0625, 0.75, 0.175, 0.5])
    torch.testing.assert_close(ret[mask.bool()], raw + torch.tensor([0.5, 0.25, 0.5, 0.5]))
    w = (raw - raw.mean()) / torch.sqrt(raw.var() + 1e-8)
    torch.testing.assert_close(adv[mask.bool()], w)
    with pytest.raises(ValueError, match="critic's values"):
        core_algos.ADV_ESTIMATORS["gae"](AdvantageInputs(rewards, mask, torch.tensor([0, 1])))


def test_gspo_sequence_ratio_clip_and_token_gradient():
    logprob = torch.tensor([[-1.0, -2.0, -5.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -2.2, 0.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    loss, stats = gspo_loss(logprob, old, adv, mask, 0.1, 0.1)
    # row 0: mean log-ratio over valid tokens = 0.2 -> s = e^0.2 = 1.2214 > 1.1: clipped to 1.1, loss -1.1
    # row 1: ratio 1 -> loss 2
    torch.testing.assert_close(loss[0, :2], torch.tensor([-1.1, -1.1]))
    torch.testing.assert_close(loss[1], torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(stats["pg_clipfrac"], torch.tensor(2 / 5))
    torch.testing.assert_close(stats["ppo_kl"], torch.tensor(-0.4 / 5))
    # row 1 unclipped: d loss / d logprob_t = -A * s = 2 per token (gradient through the token's own logprob)
    (loss * mask).sum().backward()
    torch.testing.assert_close(logprob.grad[1], torch.tensor([2.0, 2.0, 2.0]))
    assert torch.equal(logprob.grad[0], torch.zeros(3))  # clipped row: no gradient


def test_gspo_clamps_the_log_ratio_at_10_and_is_registered():
    logprob, old = torch.zeros(1, 2), torch.full((1, 2), -30.0)
    loss, _ = gspo_loss(logprob, old, -torch.ones(1, 2), torch.ones(1, 2), 0.2, 0.2)
    torch.testing.assert_close(loss, torch.full((1, 2), math.exp(10.0)))
    cfg = ActorConfig(clip_ratio_low=0.1, clip_ratio_high=0.1)
    a = core_algos.POLICY_LOSSES["gspo"](logprob, old, -torch.ones(1, 2), torch.ones(1, 2), cfg)[0]
    assert torch.equal(a, gspo_loss(logprob, old, -torch.ones(1, 2), torch.ones(1, 2), 0.1, 0.1)[0])


def test_kl_abs_and_straight_through_variants():
    logprob = torch.tensor([-1.0, -3.0], requires_grad=True)
    ref = torch.tensor([-2.0, -2.0])
    torch.testing.assert_close(core_algos.KL_ESTIMATORS["abs"](logprob, ref), torch.tensor([1.0, 1.0]))
    for name, base in (("k1+", "k1"), ("k3+", "k3"), ("low_var_kl+", "k3")):
        value = core_algos.KL_ESTIMATORS[name](logprob, ref)
        torch.testing.assert_close(value, core_algos.KL_ESTIMATORS[base](logprob, ref))
        (grad,) = torch.autograd.grad(value.sum(), logprob)
        torch.testing.assert_close(grad, torch.tensor([1.0, -1.0]))  # d/dx 0.5 (x - ref)^2 = x - ref


def test_adaptive_kl_controller_steps_and_clips():
    ctrl = core_algos.AdaptiveKLController(0.1, target_kl=0.5, horizon=100)
    assert ctrl.update(0.6, 10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error 0.2
    ctrl = core_algos.AdaptiveKLController(0.1, target_kl=0.5, horizon=100)
    assert ctrl.update(5.0, 10) == pytest.approx(0.1 * 1.02)  # error 9 clipped to 0.2
    assert ctrl.update(0.0, 50) == pytest.approx(0.1 * 1.02 * 0.9)  # error -1 clipped to -0.2
    fixed = core_algos.AdaptiveKLController(0.1)
    assert fixed.update(5.0, 10) == 0.1
    with pytest.raises(ValueError, match="target_kl > 0"):
        core_algos.AdaptiveKLController(0.1, target_kl=0.0)


def test_token_sum_and_seq_mean_skip_fully_masked_rows():
    loss = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # the last row is fully masked
    assert core_algos.aggregate_loss(loss, mask, "token-sum").item() == 6.0
    assert core_algos.aggregate_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((3 + 3) / 2)
    assert core_algos.aggregate_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 3) / 2)
    assert core_algos.count_sequences(mask).item() == 2


def test_overlong_penalty_ramps_over_the_buffer():
    from npu_rl.algos.dapo import overlong_penalty

    # max 20, buffer 4: free up to 16 tokens, then -0.25 per token (factor 1), -1 at 20
    got = overlong_penalty(torch.tensor([3, 16, 17, 18, 20]), 20, 4, 1.0)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0]))
    torch.testing.assert_close(overlong_penalty(torch.tensor([20]), 20, 4, 0.5), torch.tensor([-0.5]))


def test_informative_groups_drop_all_equal_keep_singletons():
    from npu_rl.algos.dapo import informative_groups

    values = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.3])
    group = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    assert informative_groups(values, group, 5).tolist() == [False, True, False, True, False]  # group 4: no rows


def test_remax_subtracts_the_greedy_score_from_the_reward_to_go():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    # scores 1, 0, 0.5 on the last valid tokens, a KL penalty of 0.1 on every valid token
    rewards = place_scores(torch.tensor([1.0, 0.0, 0.5]), mask) - 0.1 * mask
    inputs = AdvantageInputs(rewards, mask, torch.tensor([0, 0, 1]), baselines=torch.tensor([0.5, 0.5, 1.0]))
    adv, ret = core_algos.ADV_ESTIMATORS["remax"](inputs)
    # returns: reward-to-go (row 3's tool answer at column 1 adds nothing and is zeroed); advantage: minus b
    torch.testing.assert_close(ret, torch.tensor([[0.7, 0.8, 0.9, 0.0], [-0.2, -0.1, 0.0, 0.0], [0.2, 0.0, 0.3, 0.4]]))
    torch.testing.assert_close(
        adv, torch.tensor([[0.2, 0.3, 0.4, 0.0], [-0.7, -0.6, 0.0, 0.0], [-0.8, 0.0, -0.7, -0.6]])
    )
    with pytest.raises(ValueError, match="greedy answers"):
        core_algos.ADV_ESTIMATORS["remax"](dataclasses.replace(inputs, baselines=None))
    assert core_algos.ADV_ESTIMATORS["remax"].greedy_baseline and not core_algos.ADV_ESTIMATORS["grpo"].greedy_baseline


def test_gdpo_normalizes_each_term_in_its_group_then_the_weighted_sum_over_the_batch():
    # group 0: correctness 1 / 0 and a length bonus 10 / 90 (weights 2 and 1); group 1: equal rows
    terms = torch.tensor([[1.0, 10.0], [0.0, 90.0], [1.0, 50.0], [1.0, 50.0]])
    inputs = _inputs([0.0] * 4, [0, 0, 1, 1], [2, 2, 2, 2], term_scores=terms, term_weights=torch.tensor([2.0, 1.0]))
    adv, _ = core_algos.ADV_ESTIMATORS["gdpo"](inputs)
    # each term: +-(half the gap) / (unbiased std of two = gap / sqrt 2, + 1e-4)
    correct, length = 0.5 / (1 / math.sqrt(2) + 1e-4), 40 / (80 / math.sqrt(2) + 1e-4)
    summed = 2 * correct - length  # row 0; row 1 is its negative; group 1 normalizes to 0
    batch_std = math.sqrt(2 * summed**2 / 3)  # mean 0, unbiased over the 4 rows
    expected = torch.tensor([1.0, -1.0, 0.0, 0.0]) * summed / (batch_std + 1e-4)
    torch.testing.assert_close(adv[:, 0], expected)
    assert (adv[:, 2] == 0).all()  # padding
    # one weighted sum normalized once (grpo) lets the wide length term decide; gdpo lets correctness win
    summed_once = core_algos.ADV_ESTIMATORS["grpo"](
        _inputs((terms @ torch.tensor([2.0, 1.0])).tolist(), [0, 0, 1, 1], [2] * 4)
    )
    assert summed_once[0][0, 0] < 0 < adv[0, 0]
    with pytest.raises(ValueError, match="each reward term"):
        core_algos.ADV_ESTIMATORS["gdpo"](_inputs([0.0], [0], [1]))


def test_gdpo_leaves_terms_that_did_not_apply_out_as_trl_does():
    nan = float("nan")
    # group 0: a correctness term on all three rows, a second term on two of them; group 1: row 3 has no
    # applicable term (unscorable), rows 4 and 5 only the first
    terms = torch.tensor([[1.0, nan], [0.0, 2.0], [1.0, 4.0], [nan, nan], [1.0, nan], [0.0, nan]])
    inputs = _inputs([0.0] * 6, [0, 0, 0, 1, 1, 1], [1] * 6, term_scores=terms, term_weights=torch.tensor([1.0, 1.0]))
    adv = core_algos.ADV_ESTIMATORS["gdpo"](inputs)[0][:, 0]
    s3 = math.sqrt(1 / 3) + 1e-4  # term 0 in group 0: mean 2/3, unbiased std sqrt(1/3)
    s2 = math.sqrt(2) + 1e-4  # term 1 in group 0: rows 1 and 2 only, mean 3, std sqrt(2)
    s1 = math.sqrt(0.5) + 1e-4  # term 0 of rows 4 and 5: mean 0.5, std sqrt(1/2)
    summed = [(1 / 3) / s3, (-2 / 3) / s3 - 1 / s2, (1 / 3) / s3 + 1 / s2, 0.5 / s1, -0.5 / s1]
    mean = sum(summed) / 5
    std = math.sqrt(sum((x - mean) ** 2 for x in summed) / 4)
    expected = [(x - mean) / (std + 1e-4) for x in summed]
    assert adv[[0, 1, 2, 4, 5]].tolist() == pytest.approx(expected, rel=1e-5)
    assert adv[3] == 0  # unscorable: no advantage, and not in the batch statistics


def test_shaping_terms_join_the_scores_terms_and_components():
    from npu_rl.reward_manager import RewardBatch
    from npu_rl.step_rollouts import add_term

    graded = RewardBatch([1.0, 0.0], [True, False], terms=[[1.0], [0.0]], term_weights=[0.5])
    add_term(graded, "overlong_reward", [-0.25, 0.0])
    assert graded.scores == [0.75, 0.0] and graded.components["overlong_reward"] == [-0.25, 0.0]
    assert graded.terms == [[1.0, -0.25], [0.0, 0.0]] and graded.term_weights == [0.5, 1.0]


def test_take_groups_renumbers_pads_and_stops_at_the_limit():
    from npu_rl.algos.dapo import take_groups
    from npu_rl.data import PromptRecord
    from npu_rl.reward_manager import RewardBatch
    from npu_rl.rollout.batch import RolloutBatch

    def rec(i):
        return PromptRecord(i, [1, 2], "p", [], "s", "1", "math", {}, "f.parquet", i)

    def batch(width, groups, first):
        n = len(groups)
        return RolloutBatch(
            torch.full((n, width), 7), torch.full((n, width), -0.5), torch.full((n,), width), ["stop"] * n,
            torch.tensor(groups), torch.arange(n), records=[rec(first), rec(first + 1)],
        )  # fmt: skip

    a = batch(2, [0, 0, 1, 1], 10)
    b = batch(3, [0, 1, 1], 20)
    ga = RewardBatch([1.0, 0.0, 1.0, 1.0], [True, False, True, True], {"x": [1.0] * 4}, timeouts=1)
    gb = RewardBatch([0.0, 1.0, 0.0], [False, True, False], {"x": [0.0] * 3}, errors=2)
    merged, graded = take_groups([(a, ga, torch.tensor([True, False])), (b, gb, torch.tensor([True, True]))], 2)
    assert [r.index for r in merged.records] == [10, 20]
    assert merged.group.tolist() == [0, 0, 1] and merged.response_ids.shape == (3, 3)
    assert merged.response_ids[0].tolist() == [7, 7, 0] and merged.lengths.tolist() == [2, 2, 3]
    assert graded.scores == [1.0, 0.0, 0.0] and graded.acc == [True, False, False]
    assert graded.baselines is None
    ga.baselines, gb.baselines = [0.1, 0.1, 0.2, 0.2], [0.3, 0.4, 0.4]  # remax: each row's greedy score
    ga.terms, gb.terms = [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 2.0]], [[0.0, 3.0], [1.0, 4.0], [0.0, 5.0]]
    ga.term_weights = gb.term_weights = [1.0, 0.5]
    _, kept = take_groups([(a, ga, torch.tensor([False, True])), (b, gb, torch.tensor([True, True]))], 2)
    assert kept.baselines == [0.2, 0.2, 0.3]
    assert kept.terms == [[1.0, 1.0], [1.0, 2.0], [0.0, 3.0]] and kept.term_weights == [1.0, 0.5]
    assert (graded.timeouts, graded.errors, len(graded.components["x"])) == (1, 2, 7)
    # multi-turn batches: the policy-token mask and per-row metrics follow their rows
    a.token_mask, a.row_metrics = torch.tensor([[1.0, 0.0]] * 4), {"turns": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    b.token_mask, b.row_metrics = torch.ones(3, 3), {"turns": torch.tensor([5.0, 6.0, 7.0])}
    merged, _ = take_groups([(a, ga, torch.tensor([False, True])), (b, gb, torch.tensor([True, False]))], 5)
    assert merged.token_mask.tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert merged.row_metrics["turns"].tolist() == [3.0, 4.0, 5.0] and merged.group.tolist() == [0, 0, 1]


def test_value_loss_clips_around_the_old_values():
    from npu_rl.algos.policy_losses import value_loss

    vpreds = torch.tensor([[1.0, 0.0, 3.0]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[0.0, 1.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = value_loss(vpreds, old, returns, mask, cliprange_value=0.5)
    # t0: unclipped (1-0)^2 = 1, clipped (0.5-0)^2 = 0.25 -> 0.5 * 1; t1: both (0-1)^2 = 1 -> 0.5
    # t2 (masked): unclipped 1, clipped (0.5-2)^2 = 2.25 -> 1.125, counted in neither stat
    torch.testing.assert_close(loss, torch.tensor([[0.5, 0.5, 1.125]]))
    torch.testing.assert_close(stats["vf_clipfrac"], torch.tensor(0.0))
    torch.testing.assert_close(stats["vpred_mean"], torch.tensor(0.5))
    # v = 2 moved past old 0 + 0.5 towards R = 2: unclipped 0, clipped (0.5 - 2)^2 = 2.25 wins (no credit for the jump)
    loss, stats = value_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]), torch.ones(1, 1), 0.5)
    torch.testing.assert_close(loss, torch.tensor([[1.125]]))
    torch.testing.assert_close(stats["vf_clipfrac"], torch.tensor(1.0))


def _whiten_on_rank(info, rewards, mask, expected):
    from npu_rl import distributed

    rows = slice(info.rank * 2, info.rank * 2 + 2)  # each rank holds two rows of the step batch
    inputs = AdvantageInputs(
        rewards[rows], mask[rows], torch.arange(2), gamma=0.9, all_sum=lambda t: distributed.all_reduce(t, "sum")
    )
    adv, _ = core_algos.ADV_ESTIMATORS["reinforce_plus_plus"](inputs)
    torch.testing.assert_close(adv, expected[rows])


@pytest.mark.slow  # two gloo processes (~6 s); the one-process whitening tests stay quick
def test_reinforce_plus_plus_whitens_over_both_ranks_like_one_process():
    from _dist_utils import run_workers

    gen = torch.Generator().manual_seed(3)
    rewards = torch.rand(4, 5, generator=gen)
    mask = (torch.arange(5)[None, :] < torch.tensor([5, 2, 4, 1])[:, None]).float()
    whole, _ = core_algos.ADV_ESTIMATORS["reinforce_plus_plus"](
        AdvantageInputs(rewards, mask, torch.arange(4), gamma=0.9)
    )
    run_workers(_whiten_on_rank, 2, rewards, mask, whole)


def _estimator_batch() -> AdvantageInputs:
    """8 rows in 4 groups of 2, with every input some estimator reads (values, greedy baselines, old
    log-probs and sum pi^2, two reward terms); rank r of two holds rows 4r..4r+3 (whole groups)."""
    gen = torch.Generator().manual_seed(5)
    mask = (torch.arange(6)[None, :] < torch.tensor([6, 2, 4, 1, 5, 3, 6, 2])[:, None]).float()
    terms = torch.rand(8, 2, generator=gen).round()
    terms[:, 1] = torch.rand(8, generator=gen) * 50
    return AdvantageInputs(
        place_scores(terms @ torch.tensor([1.0, 0.1]), mask), mask, torch.arange(8) // 2,
        values=torch.randn(8, 6, generator=gen) * mask, gamma=0.9, lam=0.95,
        baselines=torch.rand(4, generator=gen).repeat_interleave(2), old_logprobs=-torch.rand(8, 6, generator=gen),
        sum_pi_squared=torch.rand(8, 6, generator=gen) * 0.5, term_scores=terms, term_weights=torch.tensor([1.0, 0.1]),
    )  # fmt: skip


def _every_estimator_on_rank(info, expected):
    from npu_rl import distributed

    whole, rows = _estimator_batch(), slice(info.rank * 4, info.rank * 4 + 4)
    local = AdvantageInputs(
        **{
            f.name: (v[rows] if isinstance(v, torch.Tensor) and f.name != "term_weights" else v)
            for f in dataclasses.fields(whole)
            for v in [getattr(whole, f.name)]
        }
    )
    local = dataclasses.replace(local, all_sum=lambda t: distributed.all_reduce(t, "sum"))
    for name, (adv, ret) in expected.items():
        got_adv, got_ret = core_algos.ADV_ESTIMATORS[name](local)
        torch.testing.assert_close(got_adv, adv[rows], msg=name)
        torch.testing.assert_close(got_ret, ret[rows], msg=name)


@pytest.mark.slow  # two gloo processes (~6 s)
def test_every_estimator_gives_the_one_process_advantages_on_two_ranks():
    """Batch statistics (whitening, GDPO's and TRL's batch std, GPG's alpha) go through all_sum; the
    rest is per group, and groups are whole on each rank."""
    from _dist_utils import run_workers

    whole = _estimator_batch()
    expected = {name: core_algos.ADV_ESTIMATORS[name](whole) for name in core_algos.ADV_ESTIMATORS}
    assert len(expected) >= 15
    run_workers(_every_estimator_on_rank, 2, expected)


def test_grpo_passk_credits_only_each_groups_best_sample():
    # group 0: 0.2, 1.0, 0.5 -> the best (row 1) gets 1.0 - 0.5, divided by the unbiased std
    inputs = _inputs([0.2, 1.0, 0.5], [0, 0, 0], [1, 2, 1], eps=0.0)
    mean = (0.2 + 1.0 + 0.5) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in (0.2, 1.0, 0.5)) / 2)
    adv, ret = core_algos.ADV_ESTIMATORS["grpo_passk"](inputs)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.0, 0.0], [0.5 / std, 0.5 / std, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(adv, ret)
    unscaled = _inputs([0.2, 1.0, 0.5], [0, 0, 0], [1, 1, 1], norm_by_std=False)
    plain, _ = core_algos.ADV_ESTIMATORS["grpo_passk"](unscaled)
    torch.testing.assert_close(plain[:, 0], torch.tensor([0.0, 0.5, 0.0]))
    tied, _ = core_algos.ADV_ESTIMATORS["grpo_passk"](_inputs([1.0, 1.0], [4, 4], [1, 1]))
    assert torch.equal(tied, torch.zeros(2, 3))  # all equal: r_max - r_2nd = 0
    with pytest.raises(ValueError, match=r"rollout.n >= 2.*prompt 7 has 1"):
        core_algos.ADV_ESTIMATORS["grpo_passk"](_inputs([1.0, 0.0, 1.0], [0, 0, 7], [1, 1, 1]))


def test_opo_subtracts_the_length_weighted_group_mean():
    # group 0: lengths 2, 3, 1 -> baseline (2*1 + 3*0 + 1*1) / 6 = 0.5; group 1 alone keeps its reward
    adv, _ = core_algos.ADV_ESTIMATORS["opo"](_inputs([1.0, 0.0, 1.0, 0.7], [0, 0, 0, 1], [2, 3, 1, 2]))
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.5, -0.5, 0.5, 0.7]))
    assert adv[0, 2] == 0 and adv[2, 1] == 0


def test_gpg_rescales_by_rows_over_nonzero_scores_of_all_ranks():
    # 4 rows, 2 non-zero scores: alpha 2; group 0 mean 1/3, group 1 alone (mean 0)
    adv, _ = core_algos.ADV_ESTIMATORS["gpg"](_inputs([1.0, 0.0, 0.0, 2.0], [0, 0, 0, 1], [1, 1, 1, 1]))
    torch.testing.assert_close(adv[:, 0], torch.tensor([4 / 3, -2 / 3, -2 / 3, 4.0]))
    # another rank holding 4 rows with zero scores: alpha = 8 / 2
    other = _inputs([1.0, 0.0, 0.0, 2.0], [0, 0, 0, 1], [1, 1, 1, 1], all_sum=lambda t: t + torch.tensor([4.0, 0.0]))
    adv, _ = core_algos.ADV_ESTIMATORS["gpg"](other)
    torch.testing.assert_close(adv[:, 0], torch.tensor([8 / 3, -4 / 3, -4 / 3, 8.0]))


def test_grpo_batch_std_divides_group_centred_scores_by_the_batch_std():
    # group means 0.5 and 0.5; std of [1, 0, 0, 1] (unbiased) = sqrt(1/3); TRL's eps 1e-4
    adv, _ = core_algos.ADV_ESTIMATORS["grpo_batch_std"](_inputs([1.0, 0.0, 0.0, 1.0], [0, 0, 1, 1], [1, 1, 1, 1]))
    scale = math.sqrt(1 / 3) + 1e-4
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / scale)
    alone, _ = core_algos.ADV_ESTIMATORS["grpo_batch_std"](_inputs([1.0, 0.0, 3.0], [0, 0, 1], [1, 1, 1]))
    assert alone[2, 0] == 0  # a group of one is its own mean
    centred, _ = core_algos.ADV_ESTIMATORS["grpo_batch_std"](
        _inputs([1.0, 0.0, 0.0, 1.0], [0, 0, 1, 1], [1, 1, 1, 1], norm_by_std=False)
    )
    torch.testing.assert_close(centred[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # the std is the whole batch's: rows on another rank ([3, 3]) enter the sum and the squares
    both = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0])
    sums = iter([torch.tensor([both[4:].sum(), 2.0]), ((both[4:] - both.mean()) ** 2).sum()])
    shared = _inputs([1.0, 0.0, 0.0, 1.0], [0, 0, 1, 1], [1, 1, 1, 1], all_sum=lambda t: t + next(sums))
    adv, _ = core_algos.ADV_ESTIMATORS["grpo_batch_std"](shared)
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (both.std() + 1e-4))


def test_gpg_loss_is_the_plain_policy_gradient():
    logprob = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv, mask = torch.tensor([[0.5, -1.0]]), torch.ones(1, 2)
    loss, stats = core_algos.POLICY_LOSSES["gpg"](logprob, logprob.detach() - 0.3, adv, mask, ActorConfig())
    torch.testing.assert_close(loss, torch.tensor([[0.5, -2.0]]))
    loss.sum().backward()
    torch.testing.assert_close(logprob.grad, -adv)
    assert stats["pg_clipfrac"] == 0 and stats["ppo_kl"] == pytest.approx(-0.3)


def test_cispo_clips_the_detached_weight_and_keeps_every_tokens_gradient():
    cfg = ActorConfig(clip_ratio_low=0.2, clip_ratio_high=0.2)
    old = torch.log(torch.tensor([[1.0, 1.0, 1.0]]))
    logprob = torch.log(torch.tensor([[1.5, 1.1, 0.5]])).requires_grad_()  # ratios 1.5, 1.1, 0.5
    adv, mask = torch.tensor([[1.0, 1.0, -2.0]]), torch.ones(1, 3)
    loss, stats = core_algos.POLICY_LOSSES["cispo"](logprob, old, adv, mask, cfg)
    weight = torch.tensor([[1.2, 1.1, 0.8]])  # clipped to [0.8, 1.2]
    torch.testing.assert_close(loss, -weight * adv * logprob.detach())
    loss.sum().backward()
    torch.testing.assert_close(logprob.grad, -weight * adv)  # the clipped tokens still get a gradient
    assert stats["pg_clipfrac"] == pytest.approx(2 / 3) and stats["pg_clipfrac_lower"] == 0
