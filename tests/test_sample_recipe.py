"""The Ascend single-card GRPO sample, by the book: config values, script comments, reward preset,
prompt template, and the Ascend-safe environment decided in code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from npu_rl.ascend_env import prepare_vllm_env, without_expandable_segments
from npu_rl.config import load_config
from npu_rl.tools import preprocess_math
from reward import REGISTRY
from reward.presets import ascend_sample_math, step_score, tag_score

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "npu_rl" / "configs" / "qwen2_5_1_5b_grpo.yaml"
SCRIPT = ROOT / "run" / "qwen2_5_1_5b_grpo.sh"

# run_qwen2_5_1_5b_single.sh (cann-recipes-train llm_rl/qwen2_5/verl_npu_demo), in our key names.
SAMPLE = {
    "data.train_batch_size": 256,
    "data.max_prompt_length": 512,
    "data.filter_overlong_prompts": True,
    "rollout.max_new_tokens": 1024,
    "actor.optim.lr": 1e-6,
    "actor.optim.lr_warmup_steps": 10,
    "actor.optim.lr_scheduler": "constant",
    "actor.ppo_mini_batch_size": 256,
    "actor.ppo_micro_batch_size_per_device": 8,
    "actor.use_kl_loss": True,
    "actor.entropy_coeff": 0.0,
    "actor.kl_loss_coef": 0.001,
    "actor.kl_loss_type": "low_var_kl",
    "actor.fsdp.param_offload": False,
    "model.gradient_checkpointing": True,
    "rollout.name": "vllm",
    "rollout.n": 8,
    "rollout.gpu_memory_utilization": 0.8,
    "rollout.tensor_parallel_size": 1,
    "rollout.enforce_eager": True,
    "rollout.log_prob_micro_batch_size_per_device": 8,
    "rollout.free_cache_engine": True,
    "rollout.enable_chunked_prefill": False,
    "ref.log_prob_micro_batch_size_per_device": 8,
    "ref.param_offload": True,
    "algorithm.adv_estimator": "grpo",
    "algorithm.use_kl_in_reward": False,
    "trainer.logger": ["console", "tensorboard"],
    "trainer.project_name": "verl_grpo_example_math",
    "trainer.experiment_name": "qwen2_5_1_5b_math_single",
    "trainer.save_freq": 70,
    "trainer.test_freq": 10,
    "trainer.total_epochs": 5,
    "rollout.val_kwargs.temperature": 0.0,
    "rollout.val_kwargs.n": 1,
}


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("key", sorted(SAMPLE))
def test_config_has_the_sample_value(key):
    cfg = load_config(CONFIG)
    assert _get(cfg, key) == SAMPLE[key], key


def test_config_uses_the_sample_reward_preset():
    cfg = load_config(CONFIG)
    assert [f.name for f in cfg.reward.functions] == ["ascend_sample_math"]
    assert "ascend_sample_math" in REGISTRY


def test_script_lists_the_deliberate_differences_and_sets_the_sample_env():
    text = SCRIPT.read_text()
    assert "knowingly differs" in text
    for item in ("Ray", "system prompt", "math-verify", "use_remove_padding", "TASK_QUEUE_ENABLE"):
        assert item in text.split("set -euo pipefail")[0], item
    for var, value in {
        "HCCL_CONNECT_TIMEOUT": "360",
        "HCCL_EXEC_TIMEOUT": "360",
        "HCCL_IF_BASE_PORT": "64033",
        "VLLM_ASCEND_ENABLE_NZ": "0",
    }.items():
        assert re.search(rf'export {var}="\$\{{{var}:-{value}\}}"', text), var
    assert not re.search(r"^\s*export PYTORCH_NPU_ALLOC_CONF=.*expandable_segments:True", text, re.M)
    assert "--prompt-template ascend_sample" in text


def test_dockerfile_sources_cann_before_the_import_check_and_has_no_expandable_segments():
    text = (ROOT / "docker" / "Dockerfile.ascend").read_text()
    check = text[text.index('pip install -e ".[npu') :]
    check = check[: check.index("print(")]
    assert "ascend-toolkit/set_env.sh" in check
    assert "expandable_segments:True\n" not in text.replace("# No PYTORCH_NPU_ALLOC_CONF=expandable_segments:True", "")
    assert "VLLM_ASCEND_ENABLE_NZ=0" in text


# -- Ascend-safe environment -----------------------------------------------------------------


def test_sleep_mode_turns_expandable_segments_off_and_keeps_other_options():
    env = {"PYTORCH_NPU_ALLOC_CONF": "max_split_size_mb:64, expandable_segments:True", "OTHER": "x"}
    changed = prepare_vllm_env(True, "npu", env)
    assert env["PYTORCH_NPU_ALLOC_CONF"] == "max_split_size_mb:64"
    assert env["VLLM_ASCEND_ENABLE_NZ"] == "0"
    assert set(changed) == {"PYTORCH_NPU_ALLOC_CONF", "VLLM_ASCEND_ENABLE_NZ"}


def test_sleep_mode_removes_a_lone_option_and_the_cuda_variables():
    env = {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    prepare_vllm_env(True, "cuda", env)
    assert "PYTORCH_NPU_ALLOC_CONF" not in env and "PYTORCH_CUDA_ALLOC_CONF" not in env
    assert "VLLM_ASCEND_ENABLE_NZ" not in env  # only on Ascend


def test_without_sleep_mode_expandable_segments_stay_and_a_user_nz_setting_wins():
    env = {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True", "VLLM_ASCEND_ENABLE_NZ": "1"}
    assert prepare_vllm_env(False, "npu", env) == {}
    assert env == {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True", "VLLM_ASCEND_ENABLE_NZ": "1"}
    assert without_expandable_segments("expandable_segments:False") == "expandable_segments:False"


def test_the_vllm_rollout_calls_the_env_decision_before_building_the_engine():
    source = (ROOT / "npu_rl" / "rollout" / "vllm.py").read_text()
    assert source.index("prepare_vllm_env(self.sleep_enabled") < source.index("engine_args: dict")


# -- the reward preset -----------------------------------------------------------------------

STEPS = (
    "<think>\n1. Solve the equation x + 2 = 5.\n2. Subtract 2 from both sides: x = 3.\n3. Therefore x is 3.\n</think>\n"
)
FULL = STEPS + "<answer>\n\\boxed{3}\n</answer>"


@pytest.mark.parametrize("grader", ["builtin", "math_verify"])
def test_preset_tiers_and_nothing_unless_correct(grader):
    if grader == "math_verify":
        pytest.importorskip("math_verify")
    full = ascend_sample_math("lighteval/MATH", FULL, "3", grader=grader)
    assert full["acc"] and full["score"] == pytest.approx(1.0)
    assert full["tags"] == 1.0 and full["steps"] == 1.0
    wrong = ascend_sample_math("lighteval/MATH", FULL.replace("{3}", "{4}"), "3", grader=grader)
    assert wrong == {**wrong, "score": 0.0, "acc": False, "tags": 0.0, "steps": 0.0}
    bare = ascend_sample_math("lighteval/MATH", "The answer is $\\boxed{3}$.", "3", grader=grader)
    assert bare["score"] == pytest.approx(0.7)


def test_preset_weights_are_configurable_and_truncation_is_no_answer():
    out = ascend_sample_math("m", FULL, "3", correct_weight=1.0, tags_weight=0.0, steps_weight=0.5, grader="builtin")
    assert out["score"] == pytest.approx(1.5)
    assert ascend_sample_math("m", FULL, "3", {"truncated": True}, grader="builtin")["score"] == 0.0
    with pytest.raises(ValueError, match="grader"):
        ascend_sample_math("m", FULL, "3", grader="nope")


def test_tag_score_penalties_and_order():
    assert tag_score(FULL) == 1.0
    assert tag_score("intro " * 10 + FULL) == pytest.approx(1.0 - 0.005 * len(("intro " * 10).strip()))
    assert tag_score(FULL + " trailing" * 100) == pytest.approx(0.5)  # the penalty is capped at half
    assert tag_score("<answer>\nx\n</answer>\n<think>\ny\n</think>\n") == 0.0  # answer before thinking
    assert tag_score("no tags at all") == 0.0


def test_step_score_levels():
    assert step_score(FULL) == 1.0
    two = "<think>\n1. Calculate 2 + 2 here.\n2. Write the result.\n</think>"
    assert step_score(two) == 0.5
    unordered = "<think>\n2. Calculate it now.\n3. Solve for it.\n</think>"
    assert step_score(unordered) == 0.0
    assert step_score("1. Solve it now.\n2. Thus done here.\n3. Sum it up.") == 0.0  # outside <think>


def test_preset_through_the_reward_manager_with_kwargs(tmp_path):
    from npu_rl.config import RewardConfig, WeightedReward
    from npu_rl.reward_manager import RewardItem, RewardManager

    cfg = RewardConfig(
        functions=[WeightedReward(name="ascend_sample_math", kwargs={"grader": "builtin", "correct_weight": 2.0})],
        num_workers=0,
    )
    with RewardManager(cfg) as manager:
        batch = manager.score([RewardItem("lighteval/MATH", FULL, "3"), RewardItem("lighteval/MATH", FULL, "5")])
    assert batch.scores == pytest.approx([2.3, 0.0])
    assert batch.acc == [True, False]
    assert batch.components["tags"] == [1.0, 0.0]


# -- the prompt template ---------------------------------------------------------------------


def test_preprocess_math_ascend_sample_template(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps({"problem": "What is $1+2$?", "solution": "It is $\\boxed{3}$."}) + "\n")
    (tmp_path / "test.jsonl").write_text(src.read_text())
    out = preprocess_math.convert([str(src), str(tmp_path / "test.jsonl")], tmp_path / "out", template="ascend_sample")
    prompt = pq.read_table(out["train"]).to_pylist()[0]["prompt"]
    assert [m["role"] for m in prompt] == ["system", "user"]
    assert "<think> tags" in prompt[0]["content"] and "\\boxed{ answer here }" in prompt[0]["content"]
    assert prompt[1]["content"].startswith("What is $1+2$?")
    plain = preprocess_math.convert([str(src), str(tmp_path / "test.jsonl")], tmp_path / "plain")
    assert [m["role"] for m in pq.read_table(plain["train"]).to_pylist()[0]["prompt"]] == ["user"]


# -- transformers releases before `dtype=` -----------------------------------------------------


def test_from_pretrained_dtype_keyword_follows_the_transformers_release(monkeypatch):
    import torch
    import transformers

    from npu_rl.model import dtype_kwarg

    monkeypatch.setattr(transformers, "__version__", "4.51.3")
    assert dtype_kwarg(torch.bfloat16) == {"torch_dtype": torch.bfloat16}
    monkeypatch.setattr(transformers, "__version__", "4.56.0")
    assert dtype_kwarg(torch.bfloat16) == {"dtype": torch.bfloat16}
    monkeypatch.setattr(transformers, "__version__", "5.19.0.dev0")
    assert dtype_kwarg(torch.float32) == {"dtype": torch.float32}
