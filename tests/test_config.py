"""Config loading: YAML + dotted overrides, strict validation with helpful messages."""

import re
import subprocess
import sys

import pytest
import yaml

from npu_rl.config import Config, ConfigError, load_config, parse_override, save_config

BASE = ["model.path=org/model", "data.train_files=[/d/train.parquet]"]  # a hub id: never looked up


def test_overrides_reach_typed_fields():
    cfg = load_config(None, [*BASE, "rollout.n=8", "actor.optim.lr=1e-6", "trainer.logger=[console,jsonl]"])
    assert cfg.rollout.n == 8
    assert cfg.actor.optim.lr == pytest.approx(1e-6) and isinstance(cfg.actor.optim.lr, float)
    assert cfg.trainer.logger == ["console", "jsonl"]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "org/m"}, "data": {"train_files": ["/t"]}, "rollout": {"n": 4}}))
    cfg = load_config(path, ["rollout.n=6", "actor.use_kl_loss=true"])
    assert cfg.rollout.n == 6 and cfg.actor.use_kl_loss is True and cfg.model.path == "org/m"


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout\.temprature'.*rollout\.temperature"):
        load_config(None, [*BASE, "rollout.temprature=0.7"])
    with pytest.raises(ConfigError, match=r"'trainr'.*did you mean 'trainer'"):
        load_config(None, [*BASE, "trainr.seed=3"])


def test_wrong_types_are_rejected_with_their_path():
    with pytest.raises(ConfigError, match=r"rollout\.n: expected an integer"):
        load_config(None, [*BASE, "rollout.n=many"])
    with pytest.raises(ConfigError, match=r"actor\.use_kl_loss: expected true/false"):
        load_config(None, [*BASE, "actor.use_kl_loss=3"])
    with pytest.raises(ConfigError, match=r"actor\.optim\.lr: expected a number"):
        load_config(None, [*BASE, "actor.optim.lr=fast"])


