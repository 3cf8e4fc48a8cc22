"""End-to-end GRPO on the tiny random model: real parquet, tokenizer, model, rewards and checkpoints."""

import json
from pathlib import Path

import pytest
import torch
from _tolerances import assert_below
from _train_proc import train_args
from safetensors.torch import load_file

from npu_rl.config import ConfigError, load_config
from npu_rl.step_rollouts import shard_prompts
from npu_rl.trainer import GRPOTrainer


def make_cfg(tmp_path: Path, model_dir: Path, data: dict, *extra: str):
    """The tiny run of tests/_train_proc.py with a KL loss (so a reference model), saving only at the end."""
    kl = ("actor.use_kl_loss=true", "actor.kl_loss_coef=0.01", "trainer.save_freq=-1", "trainer.num_threads=0")
    return load_config(None, train_args(tmp_path, model_dir, data, *kl, *extra))


def run(cfg) -> dict:
    trainer = GRPOTrainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


def straight_and_resumed(tmp_path: Path, model_dir: Path, data: dict, *extra: str):
    """The 4-step run uninterrupted (in tmp_path/a) and as 2 steps then a resume to 4 (in tmp_path/b)."""
    straight = run(make_cfg(tmp_path / "a", model_dir, data, *extra))
    first = make_cfg(tmp_path / "b", model_dir, data, *extra)
    first.trainer.total_training_steps = 2
    run(first)
    resumed = run(make_cfg(tmp_path / "b", model_dir, data, *extra))  # resume_mode=auto finds global_step_2
    assert resumed.global_step == 4
    return straight, resumed


def test_grpo_trains_end_to_end_and_logs_verl_metrics(tmp_path, tiny_model_dir, synthetic_parquet):
    dumps = (f"trainer.rollout_data_dir={tmp_path / 'rollouts'}", f"trainer.validation_data_dir={tmp_path / 'val'}")
    val = ("rollout.val_kwargs.n=2", "rollout.val_kwargs.temperature=1.0")
    cfg = make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, "trainer.save_freq=2", *dumps, *val)
    run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "actor/pg_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    for key in (
        "actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/pg_clipfrac", "actor/ppo_kl", "actor/grad_norm",
        "actor/lr", "critic/score/mean", "critic/score/max", "critic/score/min", "critic/advantages/mean",
        "response_length/mean", "response_length/max", "response_length/clip_ratio", "prompt_length/mean",
        "timing_s/gen", "timing_s/reward", "timing_s/ref", "timing_s/update_actor", "timing_s/step",
        "perf/throughput", "rollout/logprob_diff", "critic/returns/mean", "prompt_length/clip_ratio",
        "timing_per_token_ms/gen", "timing_per_token_ms/update_actor", "global_seqlen/mean",
        "global_seqlen/minmax_diff",
    ):  # fmt: skip
        assert key in train_rows[-1], key
    assert "timing_s/old_log_prob" in train_rows[-1]  # two mini-batches per step: old logprobs are frozen
    assert all(r["critic/score/max"] > r["critic/score/min"] for r in train_rows), "the custom reward is in use"
    assert all(r["actor/grad_norm"] > 1e-4 for r in train_rows), "the reward varies, so the policy must move"
    # sampler vs trainer logprobs of the same tokens: measured 1.7e-7 (AVX-512), 2.1e-7 (AVX2-emulated): 10x
    assert_below(train_rows[-1]["rollout/logprob_diff"], 2e-6, "rollout/logprob_diff")
    # verl's validation metrics: the core variable acc at N=2 samples, the reward and the spreads auxiliary
    val_rows = [r for r in rows if "val-core/synthetic/arith/acc/mean@2" in r]
    assert val_rows and {
        "val-core/synthetic/arith/acc/maj@2/mean",
        "val-core/synthetic/arith/acc/best@2/mean",
        "val-aux/synthetic/arith/acc/std@2",
        "val-aux/synthetic/arith/reward/mean@2",
    } <= set(val_rows[-1])
    assert (
        val_rows[-1]["val-core/synthetic/arith/acc/best@2/mean"] >= val_rows[-1]["val-core/synthetic/arith/acc/mean@2"]
    )
    assert (tmp_path / "logs" / "config.yaml").exists()
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    assert (ckpt / "global_step_2" / "actor" / "huggingface" / "config.json").exists()
    assert (ckpt / "global_step_4" / "actor").is_dir()
    # verl's generation dumps: every training response of a step, every validation response
    scores = {r["step"]: r["critic/score/mean"] for r in train_rows}
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == ["1.jsonl", "2.jsonl", "3.jsonl", "4.jsonl"]
    for step, mean in scores.items():
        dumped = [json.loads(line) for line in (tmp_path / "rollouts" / f"{step}.jsonl").read_text().splitlines()]
        assert len(dumped) == 12 and {d["step"] for d in dumped} == {step}  # 4 prompts x rollout.n 3
        assert {"input", "output", "gts", "score"} <= set(dumped[0]) and "step by step" in dumped[0]["input"]
        assert sum(d["score"] for d in dumped) / 12 == pytest.approx(mean, abs=1e-6)
    val = sorted(p.name for p in (tmp_path / "val").iterdir())
    assert val == ["0.jsonl", "2.jsonl", "4.jsonl"]  # before training, then every trainer.test_freq=2 steps
    lines = (tmp_path / "val" / "4.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 2  # data.val_max_samples prompts x rollout.val_kwargs.n


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, tiny_model_dir, synthetic_parquet):
    straight = make_cfg(tmp_path / "a", tiny_model_dir, synthetic_parquet, "trainer.test_freq=-1")
    a = {k: v.clone() for k, v in run(straight).model.state_dict().items()}
    first = make_cfg(tmp_path / "b", tiny_model_dir, synthetic_parquet, "trainer.test_freq=-1")
    first.trainer.total_training_steps = 2
    run(first)
    second = make_cfg(tmp_path / "b", tiny_model_dir, synthetic_parquet, "trainer.test_freq=-1")
    trainer = run(second)  # resume_mode=auto finds global_step_2
    assert trainer.global_step == 4
    b = trainer.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        # measured bit-identical on both kinds (same machine, same kernels); 1e-6 admits a reordered reduction
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    # and training did change the weights
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.allclose(base[k], a[k]) for k in base if k in a)
    logs_a = [json.loads(x) for x in (tmp_path / "a" / "logs" / "metrics.jsonl").read_text().splitlines()]
    logs_b = [json.loads(x) for x in (tmp_path / "b" / "logs" / "metrics.jsonl").read_text().splitlines()]
    last_a = [r for r in logs_a if r["step"] == 4 and "actor/pg_loss" in r][-1]
    last_b = [r for r in logs_b if r["step"] == 4 and "actor/pg_loss" in r][-1]
    torch.testing.assert_close(last_a["critic/score/mean"], last_b["critic/score/mean"], rtol=0, atol=1e-6)
    torch.testing.assert_close(last_a["actor/pg_loss"], last_b["actor/pg_loss"], rtol=0, atol=1e-5)


