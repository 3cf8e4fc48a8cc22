"""The trainer runs end to end with each estimator, policy loss and stabiliser (tiny random model, CPU)."""

import json

import pytest
import torch
from test_trainer import make_cfg, run, straight_and_resumed

from npu_rl.algos.dapo import DynamicSamplingError
from npu_rl.config import ConfigError
from npu_rl.data import BatchSampler, DataError

BASE = ("trainer.total_training_steps=2", "trainer.test_freq=0", "trainer.save_freq=0")


def _train_rows(tmp_path):
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "actor/pg_loss" in r]


@pytest.mark.parametrize(
    "extra",
    [
        ("algorithm.adv_estimator=rloo",),
        ("algorithm.adv_estimator=reinforce_plus_plus", "algorithm.gamma=0.99"),
        ("algorithm.adv_estimator=reinforce_plus_plus_baseline", "actor.loss_agg_mode=token-sum"),
        ("actor.policy_loss=gspo", "actor.loss_agg_mode=seq-mean-token-mean", "actor.kl_loss_type=k3+"),
        ("algorithm.adv_estimator=gpg", "actor.policy_loss=gpg"),
        ("algorithm.adv_estimator=opo", "actor.policy_loss=cispo", "actor.clip_ratio_high=4.0"),
        ("algorithm.adv_estimator=grpo_passk",),
        ("algorithm.adv_estimator=grpo_batch_std",),
        ("algorithm.adv_estimator=remax", "rollout.n=1", "algorithm.use_kl_in_reward=true"),
        ("actor.policy_loss=geo_mean", "actor.ppo_epochs=2"),
        ("actor.policy_loss=sapo", "actor.ppo_epochs=2"),
        ("actor.policy_loss=vespo", "actor.ppo_epochs=2"),
        ("actor.policy_loss=luspo",),
        ("actor.policy_loss=clip_cov", "actor.policy_loss_params.clip_cov_lb=-1e9", "actor.ppo_epochs=2"),
        ("actor.policy_loss=kl_cov", "actor.policy_loss_params.kl_cov_ratio=0.1", "actor.ppo_epochs=2"),
    ],
    ids=[
        "rloo", "reinforce_pp", "reinforce_pp_baseline", "gspo", "gpg", "opo_cispo", "passk", "batch_std", "remax",
        "geo_mean", "sapo", "vespo", "luspo", "clip_cov", "kl_cov",
    ],
)  # fmt: skip
def test_each_estimator_and_loss_trains(tmp_path, tiny_model_dir, synthetic_parquet, extra):
    run(make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, *BASE, *extra))
    rows = _train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["actor/grad_norm"] > 1e-6 for r in rows), "the reward varies, so the policy must move"
    if "actor.policy_loss=clip_cov" in extra or "actor.policy_loss=kl_cov" in extra:  # one token per micro-batch
        assert all(r["actor/pg_clipfrac"] > 0 for r in rows), "every micro-batch treats at least one token"


TEXT_HASH = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return (sum(map(ord, solution_str)) + extra_info["index"]) % 7 / 7  # differs between prompts and answers
"""


def test_remax_baseline_is_the_greedy_answers_score(tmp_path, tiny_model_dir, synthetic_parquet):
    """With top-k 1 every sample is the greedy answer, so each score equals its own prompt's baseline (the
    scores differ between prompts, so a baseline given to the wrong rows shows): advantages 0."""
    reward = tmp_path / "text_hash.py"
    reward.write_text(TEXT_HASH)
    run(
        make_cfg(
            tmp_path, tiny_model_dir, synthetic_parquet, *BASE, "algorithm.adv_estimator=remax", "rollout.top_k=1",
            f"reward.custom_function.path={reward}",
        )
    )  # fmt: skip
    for row in _train_rows(tmp_path):
        assert row["timing_s/gen_max"] > 0
        assert row["critic/score/max"] > row["critic/score/min"], "the custom reward varies between prompts"
        assert row["critic/reward_baselines/mean"] == pytest.approx(row["critic/score/mean"])
        assert row["critic/advantages/max"] == row["critic/advantages/min"] == 0


TWO_TERMS = """
def digits(data_source, solution_str, ground_truth, extra_info=None):
    return sum(ch.isdigit() for ch in solution_str) / max(1, len(solution_str))

