"""PPO with a critic and REINFORCE++ on 2 torchrun ranks match 1 process (gloo, CPU)."""

import pytest
import torch
from test_distributed import _assert_same_metrics, _metrics, _train, _weights

# eps >> |grad| keeps AdamW linear in the gradient, as in test_distributed (reduction order noise stays noise).
PPO = ("algorithm.adv_estimator=gae", "algorithm.lam=0.95", "critic.optim.lr=1.0", "critic.optim.eps=1.0",
       "critic.ppo_micro_batch_size_per_device=3")  # fmt: skip


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("extra", [PPO, ("algorithm.adv_estimator=reinforce_plus_plus",)], ids=["ppo", "rpp"])
def test_two_ranks_match_one_process(tmp_path, tiny_model_dir, synthetic_parquet, extra):
    args = (tmp_path, tiny_model_dir, synthetic_parquet)
    single, double = _train(*args, "single", 1, *extra), _train(*args, "double", 2, *extra)
    m1, m2 = _metrics(single), _metrics(double)
    assert sorted(m1) == sorted(m2) == [1, 2, 3, 4]
    for step in m1:
        _assert_same_metrics(m1[step], m2[step], rel=1e-4, abs_=1e-5)
    if extra is PPO:
        assert "critic/vf_loss" in m1[4] and "critic/values/mean" in m1[4]
    # the two ranks traded groups (trainer.balance_batch, on by default) and still match one process
    assert "timing_s/balance" in m2[1] and "timing_s/balance" not in m1[1]
    w1, w2 = _weights(single, 4, tmp_path), _weights(double, 4, tmp_path)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=1e-6, msg=name)


HALF_CONSTANT = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if extra_info["index"] % 2:
        return 0.25
    return sum(ch.isdigit() for ch in solution_str) / max(1, len(solution_str))
"""


@pytest.mark.slow
@pytest.mark.dist
def test_dynamic_sampling_on_two_ranks_refills_in_lockstep(tmp_path, tiny_model_dir, synthetic_parquet):
    reward = tmp_path / "half_constant.py"
    reward.write_text(HALF_CONSTANT)
    run = _train(
        tmp_path, tiny_model_dir, synthetic_parquet, "dapo", 2, f"reward.custom_function.path={reward}",
        "algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=score",
        "algorithm.filter_groups.max_num_gen_batches=10",
    )  # fmt: skip
    metrics = _metrics(run)
    assert sorted(metrics) == [1, 2, 3, 4]
    assert max(m["batch/num_gen_batches"] for m in metrics.values()) >= 2
    # data.gen_batch_size: each rank generates its share of 12 prompts at once and keeps 2 informative groups
    gen = _metrics(_train(
        tmp_path, tiny_model_dir, synthetic_parquet, "dapo_gen", 2, f"reward.custom_function.path={reward}",
        "algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=score",
        "algorithm.filter_groups.max_num_gen_batches=10", "data.gen_batch_size=12",
    ))  # fmt: skip
    assert sorted(gen) == [1, 2, 3, 4]
    # the step trains on data.train_batch_size groups over both ranks: 4 prompts x rollout.n 3 rows
    for m in gen.values():
        assert m["global_seqlen/mean"] * 2 == pytest.approx(12 * (m["prompt_length/mean"] + m["response_length/mean"]))