def test_shard_prompts_gives_each_rank_a_slice_of_every_mini_batch():
    records = list(range(8))
    assert shard_prompts(records, mini_batch=4, rank=0, world=2) == [0, 1, 4, 5]
    assert shard_prompts(records, mini_batch=4, rank=1, world=2) == [2, 3, 6, 7]
    assert shard_prompts(records, mini_batch=8, rank=0, world=1) == records


def test_val_only_validates_the_resumed_checkpoint_and_trains_nothing(tmp_path, tiny_model_dir, synthetic_parquet):
    """verl's trainer.val_only: one validation row of the checkpoint's weights, no step, no new checkpoint."""
    trained = run(make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, "trainer.total_training_steps=2"))
    metrics = tmp_path / "logs" / "metrics.jsonl"
    logged = len(metrics.read_text().splitlines())
    checkpoints = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    only = run(make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, "trainer.total_training_steps=4",
                        "trainer.val_only=true"))  # fmt: skip
    assert only.global_step == 2  # resumed, not trained
    rows = [json.loads(line) for line in metrics.read_text().splitlines()][logged:]
    assert len(rows) == 1 and rows[0]["step"] == 2 and "val-core/synthetic/arith/acc/mean@1" in rows[0]
    assert not any(k.startswith(("actor/", "timing_s/")) for k in rows[0])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == checkpoints
    base = run(make_cfg(tmp_path / "fresh", tiny_model_dir, synthetic_parquet, "trainer.val_only=true"))
    validated, fresh = only.model.state_dict(), base.model.state_dict()
    for name, weight in trained.model.state_dict().items():  # the checkpoint's weights were validated
        torch.testing.assert_close(validated[name], weight, rtol=0, atol=0)
    assert any(not torch.equal(fresh[name], validated[name]) for name in validated), "training moved the weights"
    with pytest.raises(ConfigError, match=r"trainer\.val_only=true needs data\.val_files"):
        make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, "trainer.val_only=true", "data.val_files=[]")