def length(data_source, solution_str, ground_truth, extra_info=None):
    return float(len(solution_str))  # a wide-range term that GDPO keeps from drowning the other
"""


def test_gdpo_trains_on_several_reward_terms_and_the_overlong_penalty(tmp_path, tiny_model_dir, synthetic_parquet):
    rewards = tmp_path / "two_terms.py"
    rewards.write_text(TWO_TERMS)
    run(
        make_cfg(
            tmp_path, tiny_model_dir, synthetic_parquet, *BASE, "algorithm.adv_estimator=gdpo",
            f"reward.functions=[{{name: digits, path: {rewards}}}, {{name: length, path: {rewards}, weight: 0.1}}]",
            "reward.custom_function.path=null", "reward.overlong_buffer.enable=true", "reward.overlong_buffer.len=4",
        )
    )  # fmt: skip
    for row in _train_rows(tmp_path):
        assert row["actor/grad_norm"] > 1e-6
        assert row["critic/advantages/max"] > 0 > row["critic/advantages/min"], "normalized over the step batch"
        assert row["reward/length/mean"] > 1 and "reward/overlong_reward/mean" in row


def test_gdpo_refuses_a_kl_penalty_in_the_reward(tmp_path, tiny_model_dir, synthetic_parquet):
    with pytest.raises(ConfigError, match="use_kl_in_reward=false"):
        make_cfg(
            tmp_path,
            tiny_model_dir,
            synthetic_parquet,
            "algorithm.adv_estimator=gdpo",
            "algorithm.use_kl_in_reward=true",
        )


def test_adaptive_kl_in_reward_and_rollout_correction_log_their_metrics(tmp_path, tiny_model_dir, synthetic_parquet):
    run(
        make_cfg(
            tmp_path, tiny_model_dir, synthetic_parquet, *BASE,
            "actor.use_kl_loss=false", "algorithm.use_kl_in_reward=true", "algorithm.kl_coef=0.1",
            "algorithm.kl_ctrl.type=adaptive", "algorithm.kl_ctrl.target_kl=0.01", "algorithm.kl_ctrl.horizon=10",
            "algorithm.rollout_correction.rollout_is=token", "algorithm.rollout_correction.rollout_is_threshold=2.0",
        )
    )  # fmt: skip
    first, second = _train_rows(tmp_path)
    assert first["actor/reward_kl_penalty_coeff"] == pytest.approx(0.1)
    # step 1's KL (the policy was the reference) is 0: error -1 clipped to -0.2, 12 sequences over horizon 10
    assert second["actor/reward_kl_penalty_coeff"] == pytest.approx(0.1 * (1 - 0.2 * 12 / 10))
    for row in (first, second):
        assert 0.5 < row["rollout_corr/is_mean"] < 2.0
        assert row["rollout_corr/is_max"] >= row["rollout_corr/is_mean"]
        assert 0.0 <= row["rollout_corr/is_clipfrac"] <= 1.0


HALF_CONSTANT = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if extra_info["index"] % 2:  # every odd prompt's group is all-equal: dynamic sampling drops it
        return 0.25
    return sum(ch.isdigit() for ch in solution_str) / max(1, len(solution_str))
"""


def test_dynamic_sampling_refills_and_reports_generation_batches(tmp_path, tiny_model_dir, synthetic_parquet):
    reward = tmp_path / "half_constant.py"
    reward.write_text(HALF_CONSTANT)
    trainer = run(
        make_cfg(
            tmp_path, tiny_model_dir, synthetic_parquet, *BASE,
            "algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=score",
            "algorithm.filter_groups.max_num_gen_batches=8", f"reward.custom_function.path={reward}",
            "reward.custom_function.path=null", "reward.overlong_buffer.enable=true", "reward.overlong_buffer.len=4",
            "reward.overlong_buffer.penalty_factor=0.5",
        )
    )  # fmt: skip
    rows = _train_rows(tmp_path)
    assert max(r["batch/num_gen_batches"] for r in rows) >= 2, "half the groups are dropped: the batch needs refills"
    assert all(r["batch/num_gen_batches"] <= 8 for r in rows)
    assert all(-0.5 <= r["reward/overlong_reward/mean"] <= 0.0 for r in rows)
    assert all(r["critic/score/max"] > r["critic/score/min"] for r in rows)
    # extra prompts came from the sampler: it moved past the two steps' own 2 x 4 prompts
    assert trainer.sampler.position + trainer.sampler.epoch * 48 > 8


