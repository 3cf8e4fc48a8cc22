"""verl users move in: verl's keys load as aliases (one table feeds the loader and the docs)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from npu_rl import verl_compat
from npu_rl.agent_tools.interaction import AnswerFeedback, load_interactions
from npu_rl.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent

# The shape of verl's examples/grpo_trainer GSM8K GRPO command (our own list of its keys and values),
# as the shell hands it over: quotes removed by shlex, exactly like bash would.
VERL_GSM8K_GRPO = """
    algorithm.adv_estimator=grpo
    data.train_files=data/gsm8k/train.parquet
    data.val_files=data/gsm8k/test.parquet
    data.train_batch_size=1024
    data.max_prompt_length=512
    data.max_response_length=1024
    data.filter_overlong_prompts=True
    data.truncation='error'
    actor_rollout_ref.model.path=Qwen/Qwen2-7B-Instruct
    actor_rollout_ref.actor.optim.lr=1e-6
    actor_rollout_ref.model.use_remove_padding=True
    actor_rollout_ref.actor.ppo_mini_batch_size=256
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=40
    actor_rollout_ref.actor.use_kl_loss=True
    actor_rollout_ref.actor.kl_loss_coef=0.001
    actor_rollout_ref.actor.kl_loss_type=low_var_kl
    actor_rollout_ref.actor.entropy_coeff=0
    actor_rollout_ref.model.enable_gradient_checkpointing=True
    actor_rollout_ref.actor.fsdp_config.param_offload=False
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=False
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=40
    actor_rollout_ref.rollout.tensor_model_parallel_size=2
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6
    actor_rollout_ref.rollout.n=5
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=40
    actor_rollout_ref.ref.fsdp_config.param_offload=True
    algorithm.use_kl_in_reward=False
    trainer.critic_warmup=0
    trainer.logger='["console","tensorboard"]'
    trainer.project_name='verl_grpo_example_gsm8k'
    trainer.experiment_name='qwen2_7b_function_rm'
    trainer.n_gpus_per_node=8
    trainer.nnodes=1
    trainer.save_freq=20
    trainer.test_freq=5
    trainer.total_epochs=15
"""


def test_a_verl_grpo_example_command_line_loads(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "8")
    cfg = load_config(None, shlex.split(VERL_GSM8K_GRPO))
    assert cfg.model.path == "Qwen/Qwen2-7B-Instruct"
    assert cfg.data.train_files == ["data/gsm8k/train.parquet"] and cfg.data.train_batch_size == 1024
    assert cfg.rollout.max_new_tokens == 1024 and cfg.rollout.n == 5 and cfg.rollout.name == "vllm"
    assert cfg.rollout.tensor_parallel_size == 2 and cfg.rollout.gpu_memory_utilization == 0.6
    assert cfg.rollout.log_prob_micro_batch_size_per_device == 40
    assert cfg.actor.ppo_mini_batch_size == 256 and cfg.actor.ppo_micro_batch_size_per_device == 40
    assert cfg.actor.use_kl_loss and cfg.actor.kl_loss_type == "low_var_kl" and cfg.actor.kl_loss_coef == 0.001
    assert cfg.model.gradient_checkpointing and cfg.ref.param_offload and not cfg.actor.fsdp.param_offload
    assert cfg.ref.log_prob_micro_batch_size_per_device == 40
    assert cfg.trainer.logger == ["console", "tensorboard"] and cfg.trainer.total_epochs == 15
    err = capsys.readouterr().err
    assert "[npu_rl] verl key actor_rollout_ref.rollout.n -> rollout.n\n" in err  # one line naming the native key
    assert "verl key actor_rollout_ref.model.use_remove_padding ignored" in err


# verl's minimal DAPO run (tests/special_e2e/run_dapo.sh) with its shell variables filled in, 8 GPUs
VERL_DAPO = """
    data.train_files=train.parquet data.val_files=test.parquet reward_model.reward_manager=dapo
    algorithm.adv_estimator=grpo algorithm.use_kl_in_reward=False algorithm.kl_ctrl.kl_coef=0.0
    actor_rollout_ref.actor.use_kl_loss=False actor_rollout_ref.actor.kl_loss_coef=0.0
    actor_rollout_ref.actor.clip_ratio_low=0.2 actor_rollout_ref.actor.clip_ratio_high=0.28
    data.max_prompt_length=1024 data.max_response_length=2048 reward_model.overlong_buffer.enable=True
    reward_model.overlong_buffer.len=128 reward_model.overlong_buffer.penalty_factor=1.0
    actor_rollout_ref.actor.loss_agg_mode=token-mean data.train_batch_size=16 data.gen_batch_size=64
    algorithm.filter_groups.enable=True algorithm.filter_groups.metric=seq_reward
    algorithm.filter_groups.max_num_gen_batches=10 actor_rollout_ref.model.path=m
    actor_rollout_ref.actor.optim.lr=1e-6 actor_rollout_ref.model.use_remove_padding=True
    actor_rollout_ref.model.use_fused_kernels=True actor_rollout_ref.rollout.n=4
    actor_rollout_ref.actor.ppo_mini_batch_size=8 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2