def test_choices_are_checked():
    with pytest.raises(ConfigError, match=r"actor\.kl_loss_type.*did you mean 'low_var_kl'"):
        load_config(None, [*BASE, "actor.kl_loss_type=low_var"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="multiple of"):
        load_config(None, [*BASE, "data.train_batch_size=6", "actor.ppo_mini_batch_size=4"])
    with pytest.raises(ConfigError, match=r"model\.path is required"):
        load_config(None, ["data.train_files=[/t]"])
    with pytest.raises(ConfigError, match=r"rollout\.n must be > 0, got 0"):
        load_config(None, [*BASE, "rollout.n=0"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        parse_override("rollout.n")
    assert parse_override("trainer.logger=console") == (["trainer", "logger"], "console")


def test_top_level_yaml_must_be_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, [*BASE, "rollout.n=3", "reward.functions=[{name: math, weight: 0.5}]"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg and isinstance(again, Config)
    assert again.reward.functions[0].weight == 0.5


def test_cli_rejects_bad_key_with_exit_code_2():
    proc = subprocess.run(
        [sys.executable, "-m", "npu_rl.train", *BASE, "rollout.nn=2"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "did you mean 'rollout.n'" in proc.stderr


def test_cli_help_lists_the_groups():
    proc = subprocess.run([sys.executable, "-m", "npu_rl.train", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for group in ("model:", "data:", "actor:", "ref:", "rollout:", "algorithm:", "reward:", "trainer:"):
        assert group in proc.stdout


def test_unknown_logger_is_rejected_before_anything_loads():
    with pytest.raises(ConfigError, match=r"trainer\.logger: unknown tracker 'tensorbord'.*did you mean 'tensorboard'"):
        load_config(None, [*BASE, "trainer.logger=[console,tensorbord]"])


# -- each group validates itself: ranges, finiteness, registries, the environment --------------------------------


def _float_keys() -> list[str]:
    from npu_rl.config.reference import groups

    return [k.key for g in groups() for k in g.keys if "float" in k.type and "[i]" not in k.key]


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan"])
def test_every_float_must_be_finite(key, value):
    override = f"{key}=[0.9, {value}]" if key.endswith("betas") else f"{key}={value}"
    with pytest.raises(ConfigError, match="^" + re.escape(key) + " must be a finite number"):
        load_config(None, [*BASE, override])


def test_float_keys_cover_the_ones_issue_16_found():
    assert {"actor.optim.lr", "rollout.temperature", "reward.timeout_s", "rollout.top_p"} <= set(_float_keys())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.val_batch_size=0", r"data\.val_batch_size must be > 0, got 0"),
        ("rollout.val_kwargs.n=0", r"rollout\.val_kwargs\.n must be > 0"),
        ("rollout.micro_batch_size=0", r"rollout\.micro_batch_size must be > 0"),
        (
            "rollout.log_prob_micro_batch_size_per_device=0",
            r"rollout\.log_prob_micro_batch_size_per_device must be > 0",
        ),
        ("ref.log_prob_micro_batch_size_per_device=-2", r"ref\.log_prob_micro_batch_size_per_device must be > 0"),
        ("actor.optim.lr=-1e-6", r"actor\.optim\.lr must be >= 0, got -1e-06"),
        ("reward.timeout_s=0", r"reward\.timeout_s must be > 0"),
        ("reward.num_workers=-1", r"reward\.num_workers must be >= 0"),
        ("rollout.top_p=0", r"rollout\.top_p must be \(0, 1\], got 0"),
        ("rollout.top_p=2", r"rollout\.top_p must be \(0, 1\], got 2"),
        ("rollout.val_kwargs.top_p=1.5", r"rollout\.val_kwargs\.top_p must be \(0, 1\]"),
        ("actor.optim.lr_warmup_steps_ratio=5", r"actor\.optim\.lr_warmup_steps_ratio must be \[0, 1\], got 5"),
        ("rollout.temperature=0", r"rollout\.temperature must be > 0"),
        ("rollout.val_kwargs.temperature=-1", r"rollout\.val_kwargs\.temperature must be >= 0"),
        ("rollout.gpu_memory_utilization=1.2", r"rollout\.gpu_memory_utilization must be \(0, 1\]"),
        ("actor.optim.betas=[0.9,1.0]", r"actor\.optim\.betas must be \[0, 1\), got 1\.0"),
        ("actor.optim.betas=[0.9]", r"actor\.optim\.betas must hold two numbers"),
        ("actor.clip_ratio_c=1", r"actor\.clip_ratio_c must be > 1"),
        ("actor.clip_ratio_low=1", r"actor\.clip_ratio_low must be \[0, 1\)"),
        ("actor.grad_clip=0", r"actor\.grad_clip must be > 0"),
        ("data.seed=-1", r"data\.seed must be >= 0"),
        ("trainer.total_epochs=0", r"trainer\.total_epochs must be > 0"),
        ("data.train_files=[]", r"data\.train_files is required"),
        ("actor.forward=shared", r"actor\.forward: 'shared' is not one of .*did you mean 'shared_prefix'"),
        ("rollout.decoder=fastest", r"rollout\.decoder: 'fastest' is not one of \['auto', 'plain', 'fast'\]"),
    ],
)
def test_bad_values_are_named_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*BASE, override])


def test_speed_path_choices_default_to_auto():
    cfg = load_config(None, [*BASE, "actor.forward=shared_prefix", "rollout.decoder=plain"])
    assert (cfg.actor.forward, cfg.rollout.decoder) == ("shared_prefix", "plain")
    assert (Config().actor.forward, Config().rollout.decoder) == ("auto", "auto")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algorithm.adv_estimator=grpoo", r"algorithm\.adv_estimator: unknown advantage estimator 'grpoo' \(did you "
         r"mean 'grpo'\?\); registered: grpo"),
        ("actor.policy_loss=vanila", r"actor\.policy_loss: unknown policy loss 'vanila'.*registered: vanilla"),
        ("actor.kl_loss_type=k4", r"actor\.kl_loss_type: unknown KL estimator 'k4'.*"
         r"registered: k1, kl, k2, mse, k3, low_var_kl"),
        ("algorithm.kl_penalty=low_var", r"algorithm\.kl_penalty: .*did you mean 'low_var_kl'"),
        ("actor.loss_agg_mode=token-avg", r"actor\.loss_agg_mode: unknown loss aggregation mode 'token-avg'.*"
         r"registered: token-mean, token-sum, seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm"),
        ("algorithm.kl_ctrl.type=pid", r"algorithm\.kl_ctrl\.type"),
        ("rollout.name=vlm", r"rollout\.name: unknown rollout backend 'vlm' \(did you mean 'vllm'\?\); "
         r"registered: hf, vllm"),
        ("reward.functions=[{name: maths}]", r"reward\.functions\[0\]\.name: unknown reward 'maths' \(did you mean "
         r"'math'\?\); registered: math, accuracy"),
    ],
)  # fmt: skip
def test_registry_backed_keys_list_the_registered_names(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*BASE, override])


def test_a_newly_registered_estimator_is_accepted_without_a_config_edit(monkeypatch):
    from npu_rl import core_algos
    from npu_rl.registry import Registry

    estimators = Registry("advantage estimator")
    estimators.add("grpo", core_algos.ADV_ESTIMATORS["grpo"])
    estimators.add("my_estimator", lambda inputs: (inputs.token_rewards, inputs.token_rewards))
    monkeypatch.setattr(core_algos, "ADV_ESTIMATORS", estimators)
    assert load_config(None, [*BASE, "algorithm.adv_estimator=my_estimator"]).algorithm.adv_estimator == "my_estimator"


def test_reward_term_with_a_file_is_not_checked_against_the_registry(tmp_path):
    user = tmp_path / "r.py"
    user.write_text("def my_score(*args):\n    return 1.0\n")
    cfg = load_config(None, [*BASE, f"reward.functions=[{{name: my_score, path: {user}}}]"])
    assert cfg.reward.functions[0].name == "my_score"
    with pytest.raises(ConfigError, match=r"reward\.functions\[0\]\.path: file .*missing\.py' does not exist"):
        load_config(None, [*BASE, f"reward.functions=[{{name: f, path: {tmp_path / 'missing.py'}}}]"])
    with pytest.raises(ConfigError, match=r"reward\.custom_function\.path: file"):
        load_config(None, [*BASE, f"reward.custom_function.path={tmp_path / 'missing.py'}"])


def test_resume_mode_is_auto_disable_or_an_existing_path(tmp_path):
    assert load_config(None, [*BASE, "trainer.resume_mode=disable"]).trainer.resume_mode == "disable"
    step = tmp_path / "global_step_3"
    step.mkdir()
    assert load_config(None, [*BASE, f"trainer.resume_mode={step}"]).trainer.resume_mode == str(step)
    with pytest.raises(ConfigError, match=r"trainer\.resume_mode: 'atuo' is not auto.*did you mean 'auto'\?"):
        load_config(None, [*BASE, "trainer.resume_mode=atuo"])
    with pytest.raises(ConfigError, match=r"trainer\.resume_mode: no such checkpoint folder '.*global_step_9'"):
        load_config(None, [*BASE, f"trainer.resume_mode={tmp_path / 'global_step_9'}"])


def test_single_sample_groups_warn(capsys):
    load_config(None, [*BASE, "rollout.n=1"])
    assert "warning: rollout.n=1 with the group-relative algorithm.adv_estimator=grpo" in capsys.readouterr().err
    load_config(None, [*BASE, "rollout.n=2"])
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("path", ["/no/such/model", "./no_such_model", "~/no_such_model_dir", "a/b/c", "outputs/mdl"])
def test_a_local_looking_model_path_must_exist(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()  # `outputs/mdl` is local because ./outputs exists
    with pytest.raises(ConfigError, match=rf"model\.path: '{path}' does not exist"):
        load_config(None, ["model.path=" + path, "data.train_files=[t]"])
    with pytest.raises(ConfigError, match=r"model\.tokenizer_path: .* does not exist"):
        load_config(None, [*BASE, "model.tokenizer_path=" + path])


def test_hub_ids_and_existing_folders_pass_without_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "models" / "m").mkdir(parents=True)
    for path in ("Qwen/Qwen2.5-0.5B-Instruct", "gpt2", "models/m", "./models/m", str(tmp_path / "models/m")):
        assert load_config(None, ["model.path=" + path, "data.train_files=[t]"]).model.path == path


def test_missing_tracker_package_is_an_error_unless_allowed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "swanlab" else real(name, *a))
    with pytest.raises(ConfigError, match=r"trainer\.logger: tracker 'swanlab' needs .*pip install swanlab"):
        load_config(None, [*BASE, "trainer.logger=[console,swanlab]"])
    cfg = load_config(None, [*BASE, "trainer.logger=[console,swanlab]", "trainer.allow_missing_logger=true"])
    assert cfg.trainer.logger == ["console", "swanlab"]
    assert load_config(None, [*BASE, "trainer.logger=[console,tensorboard]"])


