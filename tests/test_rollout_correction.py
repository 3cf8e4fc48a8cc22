"""Rollout correction (npu_rl.algos.rollout_correction): importance weights per token and per sequence,
batch normalisation over ranks, verl's rejection options and thresholds, against values computed by
hand; the config check of its keys; runs through the trainer."""

import json
import math

import pytest
import torch
from test_trainer import make_cfg, run

from npu_rl import core_algos
from npu_rl.algos.rollout_correction import (
    REJECTION_OPTIONS,
    bypass_loss,
    importance_weights,
    parse_rejection,
    rejection_mask,
)
from npu_rl.config import ActorConfig, ConfigError, load_config
from npu_rl.config.objective import RolloutCorrectionConfig

# log r = log pi_train - log pi_rollout; row 1 has a padded token, row 2 is empty
LOG_RATIO = torch.tensor([[0.0, -1.0, math.log(3.0)], [math.log(1.5), math.log(1.2), 7.0], [0.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_token_weights_are_truncated_ratios_zero_on_padding():
    weights, stats = importance_weights(LOG_RATIO, MASK, "token", 2.0)
    want = torch.tensor([[1.0, math.exp(-1.0), 2.0], [1.5, 1.2, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(weights, want)
    ratios = [1.0, math.exp(-1.0), 3.0, 1.5, 1.2]  # before truncation, valid tokens only
    assert stats["is_mean"] == pytest.approx((sum(ratios), 5.0))
    assert stats["is_clipfrac"] == pytest.approx((1.0, 5.0)) and stats["is_max"] == pytest.approx(3.0)


def test_sequence_weights_are_the_truncated_product_on_every_token():
    weights, stats = importance_weights(LOG_RATIO, MASK, "sequence", 2.0)
    row0 = min(math.exp(-1.0) * 3.0, 2.0)  # 1.10: kept
    row1 = min(1.5 * 1.2, 2.0)  # 1.8; the padded token's 7.0 is not counted
    torch.testing.assert_close(weights, torch.tensor([[row0] * 3, [row1, row1, 0.0], [0.0] * 3]))
    assert stats["is_mean"] == pytest.approx((row0 + row1, 2.0))  # the empty row is no sequence
    assert stats["is_clipfrac"] == (0.0, 2.0)
    capped, _ = importance_weights(LOG_RATIO, MASK, "sequence", 1.5)
    assert capped[1, 0].item() == pytest.approx(1.5) and capped[0, 0].item() == pytest.approx(row0)


def test_batch_normalisation_over_tokens_or_sequences_of_all_ranks():
    token, stats = importance_weights(LOG_RATIO, MASK, "token", 2.0, batch_normalize=True)
    assert (token * MASK).sum().item() / MASK.sum().item() == pytest.approx(1.0)
    raw, _ = importance_weights(LOG_RATIO, MASK, "token", 2.0)
    assert stats["is_batch_norm_factor"] == pytest.approx((raw * MASK).sum().item() / 5)
    seq, _ = importance_weights(LOG_RATIO, MASK, "sequence", 2.0, batch_normalize=True)
    assert (seq[0, 0] + seq[1, 0]).item() / 2 == pytest.approx(1.0)
    # another rank holds two sequences of weight 1 each: the mean is over all four
    other = torch.tensor([2.0, 2.0])
    shared, _ = importance_weights(LOG_RATIO, MASK, "sequence", 2.0, True, all_sum=lambda t: t + other)
    raw_seq, _ = importance_weights(LOG_RATIO, MASK, "sequence", 2.0)
    mean = (raw_seq[0, 0] + raw_seq[1, 0] + 2.0).item() / 4
    torch.testing.assert_close(shared, raw_seq / mean)


def test_rejection_thresholds_parse_as_verl_reads_them():
    (rule,) = parse_rejection("token_k1", 2.0)  # one number u: ratio bounds 1/u and u
    assert (rule.lower, rule.upper) == (0.5, 2.0)
    rules = parse_rejection("token_k1, seq_mean_k3 ,token_k1", "0.8_1.25,0.01")  # duplicates dropped
    assert [(r.option, r.lower, r.upper) for r in rules] == [("token_k1", 0.8, 1.25), ("seq_mean_k3", None, 0.01)]
    assert len(parse_rejection(",".join(REJECTION_OPTIONS), "2")) == 11
    for options, threshold, message in [
        ("token_k4", "1", "unknown option 'token_k4'; options: token_k1"),
        ("seq_max_k1", "1", "unknown option 'seq_max_k1'"),
        ("token_k2", None, "needs rollout_rs_threshold"),
        ("token_k2,token_k3", "1,2,3", "3 entries for 2 options"),
        ("token_k2", "0.5_2", "token_k2 takes one upper bound"),
        ("token_k1", "-1_2", "must be positive"),
        ("token_k3", "lots", "threshold 'lots' for token_k3"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_rejection(options, threshold)


def test_token_k1_keeps_ratios_inside_the_inverted_bounds():
    # verl compares -log r with [log lower, log upper]: kept when 1/upper <= r <= 1/lower
    keep, stats = rejection_mask(LOG_RATIO, MASK, parse_rejection("token_k1", "0.5_2.5"))
    # r: 1, e^-1 = 0.37 (< 0.4: out), 3 (> 2: out); 1.5, 1.2
    assert keep.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert stats["rs_masked_fraction"] == (2.0, 5.0) and stats["rs_seq_masked_fraction"] == (1.0, 2.0)
    assert stats["rs_token_k1_masked_fraction"] == (2.0, 5.0)


def test_sequence_rules_drop_whole_rows():
    k3 = [r - 1.0 - math.log(r) for r in (1.0, math.exp(-1.0), 3.0)]  # 0, 0.37, 0.90
    row1 = [r - 1.0 - math.log(r) for r in (1.5, 1.2)]  # 0.095, 0.018
    mean_keep, _ = rejection_mask(LOG_RATIO, MASK, parse_rejection("seq_mean_k3", sum(k3) / 3 - 0.01))
    assert mean_keep.tolist() == [[0.0] * 3, [1.0, 1.0, 0.0], [0.0] * 3]
    max_keep, _ = rejection_mask(LOG_RATIO, MASK, parse_rejection("seq_max_k3", max(row1) + 0.01))
    assert max_keep.tolist() == [[0.0] * 3, [1.0, 1.0, 0.0], [0.0] * 3]
    # seq_sum_k1 bounds the product of the ratios: row 0's is 1.10, row 1's 1.8
    sum_keep, _ = rejection_mask(LOG_RATIO, MASK, parse_rejection("seq_sum_k1", "0.5_1.0"))  # 1 <= prod <= 2
    assert sum_keep.tolist() == [[1.0] * 3, [1.0, 1.0, 0.0], [0.0] * 3]
    both, stats = rejection_mask(LOG_RATIO, MASK, parse_rejection("seq_sum_k1,token_k2", "0.5_1.0,0.1"))
    # token_k2 = 0.5 log^2 r: 0, 0.5, 0.60 | 0.082, 0.017 -> row 0 loses its last two tokens
    assert both.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0] * 3]
    assert stats["rs_seq_sum_k1_masked_fraction"] == (0.0, 5.0) and stats["rs_token_k2_masked_fraction"] == (2.0, 5.0)


def _load(*overrides):
    return load_config(None, ["model.path=m", "data.train_files=[a]", *overrides])


def test_config_checks_the_rejection_keys_before_anything_runs():
    rc = "algorithm.rollout_correction"
    cfg = _load(f"{rc}.rollout_is=sequence", f"{rc}.rollout_rs=token_k1,seq_max_k2", f"{rc}.rollout_rs_threshold=2")
    assert cfg.algorithm.rollout_correction.enabled and cfg.algorithm.rollout_correction.weighted
    assert not _load().algorithm.rollout_correction.enabled
    with pytest.raises(ConfigError, match=rf"{rc}.rollout_rs='seq_max_k1': unknown option 'seq_max_k1'"):
        _load(f"{rc}.rollout_rs=seq_max_k1", f"{rc}.rollout_rs_threshold=2")
    with pytest.raises(ConfigError, match=rf"{rc}.rollout_rs_threshold is set but {rc}.rollout_rs is not"):
        _load(f"{rc}.rollout_rs_threshold=2")


def test_trls_sequence_mask_preset_keeps_ratios_up_to_c_with_no_lower_bound():
    # docs/trl_migration.md: TRL's default mode with C = 3 is seq_sum_k1 with bounds 1/3_inf
    log_ratio = torch.tensor([[math.log(2.9), 0.0], [math.log(3.1), 0.0], [-30.0, -30.0]])
    keep, _ = rejection_mask(log_ratio, torch.ones(3, 2), parse_rejection("seq_sum_k1", "0.3333_inf"))
    assert keep.tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]


def _train_rows(tmp_path):
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "actor/grad_norm" in r]


RC = "algorithm.rollout_correction"
STEPS = ("trainer.total_training_steps=2", "trainer.test_freq=0", "trainer.save_freq=0")


def test_sequence_weights_and_rejection_run_through_the_trainer(tmp_path, tiny_model_dir, synthetic_parquet):
    run(make_cfg(
        tmp_path, tiny_model_dir, synthetic_parquet, *STEPS, f"{RC}.rollout_is=sequence",
        f"{RC}.rollout_is_batch_normalize=true", f"{RC}.rollout_rs=token_k1,seq_max_k3",
        f"{RC}.rollout_rs_threshold=0.5_2,1",
    ))  # fmt: skip
    rows = _train_rows(tmp_path)
    assert len(rows) == 2
    for row in rows:
        assert row["rollout_corr/is_batch_norm_factor"] > 0 and 0.0 <= row["rollout_corr/is_clipfrac"] <= 1.0
        assert 0.0 <= row["rollout_corr/rs_masked_fraction"] <= row["rollout_corr/rs_seq_masked_fraction"] <= 1.0
        assert "rollout_corr/rs_seq_max_k3_masked_fraction" in row and row["actor/grad_norm"] > 0


def test_rejecting_every_sequence_leaves_the_policy_unmoved(tmp_path, tiny_model_dir, synthetic_parquet):
    # seq_sum_k1 bounds 2_3 keep only sequences whose ratio lies in [1/3, 1/2]: none, as the engine and the
    # trainer agree closely on CPU
    run(make_cfg(
        tmp_path, tiny_model_dir, synthetic_parquet, *STEPS, f"{RC}.rollout_rs=seq_sum_k1",
        f"{RC}.rollout_rs_threshold=2_3",
    ))  # fmt: skip
    for row in _train_rows(tmp_path):
        assert row["rollout_corr/rs_masked_fraction"] == 1.0 and row["actor/grad_norm"] == 0.0, row


def test_lower_upper_bounds_stay_text_in_yaml_files_and_overrides(tmp_path):
    # YAML 1.1 (PyYAML) reads 0.5_2 as 0.52 and 2_3 as 23: config YAML keeps digits with underscores as text
    config = tmp_path / "run.yaml"
    config.write_text("algorithm:\n  rollout_correction:\n    rollout_rs: token_k1\n    rollout_rs_threshold: 0.5_2\n")
    assert (
        load_config(config, ["model.path=m", "data.train_files=[a]"]).algorithm.rollout_correction.rollout_rs_threshold
        == "0.5_2"
    )
    cfg = _load(f"{RC}.rollout_rs=seq_sum_k1", f"{RC}.rollout_rs_threshold=2_3")
    assert cfg.algorithm.rollout_correction.rollout_rs_threshold == "2_3"
    with pytest.raises(ConfigError, match=r"trainer\.total_training_steps: expected an integer, got '1_000'"):
        _load("trainer.total_training_steps=1_000")


def _rc(**values):
    return RolloutCorrectionConfig(bypass_mode=True, **values)


def test_bypass_ppo_clip_is_ppo_against_the_engine_over_the_kept_tokens():
    rollout = torch.zeros(3, 3)
    logprob = LOG_RATIO.clone().requires_grad_()  # current vs engine: r = 1, e^-1, 3 | 1.5, 1.2
    adv = torch.tensor([[1.0, -1.0, 1.0], [-2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    cfg = _rc(rollout_is="token", rollout_rs="token_k1", rollout_rs_threshold="0.5_2.5")  # drops e^-1 and 3
    loss, stats, kept = bypass_loss(logprob, rollout, adv, MASK, ActorConfig(), cfg)
    assert kept.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    want, want_stats = core_algos.ppo_policy_loss(logprob, rollout, adv, kept, 0.2, 0.2, 3.0)
    torch.testing.assert_close(loss, want)  # no importance weight on top of PPO's own ratio
    assert stats["ppo_kl"] == want_stats["ppo_kl"] and stats["rollout_rs_masked_fraction"].item() == pytest.approx(0.4)
    assert stats["rollout_is_mean"].item() == pytest.approx((1.0 + math.exp(-1.0) + 2.0 + 1.5 + 1.2) / 5)


def test_bypass_reinforce_weights_the_plain_policy_gradient():
    logprob = LOG_RATIO.clone().requires_grad_()
    adv = torch.ones(3, 3)
    loss, _, kept = bypass_loss(
        logprob, torch.zeros(3, 3), adv, MASK, ActorConfig(), _rc(loss_type="reinforce", rollout_is="token")
    )
    weights = torch.tensor([[1.0, math.exp(-1.0), 2.0], [1.5, 1.2, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(loss, -weights * LOG_RATIO)
    (loss * kept).sum().backward()
    torch.testing.assert_close(logprob.grad, -weights)  # the weight is detached
    plain, _, _ = bypass_loss(LOG_RATIO, torch.zeros(3, 3), adv, MASK, ActorConfig(), _rc(loss_type="reinforce"))
    torch.testing.assert_close(plain, -LOG_RATIO)


def test_bypass_runs_without_the_old_logprob_pass(tmp_path, tiny_model_dir, synthetic_parquet):
    # the tiny run has two mini-batches per step, so without bypass the old log-probs take their own pass
    bypass = (
        f"{RC}.bypass_mode=true",
        f"{RC}.rollout_is=token",
        f"{RC}.rollout_rs=token_k1",
        f"{RC}.rollout_rs_threshold=2",
    )
    for loss_type in ("ppo_clip", "reinforce"):
        out = tmp_path / loss_type
        run(make_cfg(out, tiny_model_dir, synthetic_parquet, *STEPS, *bypass, f"{RC}.loss_type={loss_type}"))
        for row in _train_rows(out):
            assert "timing_s/old_log_prob" not in row and row["actor/grad_norm"] > 0
            assert 0.0 <= row["actor/rollout_rs_masked_fraction"] < 0.5 and row["actor/rollout_is_mean"] > 0


def test_bypass_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match=rf"{RC}.loss_type=reinforce only applies with {RC}.bypass_mode=true"):
        _load(f"{RC}.loss_type=reinforce")
    with pytest.raises(ConfigError, match=rf"{RC}.rollout_is_batch_normalize needs the step batch's weights"):
        _load(f"{RC}.bypass_mode=true", f"{RC}.rollout_is=token", f"{RC}.rollout_is_batch_normalize=true")
    with pytest.raises(ConfigError, match=r"actor\.policy_loss=gspo cannot be combined with it"):
        _load(f"{RC}.bypass_mode=true", "actor.policy_loss=gspo")
    with pytest.raises(
        ConfigError, match=r"unknown policy loss 'reinforce' \(use algorithm\.rollout_correction\.bypass"
    ):
        _load("actor.policy_loss=reinforce")
