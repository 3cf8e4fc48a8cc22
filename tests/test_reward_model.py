"""A discriminative reward model as a reward term (verl's reward_model with a model path): its score is
the classifier's output at the last token, it adds to rule-based terms with its weight, verl's keys map
to it, and a run trains and validates with it."""

from __future__ import annotations

import json

import pytest
import torch
from test_algorithms_e2e import TWO_TERMS, _train_rows
from test_trainer import make_cfg, run
from transformers import AutoConfig, Qwen2ForSequenceClassification

from npu_rl.config import ConfigError, RewardConfig, WeightedReward, load_config
from npu_rl.config.objective import RewardModelConfig
from npu_rl.device import Accelerator
from npu_rl.reward_manager import RewardItem, RewardManager
from npu_rl.reward_model import RewardModel

PROMPTS = [[{"role": "user", "content": "What is 2 + 2?"}], "Plain prompt: 3 * 3?", [{"role": "user", "content": "x"}]]
RESPONSES = ["The answer is 4.", "It is 9, since three threes make nine.", ""]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """A sequence-classification checkpoint (one label), as reward models such as Skywork-Reward ship."""
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_labels, config.pad_token_id = 1, tiny_tokenizer.pad_token_id
    torch.manual_seed(0)
    model = Qwen2ForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("reward_model")
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _direct(folder, scorer: RewardModel, prompt, response, max_length: int = 10_000) -> float:
    """The checkpoint's own sequence-classification forward on the one unpadded input."""
    model = Qwen2ForSequenceClassification.from_pretrained(folder).eval()
    ids = scorer.tokenizer(scorer.render(prompt, response), add_special_tokens=False)["input_ids"][:max_length]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_scores_are_the_checkpoints_own_outputs_in_padded_micro_batches(reward_model_dir):
    scorer = RewardModel(RewardModelConfig(path=str(reward_model_dir), micro_batch_size=2), Accelerator("cpu"))
    scores = scorer.score(PROMPTS, RESPONSES)
    expected = [_direct(reward_model_dir, scorer, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    # padded micro-batches against one unpadded forward: measured 4.5e-8 (AVX-512), 1.5e-8 (AVX2 kernels)
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected), atol=1e-5, rtol=0)
    assert len(set(scores)) == 3
    cut = RewardModel(RewardModelConfig(path=str(reward_model_dir), max_length=6), Accelerator("cpu"))
    truncated = cut.score(PROMPTS[1:2], RESPONSES[1:2])[0]  # cut from the right, as verl
    expected_cut = _direct(reward_model_dir, cut, PROMPTS[1], RESPONSES[1], max_length=6)
    torch.testing.assert_close(torch.tensor(truncated), torch.tensor(expected_cut), atol=1e-5, rtol=0)


def test_a_language_model_folder_is_refused_not_given_a_random_head(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"no classification head .*score\.weight"):
        RewardModel(RewardModelConfig(path=str(tiny_model_dir)), Accelerator("cpu"))


def test_hybrid_reward_adds_the_model_term_with_its_weight(reward_model_dir, tmp_path):
    rewards = tmp_path / "two_terms.py"
    rewards.write_text(TWO_TERMS)
    scorer = RewardModel(RewardModelConfig(path=str(reward_model_dir)), Accelerator("cpu"))
    model_scores = scorer.score(PROMPTS, RESPONSES)
    cfg = RewardConfig(
        num_workers=1,
        functions=[WeightedReward(name="reward_model", weight=0.5), WeightedReward(name="digits", path=str(rewards))],
        model=RewardModelConfig(path=str(reward_model_dir)),
    )
    items = [RewardItem("s", r, "4", prompt=p) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    with RewardManager(cfg, model=scorer) as manager:
        batch = manager.score(items)
    digits = [sum(ch.isdigit() for ch in r) / max(1, len(r)) for r in RESPONSES]
    assert batch.scores == pytest.approx([d + 0.5 * m for d, m in zip(digits, model_scores, strict=True)])
    assert batch.components["reward_model"] == pytest.approx(model_scores) and batch.components["digits"] == digits
    assert batch.terms == [pytest.approx([d, m]) for d, m in zip(digits, model_scores, strict=True)]
    assert batch.term_weights == [1.0, 0.5]  # the model's term comes last
    alone = RewardConfig(num_workers=0, functions=[WeightedReward(name="reward_model")], model=cfg.model)
    batch = RewardManager(alone, model=scorer).score(items)
    assert batch.scores == pytest.approx(model_scores) and batch.acc == [None] * 3  # no rule term, no verdict


def test_verl_keys_map_to_the_reward_model_term(reward_model_dir, tiny_model_dir, tmp_path):
    base = [f"model.path={tiny_model_dir}", f"data.train_files=[{tmp_path / 'x.parquet'}]"]
    cfg = load_config(
        None,
        [*base, "reward_model.enable=True", f"reward_model.model.path={reward_model_dir}",
         "reward_model.micro_batch_size_per_gpu=4", "reward_model.max_length=1024"],
    )  # fmt: skip
    assert [f.name for f in cfg.reward.functions] == ["reward_model"]
    assert (cfg.reward.model.path, cfg.reward.model.micro_batch_size, cfg.reward.model.max_length) == (
        str(reward_model_dir), 4, 1024,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"reward\.model\.path is not set"):
        load_config(None, [*base, "reward.functions=[{name: reward_model}]"])
    mine = tmp_path / "mine.py"
    mine.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.0\n")
    with pytest.raises(ConfigError, match="list both"):  # verl's hybrid: say how to write it here
        load_config(None, [*base, "reward_model.enable=True", f"custom_reward_function.path={mine}"])


def test_a_run_trains_and_validates_with_a_hybrid_reward(tmp_path, tiny_model_dir, synthetic_parquet, reward_model_dir):
    rewards = tmp_path / "two_terms.py"
    rewards.write_text(TWO_TERMS)
    run(
        make_cfg(
            tmp_path, tiny_model_dir, synthetic_parquet, "trainer.total_training_steps=2", "trainer.test_freq=2",
            "trainer.save_freq=0", "reward.custom_function.path=null", f"reward.model.path={reward_model_dir}",
            f"reward.functions=[{{name: digits, path: {rewards}}}, {{name: reward_model, weight: 0.1}}]",
        )
    )  # fmt: skip
    rows = _train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and all(r["actor/grad_norm"] > 0 for r in rows)
    assert all("reward/reward_model/mean" in r and "reward/digits/mean" in r for r in rows)
    logged = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("val-core/") for r in logged for k in r), "validation scored with the same reward"