def test_world_size_checks_use_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"actor\.ppo_mini_batch_size \(8\) must be divisible by the world size \(3"):
        load_config(None, BASE)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match=r"rollout\.tensor_parallel_size \(3\) must divide the world size \(4\)"):
        load_config(None, [*BASE, "rollout.name=vllm", "rollout.tensor_parallel_size=3"])
    assert load_config(None, [*BASE, "rollout.name=vllm", "rollout.tensor_parallel_size=2"])
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ConfigError, match=r"tensor_parallel_size=2 spans trainer ranks: launch with torchrun"):
        load_config(None, [*BASE, "rollout.name=vllm", "rollout.tensor_parallel_size=2"])


def test_a_group_validates_itself_alone():
    from npu_rl.config import RewardConfig, RolloutConfig

    with pytest.raises(ConfigError, match=r"^rollout\.top_p must be \(0, 1\], got 2"):
        RolloutConfig(top_p=2.0).validate("rollout")
    with pytest.raises(ConfigError, match=r"^timeout_s must be > 0"):
        RewardConfig(timeout_s=0.0).validate()
    RolloutConfig().validate("rollout")


def test_cli_config_error_writes_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "npu_rl.train", *BASE, "reward.timeout_s=0", "trainer.log_dir=logs"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "reward.timeout_s must be > 0" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# -- every key documented: --help and docs/config.md come from the schema ---------------------------------------


