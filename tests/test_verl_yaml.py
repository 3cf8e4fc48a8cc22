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