def test_dapo_generation_batches_hold_gen_batch_size_prompts_and_the_step_trains_on_train_batch_size(
    tmp_path, tiny_model_dir, synthetic_parquet
):
    """data.gen_batch_size (verl's DAPO key): each generation batch draws 12 prompts (half of them with
    all-equal groups), so one batch usually yields the 4 informative groups a step trains on; the first 4 are
    kept, the rest of the batch is not trained on."""
    reward = tmp_path / "half_constant.py"
    reward.write_text(HALF_CONSTANT)
    trainer = run(
        make_cfg(
            tmp_path, tiny_model_dir, synthetic_parquet, *BASE, "data.gen_batch_size=12",
            "algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=score",
            f"reward.custom_function.path={reward}", f"trainer.rollout_data_dir={tmp_path / 'rollouts'}",
        )
    )  # fmt: skip
    assert trainer.sampler.batch_size == 12 and trainer.sampler.steps_per_epoch == 48 // 12
    rows = _train_rows(tmp_path)
    batches = sum(r["batch/num_gen_batches"] for r in rows)
    assert trainer.sampler.position + trainer.sampler.epoch * 48 == 12 * batches  # whole generation batches drawn
    for step in (1, 2):  # the trained rows: train_batch_size groups of rollout.n, every group informative
        dumped = [json.loads(line) for line in (tmp_path / "rollouts" / f"{step}.jsonl").read_text().splitlines()]
        assert len(dumped) == 4 * 3
        groups = [{d["score"] for d in dumped[i : i + 3]} for i in range(0, 12, 3)]
        assert all(len(g) > 1 for g in groups), groups


def test_gen_batch_size_is_checked_against_the_batch_it_feeds(tiny_model_dir, synthetic_parquet, tmp_path):
    dapo = ("algorithm.filter_groups.enable=true",)
    for extra, message in (
        (("data.gen_batch_size=2", *dapo), r"data\.gen_batch_size \(2\) must be at least data\.train_batch_size \(4\)"),
        (("data.gen_batch_size=8",), r"only dynamic sampling uses .*set data\.train_batch_size instead"),
        (
            ("data.gen_batch_size=7", *dapo),
            r"data\.gen_batch_size \(7\) must be a multiple of actor\.ppo_mini_batch_size",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, *extra)
    cfg = make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, "data.gen_batch_size=60", *dapo)
    with pytest.raises(DataError, match=r"fewer than data\.gen_batch_size=60"):
        BatchSampler.for_training(list(range(48)), cfg.data)


def test_dynamic_sampling_cap_names_the_key(tmp_path, tiny_model_dir, synthetic_parquet):
    constant = tmp_path / "constant.py"
    constant.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n  return 1.0\n")
    cfg = make_cfg(
        tmp_path, tiny_model_dir, synthetic_parquet, *BASE,
        "algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=score",
        "algorithm.filter_groups.max_num_gen_batches=2", f"reward.custom_function.path={constant}",
    )  # fmt: skip
    cap = r"0 of 4 groups .* after 2 generation batches .*max_num_gen_batches=2"
    with pytest.raises(DynamicSamplingError, match=cap):
        run(cfg)