def test_every_key_has_a_description():
    from npu_rl.config.reference import groups

    keys = [k for g in groups() for k in g.keys]
    assert len(keys) > 90
    assert all(k.help and k.type and k.default for k in keys)


def test_docs_config_md_matches_the_generator():
    from pathlib import Path

    from npu_rl.config.reference import markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text(encoding="utf-8") == markdown(), (
        "docs/config.md is stale: python -m npu_rl.config --markdown > docs/config.md"
    )


def test_cli_help_describes_each_key():
    from npu_rl.config.reference import groups

    proc = subprocess.run([sys.executable, "-m", "npu_rl.train", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    out = proc.stdout
    assert "  rollout.name (str, default hf; allowed: hf | vllm)\n      generation backend" in out
    assert "  rollout.top_p (float, default 1.0; allowed: (0, 1])\n      nucleus sampling mass" in out
    assert "  actor.forward (str, default auto; allowed: auto | plain | shared_prefix | fused | packed)" in out
    trackers = "console | jsonl | tensorboard | swanlab | wandb"
    assert f"  trainer.logger (list[str], default [console]; allowed: {trackers})" in out
    for key in (k.key for g in groups() for k in g.keys):
        assert f"  {key} (" in out


def test_rollout_correction_accepts_verls_null_and_refuses_other_levels():
    """verl's rollout_correction.yaml sets `rollout_is: null` (off); token and sequence levels exist."""
    base = ["model.path=Qwen/Qwen2.5-0.5B-Instruct", "data.train_files=[x.parquet]"]
    cfg = load_config(None, [*base, "algorithm.rollout_correction.rollout_is=null"])
    assert cfg.algorithm.rollout_correction.rollout_is is None
    with pytest.raises(ConfigError, match="rollout_is: 'geometric' is not one of"):
        load_config(None, [*base, "algorithm.rollout_correction.rollout_is=geometric"])
