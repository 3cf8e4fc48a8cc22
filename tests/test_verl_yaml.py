"""verl's YAML files load: Hydra recipes (defaults list, hydra: block), verl's references between keys
(relative, oc.select) and verl's null for an unset key. The files are written here in verl's shapes."""

from __future__ import annotations

import pytest

from npu_rl.config import ConfigError, load_config

BASE = ["model.path=m", "data.train_files=[a]"]

RECIPE = """
hydra:
  searchpath:
    - file://verl/trainer/config
defaults:
  - ppo_trainer
  - _self_
data:
  max_prompt_length: 1024
  max_response_length: 2048
  train_batch_size: 64
actor_rollout_ref:
  hybrid_engine: True
  rollout:
    n: 4
"""


def test_a_verl_recipe_loads_with_npu_rls_defaults_for_verls_own(tmp_path, capsys):
    recipe = tmp_path / "gsm8k_grpo.yaml"
    recipe.write_text(RECIPE)
    cfg = load_config(recipe, BASE)
    assert (cfg.data.max_prompt_length, cfg.rollout.max_new_tokens, cfg.data.train_batch_size) == (1024, 2048, 64)
    assert cfg.rollout.n == 4
    err = capsys.readouterr().err
    assert "hydra: block" in err and "'ppo_trainer' is verl's own config: npu_rl's defaults stand in" in err


def test_own_defaults_merge_in_list_order_and_self_decides_who_wins(tmp_path):
    (tmp_path / "base.yaml").write_text("data: {train_batch_size: 16, max_prompt_length: 256}\n")
    (tmp_path / "sampling").mkdir()
    (tmp_path / "sampling" / "wide.yaml").write_text("n: 6\ntemperature: 0.7\n")
    last = tmp_path / "last.yaml"  # _self_ unlisted: the file wins (Hydra 1.1+)
    last.write_text(
        "defaults:\n  - base\n  - sampling@actor_rollout_ref.rollout: wide\n  - optional site: local\n"
        "data: {train_batch_size: 32}\n"
    )  # an optional entry with no file is skipped, as Hydra does
    cfg = load_config(last, BASE)
    assert (cfg.data.train_batch_size, cfg.data.max_prompt_length) == (32, 256)
    assert (cfg.rollout.n, cfg.rollout.temperature) == (6, 0.7)  # placed under its package
    first = tmp_path / "first.yaml"  # _self_ first: the defaults win
    first.write_text("defaults:\n  - _self_\n  - base\ndata: {train_batch_size: 32}\n")
    assert load_config(first, BASE).data.train_batch_size == 16