def test_ppo_with_a_critic_trains_and_logs_critic_metrics(tmp_path, tiny_model_dir, synthetic_parquet):
    trainer = run(
        make_cfg(
            tmp_path, tiny_model_dir, synthetic_parquet, "trainer.total_training_steps=3", "trainer.test_freq=0",
            "trainer.save_freq=0", "algorithm.adv_estimator=gae", "algorithm.lam=0.95", "critic.optim.lr=1e-3",
            "critic.ppo_micro_batch_size_per_device=4", "trainer.critic_warmup=1", "model.gradient_checkpointing=true",
            "data.max_prompt_length=128", "critic.use_dynamic_bsz=true", "critic.ppo_max_token_len_per_device=140",
            "model.activation_offload=true",
        )
    )  # fmt: skip
    # the critic's passes: packed, checkpointed and offloaded like the actor's, its training micro-batches by tokens
    assert (trainer.critic.plan.forward, trainer.critic.plan.checkpoint, trainer.critic.plan.offload) == (
        "packed", True, True
    ) and trainer.plan.offload  # fmt: skip
    assert (trainer.critic.train_budget, trainer.critic.values_budget) == (140, 140)
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "critic/vf_loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "actor/pg_loss" not in rows[0] and "actor/pg_loss" in rows[1]  # one critic warm-up step
    assert rows[0]["critic/values/mean"] == 0.0 and rows[0]["critic/values/max"] == 0.0  # zero-initialised head
    assert rows[1]["critic/values/max"] != 0.0, "the critic learned from step 1's returns"
    for key in ("critic/vf_clipfrac", "critic/vpred_mean", "critic/returns/mean", "critic/grad_norm", "critic/lr"):
        assert key in rows[-1], key
    assert all(r["critic/vf_explained_var"] <= 1 for r in rows) and "timing_per_token_ms/update_critic" in rows[-1]


def test_ppo_resume_reproduces_the_uninterrupted_run_critic_included(tmp_path, tiny_model_dir, synthetic_parquet):
    ppo = ("algorithm.adv_estimator=gae", "critic.optim.lr=1e-3", "trainer.test_freq=0", "trainer.save_freq=2")
    straight, resumed = straight_and_resumed(tmp_path, tiny_model_dir, synthetic_parquet, *ppo)
    assert (tmp_path / "b" / "ckpt" / "global_step_2" / "critic" / "model" / ".metadata").is_file()
    for a, b in ((straight.model, resumed.model), (straight.critic.model, resumed.critic.model)):
        sa, sb = a.state_dict(), b.state_dict()
        for name in sa:
            torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=1e-6, msg=name)
    states = [t.critic.optimizer.state_dict()["state"] for t in (straight, resumed)]
    assert states[0].keys() == states[1].keys() and states[0]


def test_the_ppo_recipe_config_loads(tiny_model_dir, synthetic_parquet):
    from npu_rl.config import load_config

    cfg = load_config(
        "npu_rl/configs/qwen2_5_math_7b_ppo.yaml",
        [f"model.path={tiny_model_dir}", f"data.train_files=[{synthetic_parquet['train']}]", "data.val_files=[]"],
    )
    assert cfg.use_critic and cfg.needs_ref and cfg.algorithm.kl_coef == 0.01
    assert (cfg.actor.optim.lr, cfg.critic.optim.lr, cfg.rollout.temperature) == (5e-7, 9e-6, 0.6)
    assert (cfg.data.train_batch_size, cfg.actor.ppo_mini_batch_size, cfg.rollout.n) == (1024, 128, 8)
    assert (cfg.data.max_prompt_length, cfg.rollout.max_new_tokens) == (1024, 3000)


def test_loss_scale_factor_divides_the_dr_grpo_loss(tmp_path, tiny_model_dir, synthetic_parquet):
    """seq-mean-token-sum-norm divides by actor.loss_scale_factor (verl's key), else by rollout.max_new_tokens:
    the same rollouts give the first step's entropy term (aggregated as the loss, verl's actor/entropy)
    12 / 48 = 1/4 as large with a factor of 48 (its pg_loss is ~0 on-policy: group advantages cancel)."""
    one_step = ("trainer.total_training_steps=1", "trainer.test_freq=0", "trainer.save_freq=0")
    agg = ("actor.loss_agg_mode=seq-mean-token-sum-norm", "rollout.max_new_tokens=12")
    losses = []
    for extra in ((), ("actor.loss_scale_factor=48",)):
        run(make_cfg(tmp_path / str(len(losses)), tiny_model_dir, synthetic_parquet, *one_step, *agg, *extra))
        (row,) = _train_rows(tmp_path / str(len(losses)))
        losses.append(row["actor/entropy"])
    assert losses[0] > 1e-3
    assert losses[1] == pytest.approx(losses[0] / 4, rel=1e-5)
