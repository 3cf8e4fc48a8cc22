"""Optimal token baselines against values computed by hand, and the trainer feeding them."""

import dataclasses
import math

import pytest
import torch
from test_algorithms_e2e import BASE, _train_rows
from test_trainer import make_cfg, run

from npu_rl import core_algos
from npu_rl.algos import token_baselines
from npu_rl.algos.advantages import AdvantageInputs, place_scores
from npu_rl.config import ConfigError

OTB = core_algos.ADV_ESTIMATORS["optimal_token_baseline"]
TIR = core_algos.ADV_ESTIMATORS["tir_optimal_token_baseline"]


def _inputs(mask, scores, group, **kw):
    """pi = 0.5 on every sampled token and sum pi^2 = 0.5: each token adds 1 - 2 pi + sum pi^2 = 0.5 to W."""
    mask = torch.tensor(mask, dtype=torch.float32)
    return AdvantageInputs(
        place_scores(torch.tensor(scores), mask), mask, torch.tensor(group),
        old_logprobs=torch.full(mask.shape, math.log(0.5)), sum_pi_squared=torch.full(mask.shape, 0.5), **kw,
    )  # fmt: skip


def test_column_aligned_baseline_weighs_returns_by_accumulated_variance():
    # group 0: A (score 1, 2 tokens), B (score 0, 1 token); group 1: C alone (baseline 0)
    inputs = _inputs([[1, 1], [1, 0], [1, 1]], [1.0, 0.0, 0.7], [0, 0, 1])
    adv, ret = OTB(inputs)
    # column 0: W_A = W_B = 0.5, B_0 = (1 x 0.5 + 0 x 0.5) / 1.0 = 0.5; column 1: only A, B_1 = G_A = 1
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.0], [-0.5, 0.0], [0.7, 0.7]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.7, 0.7]]))
    # rollout IS weight 2 on A's first token: w_A0 = 0.5 x 4 = 2, so B_0 = (1 x 2) / (2 + 0.5) = 0.8
    weights = torch.ones(3, 2)
    weights[0, 0] = 2.0
    adv, _ = OTB(dataclasses.replace(inputs, is_weights=weights))
    torch.testing.assert_close(adv[:2, 0], torch.tensor([0.2, -0.8]), atol=1e-6, rtol=0)


def test_multi_turn_variant_aligns_by_own_tokens_and_zeroes_the_unique_tail():
    # A: model token, tool answer, model token (score 1); B: one model token (score 0)
    inputs = _inputs([[1, 0, 1], [1, 0, 0]], [1.0, 0.0], [0, 0])
    adv, ret = TIR(inputs)
    # A's own tokens are positions 0, 1; B's is 0. Position 0: B = 0.5. Position 1: only A, and A is the
    # group's unique longest, so its baseline past B's length is 0: the advantage is its return, 1.
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.0, 1.0], [-0.5, 0.0, 0.0]]), atol=1e-6, rtol=0)
    assert ret[0].tolist() == [1.0, 0.0, 1.0]  # zero on the tool answer
    # the column-aligned estimator compares A's last token with nobody and keeps no tail: advantage ~0
    torch.testing.assert_close(OTB(inputs)[0][0], torch.tensor([0.5, 0.0, 0.0]), atol=1e-6, rtol=0)


def test_variance_proxies_average_rows_and_split_signal_from_noise():
    from npu_rl.metrics import StepStats, record_variance_proxies, variance_proxies

    inputs = _inputs([[1, 1], [1, 0], [1, 1]], [1.0, 0.0, 0.7], [0, 0, 1])
    advantages = torch.tensor([[0.5, 0.0], [-0.5, 0.0], [0.7, 0.7]])
    rows = token_baselines.variance_proxy_rows(inputs, advantages)
    # A_i = row means 0.25, -0.5, 0.7; W_i = 0.5 per valid token: 1.0, 0.5, 1.0
    torch.testing.assert_close(rows["expected_w"], torch.tensor([1.0, 0.5, 1.0]))
    torch.testing.assert_close(rows["expected_a_squared"], torch.tensor([0.0625, 0.25, 0.49]), rtol=1e-6, atol=0)
    torch.testing.assert_close(rows["proxy2_total_power"], torch.tensor([0.0625, 0.125, 0.49]), rtol=1e-6, atol=0)
    stats = StepStats()
    record_variance_proxies(stats, rows)
    stats.add_max("actor/grad_norm", 0.3)  # the update's, reduced in the same collective
    metrics = stats.reduce()  # the proxies derived after the reduction
    assert not [key for key in metrics if "/_" in key or key.startswith("_")], "the row count is popped"
    assert metrics["variance_proxy/proxy2_total_power"] == pytest.approx((0.0625 + 0.125 + 0.49) / 3)
    assert metrics["variance_proxy/proxy1_signal_strength"] == pytest.approx(0.09)
    assert metrics["variance_proxy/proxy3_pure_noise"] == pytest.approx(((0.0625 + 0.125 + 0.49) / 3 - 0.09) / 2)
    assert variance_proxies({"actor/grad_norm": 1.0}) == {}  # no proxies without sum pi^2


def test_missing_policy_statistics_are_named():
    inputs = dataclasses.replace(_inputs([[1]], [1.0], [0]), sum_pi_squared=None)
    with pytest.raises(ValueError, match="sum of squared probabilities"):
        OTB(inputs)


def test_sum_pi_squared_from_logits_is_the_sum_of_squared_softmax():
    logits = torch.randn(4, 5, 33, generator=torch.Generator().manual_seed(0)) * 3
    expected = torch.softmax(logits, -1).square().sum(-1)
    torch.testing.assert_close(core_algos.sum_pi_squared_from_logits(logits), expected)


@pytest.mark.parametrize("name", ["optimal_token_baseline", "tir_optimal_token_baseline"])
def test_trainer_runs_the_old_log_prob_pass_for_them_even_on_policy(tmp_path, tiny_model_dir, synthetic_parquet, name):
    cfg = make_cfg(
        tmp_path, tiny_model_dir, synthetic_parquet, *BASE, f"algorithm.adv_estimator={name}",
        "actor.ppo_mini_batch_size=4",  # one update per rollout: no old-log-prob pass otherwise
    )  # fmt: skip
    run(cfg)
    for row in _train_rows(tmp_path):
        assert row["timing_s/old_log_prob"] > 0
        assert row["actor/grad_norm"] > 1e-6
        assert row["critic/advantages/max"] > row["critic/advantages/min"]
        assert row["variance_proxy/proxy1_signal_strength"] == pytest.approx(row["actor/grad_norm"] ** 2)
        assert row["variance_proxy/expected_w"] > 0 and row["variance_proxy/proxy2_total_power"] >= 0


def test_bypass_mode_is_refused(tmp_path, tiny_model_dir, synthetic_parquet):
    with pytest.raises(ConfigError, match="bypass_mode skips"):
        make_cfg(
            tmp_path, tiny_model_dir, synthetic_parquet, "algorithm.adv_estimator=optimal_token_baseline",
            "algorithm.rollout_correction.bypass_mode=true",
        )  # fmt: skip
