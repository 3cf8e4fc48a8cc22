"""Config loading: YAML + dotted overrides, strict validation with helpful messages."""

import subprocess
import sys

import pytest
import yaml

from npu_rl.config import Config, ConfigError, load_config, parse_override, save_config

BASE = ["model.path=/m", "data.train_files=[/d/train.parquet]"]


def test_overrides_reach_typed_fields():
    cfg = load_config(None, [*BASE, "rollout.n=8", "actor.optim.lr=1e-6", "trainer.logger=[console,jsonl]"])
    assert cfg.rollout.n == 8
    assert cfg.actor.optim.lr == pytest.approx(1e-6) and isinstance(cfg.actor.optim.lr, float)
    assert cfg.trainer.logger == ["console", "jsonl"]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "/m"}, "data": {"train_files": ["/t"]}, "rollout": {"n": 4}}))
    cfg = load_config(path, ["rollout.n=6", "actor.use_kl_loss=true"])
    assert cfg.rollout.n == 6 and cfg.actor.use_kl_loss is True and cfg.model.path == "/m"


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
    with pytest.raises(ConfigError, match=r"rollout\.n must be positive"):
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