@pytest.mark.parametrize(
    ("defaults", "message"),
    [
        ("[my_missing_base]", r"first.yaml: defaults entry 'my_missing_base': no such file"),
        ("[{db: '${x}'}]", "interpolated names are not supported"),
        ("{a: 1}", "defaults must be a list"),
        ("[self_loop]", "defaults include themselves"),
    ],
)
def test_defaults_that_cannot_be_composed_name_the_file_and_entry(tmp_path, defaults, message):
    (tmp_path / "self_loop.yaml").write_text("defaults: [self_loop]\n")
    bad = tmp_path / "first.yaml"
    bad.write_text(f"defaults: {defaults}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(bad, BASE)


def test_references_between_verl_keys_are_seen_before_the_rules_check_values(tmp_path):
    dump = tmp_path / "config.yaml"  # as verl writes .hydra/config.yaml
    dump.write_text(
        "actor_rollout_ref:\n"
        "  actor:\n"
        "    ppo_micro_batch_size: null\n"  # verl's null: unset, accepted although the key has no equivalent
        "    ppo_micro_batch_size_per_gpu: 4\n"
        "    ulysses_sequence_parallel_size: 1\n"
        "    ppo_max_token_len_per_gpu: 9000\n"
        "    use_dynamic_bsz: true\n"
        "  ref:\n"
        # checked as the actor's 1, not as the text '${...}' (which its only-1 rule would refuse)
        "    ulysses_sequence_parallel_size: ${actor_rollout_ref.actor.ulysses_sequence_parallel_size}\n"
        "    log_prob_max_token_len_per_gpu: ${oc.select:actor_rollout_ref.actor.ppo_max_token_len_per_gpu,16384}\n"
        "    log_prob_micro_batch_size_per_gpu: ${oc.select:actor_rollout_ref.ref.no_such_key,3}\n"
        "  rollout:\n"
        "    log_prob_max_token_len_per_gpu: ${.max_num_batched_tokens}\n"  # relative: a sibling
        "    max_num_batched_tokens: 12000\n"
        "trainer: {experiment_name: 'tp${actor_rollout_ref.rollout.tensor_model_parallel_size}_n${..rollout.n}'}\n"
        "model: {tokenizer_path: '${oc.select:global_profiler.tool,null}'}\n"  # a verl key with no equivalent
    )
    cfg = load_config(dump, BASE)
    assert cfg.ref.log_prob_max_token_len_per_device == 9000
    assert cfg.ref.log_prob_micro_batch_size_per_device == 3
    assert cfg.rollout.log_prob_max_token_len_per_device == 12000
    assert cfg.model.tokenizer_path is None  # oc.select's default, typed (null)
    assert cfg.trainer.experiment_name == "tp1_n5"  # inside a string; `..` from trainer.experiment_name is the top


def _nested(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def test_a_saved_verl_config_loads_where_unused_keys_hold_verls_defaults(tmp_path, capsys):
    import yaml

    from npu_rl.verl_defaults import VERL_DEFAULTS

    dump = _nested({**VERL_DEFAULTS, "actor_rollout_ref.rollout.n": 4, "data.train_batch_size": 16})
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(dump))
    cfg = load_config(saved, BASE)
    assert (cfg.rollout.n, cfg.data.train_batch_size) == (4, 16)
    err = capsys.readouterr().err
    # the policy-loss parameters (policy_loss.* but its _target_, tau_pos, tau_neg) map onto npu_rl's keys
    ar = "actor_rollout_ref.actor."
    mapped = [k for k in VERL_DEFAULTS if k.startswith((ar + "policy_loss.", ar + "tau_")) and "_target_" not in k]
    assert len(mapped) == 7
    assert f"{len(VERL_DEFAULTS) - len(mapped)} verl keys at verl's default values have no effect here" in err
    dump["actor_rollout_ref"]["actor"]["fsdp_config"]["full_determinism"] = True  # a setting npu_rl lacks
    saved.write_text(yaml.safe_dump(dump))
    with pytest.raises(ConfigError, match=r"actor_rollout_ref\.actor\.fsdp_config\.full_determinism"):
        load_config(saved, BASE)


@pytest.mark.parametrize(
    ("steps", "ratio", "want"),
    [(-1, 0.1, (0, 0.1)), (0, 0.1, (0, 0.0)), (5, 0.1, (5, 0.1))],
    ids=["ratio", "none", "steps"],
)
def test_verl_warmup_steps_read_as_verl_reads_them(steps, ratio, want):
    ar = "actor_rollout_ref.actor.optim"
    cfg = load_config(None, [*BASE, f"{ar}.lr_warmup_steps={steps}", f"{ar}.lr_warmup_steps_ratio={ratio}"])
    assert (cfg.actor.optim.lr_warmup_steps, cfg.actor.optim.lr_warmup_steps_ratio) == want
    # the critic's key is spelled as npu_rl's: in a verl config it is read as verl's
    critic = load_config(None, [*BASE, f"{ar}.lr=1e-6", f"critic.optim.lr_warmup_steps={steps}"])
    assert critic.critic.optim.lr_warmup_steps == max(steps, 0)


def test_verl_nulls_kl_names_and_an_unused_critic_path():
    ar = "actor_rollout_ref"
    nulls = [f"{ar}.actor.ppo_micro_batch_size_per_gpu=null", f"{ar}.actor.optim.warmup_style=null"]
    cfg = load_config(None, [*BASE, *nulls, "data.val_batch_size=null", "algorithm.kl_penalty=kl"])
    assert cfg.actor.ppo_micro_batch_size_per_device == 8 and cfg.data.val_batch_size == 64  # npu_rl's defaults
    assert cfg.actor.optim.lr_scheduler == "constant"
    assert load_config(None, [*BASE, "algorithm.kl_penalty=mse"]).algorithm.kl_penalty == "mse"
    unused = load_config(None, [*BASE, "critic.model_path=/no/such/model"])  # GRPO builds no critic
    assert unused.critic.model_path == "/no/such/model"
    with pytest.raises(ConfigError, match=r"critic.model_path"):
        load_config(None, [*BASE, "critic.model_path=/no/such/model", "algorithm.adv_estimator=gae"])
