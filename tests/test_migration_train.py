"""A GRPO run configured the way a verl user and a TRL user write it: verl-spelled overrides and a TRL
reward function (batched signature, dataset columns by name) train the tiny model end to end."""

from __future__ import annotations

import json

from npu_rl.config import load_config
from npu_rl.trainer import GRPOTrainer

TRL_REWARD = """
def digits(prompts, completions, ground_truth, **kwargs):
    # TRL's signature: lists in, one float per completion out; prompts arrive as chat messages
    assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts)
    texts = [c[0]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]
"""


def test_verl_overrides_and_a_trl_reward_train(tmp_path, tiny_model_dir, synthetic_parquet):
    reward_file = tmp_path / "trl_reward.py"
    reward_file.write_text(TRL_REWARD)
    cfg = load_config(
        None,
        [
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            f"data.train_files=[{synthetic_parquet['train']}]",
            "data.train_batch_size=4",
            "data.max_response_length=10",
            "actor_rollout_ref.actor.ppo_mini_batch_size=4",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=6",
            "actor_rollout_ref.actor.optim.lr=1e-3",
            "actor_rollout_ref.actor.use_kl_loss=False",
            "actor_rollout_ref.rollout.n=3",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=6",
            "actor_rollout_ref.model.use_remove_padding=True",
            f"reward.functions=[{{name: digits, path: {reward_file}}}]",
            "reward.num_workers=1",
            "trainer.logger=[jsonl]",
            f"trainer.log_dir={tmp_path / 'logs'}",
            f"trainer.default_local_dir={tmp_path / 'ckpt'}",
            "trainer.val_before_train=False",
            "trainer.total_training_steps=2",
            "trainer.save_freq=-1",
            "trainer.n_gpus_per_node=1",
            "trainer.nnodes=1",
        ],
    )
    assert cfg.rollout.max_new_tokens == 10 and cfg.actor.ppo_micro_batch_size_per_device == 6
    trainer = GRPOTrainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "actor/pg_loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert any(r["critic/score/max"] > r["critic/score/min"] for r in train), "the TRL reward is in use"