"""


def test_verls_dapo_command_line_loads_with_its_generation_batch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    cfg = load_config(None, shlex.split(VERL_DAPO))
    assert (cfg.data.train_batch_size, cfg.data.gen_batch_size, cfg.data.generation_batch_size) == (16, 64, 64)
    fg = cfg.algorithm.filter_groups
    assert (fg.enable, fg.max_num_gen_batches) == (True, 10) and cfg.reward.overlong_buffer.len == 128
    assert (cfg.actor.clip_ratio_low, cfg.actor.clip_ratio_high) == (0.2, 0.28)


# verl keys of the features built since the first table (LoRA, token budgets, offload, multi-turn,
# DAPO's reward manager and overlong buffer, PPO's critic), as verl's recipes spell them.
VERL_LORA_DAPO_TOOLS = """
    model.path=m data.train_files=[a] data.max_response_length=2048
    actor_rollout_ref.model.lora_rank=32 actor_rollout_ref.model.lora_alpha=64
    actor_rollout_ref.model.target_modules=all-linear actor_rollout_ref.model.use_remove_padding=True
    actor_rollout_ref.actor.use_dynamic_bsz=True actor_rollout_ref.actor.ppo_max_token_len_per_gpu=12000
    actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=24000
    actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True
    actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=20000
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=True actor_rollout_ref.actor.fsdp_config.offload_policy=True
    actor_rollout_ref.rollout.multi_turn.enable=True actor_rollout_ref.rollout.multi_turn.tool_config_path=tools_gsm8k
    actor_rollout_ref.rollout.multi_turn.max_assistant_turns=null
    actor_rollout_ref.rollout.multi_turn.max_parallel_calls=2
    actor_rollout_ref.rollout.multi_turn.max_tool_response_length=128
    actor_rollout_ref.rollout.multi_turn.format=hermes
    algorithm.filter_groups.enable=True algorithm.filter_groups.metric=acc
    algorithm.filter_groups.max_num_gen_batches=10
    reward_model.reward_manager=dapo
    +reward_model.reward_kwargs.overlong_buffer_cfg.enable=True +reward_model.reward_kwargs.overlong_buffer_cfg.len=512
    +reward_model.reward_kwargs.overlong_buffer_cfg.penalty_factor=0.5
    +reward_model.reward_kwargs.overlong_buffer_cfg.log=False
    +reward_model.reward_kwargs.max_resp_len=2048
    algorithm.adv_estimator=gae algorithm.gamma=1.0 algorithm.lam=0.95 trainer.critic_warmup=2
    critic.optim.lr=1e-5 critic.ppo_micro_batch_size_per_gpu=4 critic.cliprange_value=0.2
    critic.ppo_mini_batch_size=256 critic.model.enable_gradient_checkpointing=True
    critic.use_dynamic_bsz=True critic.ppo_max_token_len_per_gpu=30000 critic.forward_max_token_len_per_gpu=40000
    critic.forward_micro_batch_size_per_gpu=16 critic.model.use_remove_padding=True
    actor_rollout_ref.model.use_fused_kernels=True
    actor_rollout_ref.model.enable_gradient_checkpointing=True actor_rollout_ref.model.enable_activation_offload=True
    critic.model.enable_activation_offload=True
"""


def test_verl_keys_of_lora_token_budgets_offload_tools_dapo_and_critic_reach_their_features():
    pytest.importorskip("peft")
    cfg = load_config(None, shlex.split(VERL_LORA_DAPO_TOOLS))
    assert (cfg.actor.lora.rank, cfg.actor.lora.alpha, cfg.actor.lora.target_modules) == (32, 64, ["all-linear"])
    assert cfg.actor.use_dynamic_bsz and cfg.actor.ppo_max_token_len_per_device == 12000
    assert cfg.ref.log_prob_use_dynamic_bsz and cfg.ref.log_prob_max_token_len_per_device == 24000
    assert cfg.rollout.log_prob_use_dynamic_bsz and cfg.rollout.log_prob_max_token_len_per_device == 20000
    assert cfg.actor.fsdp.optimizer_offload and cfg.actor.fsdp.param_offload
    mt = cfg.rollout.multi_turn
    assert mt.enable and mt.tool_config_path.endswith("tools_gsm8k.yaml")
    assert (mt.max_assistant_turns, mt.max_parallel_calls, mt.max_tool_response_tokens) == (5, 2, 128)
    fg = cfg.algorithm.filter_groups
    assert (fg.enable, fg.metric, fg.max_num_gen_batches) == (True, "acc", 10)
    ob = cfg.reward.overlong_buffer
    assert (ob.enable, ob.len, ob.penalty_factor) == (True, 512, 0.5)
    assert (cfg.algorithm.adv_estimator, cfg.algorithm.lam, cfg.trainer.critic_warmup) == ("gae", 0.95, 2)
    assert (cfg.critic.optim.lr, cfg.critic.ppo_micro_batch_size_per_device, cfg.critic.cliprange_value) == (
        1e-5,
        4,
        0.2,
    )
    assert cfg.critic.use_dynamic_bsz and cfg.critic.forward_micro_batch_size_per_device == 16
    assert cfg.actor.head_chunk_tokens == 512  # verl's fused linear-for-PPO chunk
    assert cfg.model.gradient_checkpointing and cfg.model.activation_offload  # the critic follows both
    with pytest.raises(ConfigError, match=r"model\.activation_offload moves .* set model\.gradient_checkpointing=true"):
        load_config(None, ["model.path=m", "data.train_files=[a]", "model.activation_offload=true"])
    with pytest.raises(ConfigError, match=r"critic\.ppo_micro_batch_size' has no equivalent.*_per_gpu"):
        load_config(None, ["model.path=m", "data.train_files=[a]", "critic.ppo_micro_batch_size=8"])
    budgets = cfg.token_budgets()
    assert (budgets["critic.ppo_max_token_len_per_device"], budgets["critic.forward_max_token_len_per_device"]) == (
        30000,
        40000,
    )
    # newer verl keeps the reward manager and its kwargs under `reward.`, beside npu_rl's own reward keys
    newer = load_config(None, ["model.path=m", "data.train_files=[a]", "reward.reward_manager.name=dapo",
                               "+reward.reward_kwargs.overlong_buffer_cfg.enable=True",
                               "+reward.reward_kwargs.overlong_buffer_cfg.len=64"])  # fmt: skip
    assert (newer.reward.overlong_buffer.enable, newer.reward.overlong_buffer.len) == (True, 64)
    cut = load_config(None, ["model.path=m", "data.train_files=[a]", "data.filter_overlong_prompts=False",
                             "data.truncation=middle", "actor_rollout_ref.actor.fsdp_config.fsdp_size=8"])  # fmt: skip
    assert (cut.data.filter_overlong_prompts, cut.data.truncation, cut.actor.fsdp.fsdp_size) == (False, "middle", 8)
    with pytest.raises(ConfigError, match=r"multi_turn\.interaction_config_path needs rollout\.multi_turn\.enable"):
        load_config(None, ["model.path=m", "data.train_files=[a]",
                           "actor_rollout_ref.rollout.multi_turn.interaction_config_path=x.yaml"])  # fmt: skip


def test_world_size_keys_answer_with_the_torchrun_command(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match=r"single process.*torchrun --nproc_per_node 8 -m npu_rl.train"):
        load_config(None, shlex.split(VERL_GSM8K_GRPO))
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=4.*torchrun --nnodes 2 .*--nproc_per_node 4"):
        load_config(None, ["model.path=m", "data.train_files=[a]", "trainer.n_gpus_per_node=4", "trainer.nnodes=2"])


def test_keys_with_no_equivalent_say_so_not_did_you_mean():
    base = ["model.path=m", "data.train_files=[a]"]
    with pytest.raises(ConfigError, match=r"'actor_rollout_ref\.actor\.shuffle=True' has no equivalent"):
        load_config(None, [*base, "actor_rollout_ref.actor.shuffle=True"])
    with pytest.raises(ConfigError, match=r"'actor_rollout_ref\.rollout\.sharding_manager\.x' has no equivalent"):
        load_config(None, [*base, "actor_rollout_ref.rollout.sharding_manager.x=1"])
    with pytest.raises(ConfigError, match=r"'data\.custom_cls\.path='my\.py'' has no equivalent"):
        load_config(None, [*base, "data.custom_cls.path=my.py"])
    load_config(None, [*base, "data.custom_cls.path=null", "reward_model.model.path=rm"])  # verl's unused defaults
    with pytest.raises(ConfigError, match="TENSORBOARD_DIR"):
        load_config(None, [*base, "+trainer.tensorboard_dir=x"])
    with pytest.raises(ConfigError, match="did you mean"):  # a typo of a native key still gets a suggestion
        load_config(None, [*base, "rollout.temprature=1.0"])


def test_precedence_follows_the_command_line_whatever_the_spelling(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model: {path: m}\ndata: {train_files: [a]}\nrollout: {n: 3}\n")
    assert load_config(yaml_file, ["actor_rollout_ref.rollout.n=6"]).rollout.n == 6
    assert load_config(yaml_file, ["actor_rollout_ref.rollout.n=6", "rollout.n=7"]).rollout.n == 7
    assert load_config(yaml_file, ["rollout.n=7", "actor_rollout_ref.rollout.n=6"]).rollout.n == 6
    both = tmp_path / "both.yaml"
    both.write_text(
        "model: {path: m}\ndata: {train_files: [a]}\nrollout: {n: 3}\nactor_rollout_ref: {rollout: {n: 4}}\n"
    )
    with pytest.raises(ConfigError, match=r"both set rollout\.n"):
        load_config(both)


def test_clip_ratio_sets_both_bounds_unless_they_are_given():
    base = ["model.path=m", "data.train_files=[a]"]
    cfg = load_config(None, [*base, "actor_rollout_ref.actor.clip_ratio=0.25"])
    assert (cfg.actor.clip_ratio_low, cfg.actor.clip_ratio_high) == (0.25, 0.25)
    cfg = load_config(
        None, [*base, "actor_rollout_ref.actor.clip_ratio_high=0.28", "actor_rollout_ref.actor.clip_ratio=0.25"]
    )
    assert (cfg.actor.clip_ratio_low, cfg.actor.clip_ratio_high) == (0.25, 0.28)


def test_special_keys_convert_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the reward file and the checkpoint folder must exist
    (tmp_path / "r.py").write_text("def compute_score(**kw):\n    return 0.0\n")
    (tmp_path / "ckpt" / "global_step_5").mkdir(parents=True)
    base = ["model.path=m", "data.train_files=[a]"]
    cfg = load_config(
        None,
        [
            *base,
            "actor_rollout_ref.rollout.val_kwargs.do_sample=False",
            "trainer.resume_mode=resume_path",
            "trainer.resume_from_path=ckpt/global_step_5",
            "actor_rollout_ref.actor.optim.warmup_style=cosine",
            "custom_reward_function.path=r.py",
            "custom_reward_function.reward_kwargs={scale: 2}",
            "algorithm.kl_ctrl.kl_coef=0.01",
            "trainer.max_actor_ckpt_to_keep=2",
        ],
    )
    assert cfg.rollout.val_kwargs.temperature == 0.0
    assert cfg.trainer.resume_mode == "ckpt/global_step_5"
    assert cfg.actor.optim.lr_scheduler == "cosine"
    assert cfg.reward.custom_function.path == "r.py" and cfg.reward.custom_function.reward_kwargs == {"scale": 2}
    assert cfg.algorithm.kl_coef == 0.01 and cfg.trainer.max_ckpt_to_keep == 2


def test_per_gpu_spelling_of_a_native_key():
    cfg = load_config(None, ["model.path=m", "data.train_files=[a]", "actor.ppo_micro_batch_size_per_gpu=3"])
    assert cfg.actor.ppo_micro_batch_size_per_device == 3


def test_interpolation_is_resolved_or_rejected(tmp_path, monkeypatch):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        "model: {path: m}\n"
        "data: {train_files: [a], max_prompt_length: 300, max_response_length: 700}\n"
        "actor_rollout_ref:\n"
        "  actor: {ppo_micro_batch_size_per_gpu: 4}\n"
        "  rollout: {log_prob_micro_batch_size_per_gpu: '${actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu}'}\n"
        "  ref: {log_prob_micro_batch_size_per_gpu: '${rollout.log_prob_micro_batch_size_per_device}'}\n"
        "trainer: {experiment_name: 'run_${data.max_response_length}_${oc.env:NPU_RL_TEST_TAG,none}'}\n"
    )
    monkeypatch.setenv("NPU_RL_TEST_TAG", "x1")
    cfg = load_config(yaml_file)
    assert cfg.rollout.log_prob_micro_batch_size_per_device == 4  # `${..}` alone keeps the int type
    assert cfg.ref.log_prob_micro_batch_size_per_device == 4  # chained through a native key
    assert cfg.trainer.experiment_name == "run_700_x1"
    monkeypatch.delenv("NPU_RL_TEST_TAG")
    assert load_config(yaml_file).trainer.experiment_name == "run_700_none"
    base = ["model.path=m", "data.train_files=[a]"]
    assert load_config(None, [*base, "rollout.n=${data.train_batch_size}"]).rollout.n == 8  # a default
    assert (
        load_config(None, [*base, "trainer.experiment_name=${oc.select:no.such.key,b}"]).trainer.experiment_name == "b"
    )
    for bad, message in (
        ("trainer.experiment_name=${eval:1+1}", "only"),
        ("trainer.experiment_name=${nope.key}", "no such config key"),
        ("rollout.n=${rollout.n}", "cycle"),
        ("trainer.experiment_name=${oc.env:NPU_RL_SURELY_UNSET}", "not set"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [*base, bad])


def test_migration_doc_is_generated_from_the_same_table():
    doc = (ROOT / "docs" / "verl_migration.md").read_text()
    start, end = "<!-- generated: python -m npu_rl.verl_compat -->\n", "<!-- end generated -->"
    assert start in doc and end in doc
    assert doc.split(start, 1)[1].split(end, 1)[0] == verl_compat.markdown_table()


def test_verl_vllm_engine_keys_reach_the_engine_settings(tmp_path):
    pytest.importorskip("vllm")  # engine_kwargs names are checked against the installed vLLM
    base = ["model.path=m", "data.train_files=[a]", "actor_rollout_ref.rollout.name=vllm"]
    cfg = load_config(None, [*base, "actor_rollout_ref.rollout.enable_chunked_prefill=False",
                             "actor_rollout_ref.rollout.max_num_batched_tokens=8192",
                             "+actor_rollout_ref.rollout.engine_kwargs.vllm.max_logprobs=5"])  # fmt: skip
    assert (cfg.rollout.enable_chunked_prefill, cfg.rollout.max_num_batched_tokens) == (False, 8192)
    assert cfg.rollout.engine_kwargs == {"max_logprobs": 5}
    recipe = tmp_path / "verl.yaml"  # verl's layout: one mapping per engine
    recipe.write_text(
        "actor_rollout_ref:\n  rollout:\n    engine_kwargs:\n      vllm: {max_logprobs: 3}\n"
        "      sglang: {attention_backend: fa3}\n"
    )
    assert load_config(recipe, base).rollout.engine_kwargs == {"max_logprobs": 3}


def test_every_alias_target_is_a_native_key():
    compat = verl_compat._Compat()
    for rule in verl_compat.RULES:
        if rule.kind == verl_compat.ALIAS:  # `x.*` fills the mapping-valued key x
            assert rule.native.removesuffix(".*") in compat.leaves, rule
        for part in re.split(r",\s*", rule.native) if rule.kind == verl_compat.SPECIAL else ():
            assert part in compat.leaves, rule


def test_verl_interaction_keys_reach_the_simulated_user(tmp_path):
    path = tmp_path / "interaction.yaml"
    path.write_text("interaction:\n  - name: gsm8k\n    class_name: gsm8k\n")
    cfg = load_config(None, ["model.path=m", "data.train_files=[a]",
                             "actor_rollout_ref.rollout.multi_turn.enable=True",
                             f"actor_rollout_ref.rollout.multi_turn.interaction_config_path={path}",
                             "actor_rollout_ref.rollout.multi_turn.max_user_turns=2"])  # fmt: skip
    mt = cfg.rollout.multi_turn
    assert (mt.enable, mt.interaction_config_path, mt.max_user_turns, mt.tool_config_path) == (True, str(path), 2, None)
    packaged = load_config(None, ["model.path=m", "data.train_files=[a]", "rollout.multi_turn.enable=true",
                                  "rollout.multi_turn.interaction_config_path=interaction_gsm8k"])  # fmt: skip
    interactions = load_interactions(packaged.rollout.multi_turn.interaction_config_path)
    assert isinstance(interactions["gsm8k"], AnswerFeedback)  # the packaged GSM8K simulated user
    with pytest.raises(ConfigError, match=r"interaction_config_path.*does not exist|not found|no such"):
        load_config(None, ["model.path=m", "data.train_files=[a]", "rollout.multi_turn.enable=true",
                           f"rollout.multi_turn.interaction_config_path={tmp_path / 'missing.yaml'}"])  # fmt: skip
