"""verl's config keys accepted as aliases of ours: one table, read by the loader and by the docs.

A verl user can bring a verl command line (or YAML) as it is: each verl key is rewritten to our key
with a one-line notice naming it (`actor_rollout_ref.rollout.n -> rollout.n`), keys that configure
something npu_rl does not need are accepted with a notice saying why (`use_remove_padding`), and keys
with no equivalent stop the run with an error saying so, never with a misleading "did you mean".
`trainer.n_gpus_per_node` / `trainer.nnodes` are answered with the torchrun command to use, since the
world size comes from the launcher here. `${a.b}` references (OmegaConf style, as in verl's YAML) are
resolved against the final config, `${oc.env:VAR,default}` from the environment; any other `${...}`
is an error, so no value is ever kept as literal `${...}` text.

`RULES` is the only source: `load_config` calls `to_native`, and `docs/verl_migration.md`'s table is
`python -m npu_rl.verl_compat` output (tests/test_verl_compat.py checks that they agree).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ALIAS, SPECIAL, IGNORED, LAUNCHER, UNSUPPORTED = "alias", "special", "ignored", "launcher", "unsupported"
_ANY = object()  # `only` default: every value accepted


@dataclass(frozen=True)
class Rule:
    """How one verl key (a `*` segment matches any single key) maps onto npu_rl.

    alias        the value moves to `native` (a `*` there takes the matched segment)
    special      `convert(value)` gives the native (key, value) pairs; `native` names them for the docs
    ignored      accepted with a notice when the value is in `only` (every value if unset), else an error
    launcher     the world size: answered with the torchrun command
    unsupported  an error: npu_rl has no equivalent (`note` says what to do instead)
    """

    verl: str
    kind: str
    native: str = ""
    note: str = ""
    only: Any = _ANY
    convert: Callable[[Any], list[tuple[str, Any]]] | None = None
    priority: int = 0  # -1: yields to any other setting of its native keys; 1: overrides them all


def _off(note: str) -> str:
    return f"only the default (off) exists here: {note}"


def _val_do_sample(value: Any) -> list[tuple[str, Any]]:
    # verl validates greedily with do_sample=False; here greedy is temperature 0.
    return [] if value else [("rollout.val_kwargs.temperature", 0.0)]


def _clip_ratio(value: Any) -> list[tuple[str, Any]]:
    return [("actor.clip_ratio_low", value), ("actor.clip_ratio_high", value)]


def _resume_path(value: Any) -> list[tuple[str, Any]]:
    return [("trainer.resume_mode", value)] if value else []


def _warmup_style(value: Any) -> list[tuple[str, Any]]:
    return [("actor.optim.lr_scheduler", value)]


_AR = "actor_rollout_ref"
RULES: tuple[Rule, ...] = (
    # -- data -----------------------------------------------------------------------------------
    Rule("data.max_response_length", ALIAS, "rollout.max_new_tokens"),
    Rule("data.tokenizer", ALIAS, "model.tokenizer_path"),
    Rule("data.trust_remote_code", ALIAS, "model.trust_remote_code"),
    Rule("data.truncation", IGNORED, only=("error",), note="overlong prompts are dropped or rejected, never cut"),
    Rule("data.reward_fn_key", IGNORED, only=("data_source",), note="the reward is chosen by data_source"),
    Rule("data.return_raw_input_ids", IGNORED, note="no separate reward-model tokenizer"),
    Rule("data.return_raw_chat", IGNORED, note="the raw chat is always kept"),
    Rule("data.return_full_prompt", IGNORED, note="the rendered prompt is always kept"),
    Rule("data.filter_overlong_prompts_workers", IGNORED, note="filtering runs in the loader"),
    Rule("data.dataloader_num_workers", IGNORED, note="prompts are tokenized once, up front"),
    Rule("data.validation_shuffle", IGNORED, only=(False,), note="validation runs in file order"),
    Rule("data.use_shm", IGNORED, only=(False,), note="no shared-memory model copy"),
    Rule("data.image_key", IGNORED, note="text-only"),
    Rule("data.custom_cls.*", IGNORED, only=(None,), note="datasets are parquet in verl's row schema (README 'Data')"),
    # -- model ----------------------------------------------------------------------------------
    Rule(f"{_AR}.model.path", ALIAS, "model.path"),
    Rule(f"{_AR}.model.tokenizer_path", ALIAS, "model.tokenizer_path"),
    Rule(f"{_AR}.model.enable_gradient_checkpointing", ALIAS, "model.gradient_checkpointing"),
    Rule(f"{_AR}.model.trust_remote_code", ALIAS, "model.trust_remote_code"),
    Rule(f"{_AR}.model.use_remove_padding", IGNORED, note="padded batches; results are the same"),
    Rule(f"{_AR}.model.use_fused_kernels", IGNORED, only=(False,), note=_off("fused kernels")),
    Rule(f"{_AR}.model.use_liger", IGNORED, only=(False,), note=_off("liger kernels are not available on NPU")),
    Rule(f"{_AR}.model.use_shm", IGNORED, only=(False,), note=_off("shared-memory model copy")),
    Rule(f"{_AR}.model.enable_activation_offload", IGNORED, only=(False,), note=_off("activation offload")),
    Rule(f"{_AR}.model.lora_rank", IGNORED, only=(0,), note=_off("LoRA: full fine-tuning only")),
    Rule(f"{_AR}.model.external_lib", IGNORED, only=(None,), note="models load through transformers' Auto classes"),
    Rule(f"{_AR}.model.override_config.*", UNSUPPORTED, note="edit the model folder's config.json instead"),
    Rule(f"{_AR}.hybrid_engine", IGNORED, only=(True,), note="rollout and training are always colocated"),
    Rule(f"{_AR}.nccl_timeout", IGNORED, note="set NPU_RL_DIST_TIMEOUT_S (seconds) instead"),
    # -- actor ----------------------------------------------------------------------------------
    Rule(f"{_AR}.actor.strategy", IGNORED, only=("fsdp", "fsdp2"), note="always FSDP2 (megatron is not available)"),
    Rule(f"{_AR}.actor.ppo_mini_batch_size", ALIAS, "actor.ppo_mini_batch_size"),
    Rule(f"{_AR}.actor.ppo_micro_batch_size_per_gpu", ALIAS, "actor.ppo_micro_batch_size_per_device"),
    Rule(
        f"{_AR}.actor.ppo_micro_batch_size",
        UNSUPPORTED,
        note="the deprecated global micro-batch size; use actor.ppo_micro_batch_size_per_device",
    ),
    Rule(f"{_AR}.actor.use_dynamic_bsz", IGNORED, only=(False,), note=_off("dynamic batch size")),
    Rule(f"{_AR}.actor.ppo_max_token_len_per_gpu", IGNORED, note="only used with dynamic batch size"),
    Rule(f"{_AR}.actor.ppo_epochs", ALIAS, "actor.ppo_epochs"),
    Rule(f"{_AR}.actor.shuffle", IGNORED, only=(False,), note=_off("mini-batch shuffling")),
    Rule(f"{_AR}.actor.grad_clip", ALIAS, "actor.grad_clip"),
    Rule(
        f"{_AR}.actor.clip_ratio",
        SPECIAL,
        "actor.clip_ratio_low, actor.clip_ratio_high",
        note="both, unless clip_ratio_low / clip_ratio_high are set",
        convert=_clip_ratio,
        priority=-1,
    ),
    Rule(f"{_AR}.actor.clip_ratio_low", ALIAS, "actor.clip_ratio_low"),
    Rule(f"{_AR}.actor.clip_ratio_high", ALIAS, "actor.clip_ratio_high"),
    Rule(f"{_AR}.actor.clip_ratio_c", ALIAS, "actor.clip_ratio_c"),
    Rule(f"{_AR}.actor.loss_agg_mode", ALIAS, "actor.loss_agg_mode"),
    Rule(f"{_AR}.actor.entropy_coeff", ALIAS, "actor.entropy_coeff"),
    Rule(f"{_AR}.actor.use_kl_loss", ALIAS, "actor.use_kl_loss"),
    Rule(f"{_AR}.actor.kl_loss_coef", ALIAS, "actor.kl_loss_coef"),
    Rule(f"{_AR}.actor.kl_loss_type", ALIAS, "actor.kl_loss_type"),
    Rule(f"{_AR}.actor.policy_loss.loss_mode", ALIAS, "actor.policy_loss"),
    Rule(f"{_AR}.actor.ulysses_sequence_parallel_size", IGNORED, only=(1,), note=_off("sequence parallelism")),
    Rule(f"{_AR}.actor.checkpoint.*", IGNORED, note="checkpoints always hold model, optimizer and extra state"),
    Rule(f"{_AR}.actor.optim.lr", ALIAS, "actor.optim.lr"),
    Rule(f"{_AR}.actor.optim.lr_warmup_steps", ALIAS, "actor.optim.lr_warmup_steps"),
    Rule(f"{_AR}.actor.optim.lr_warmup_steps_ratio", ALIAS, "actor.optim.lr_warmup_steps_ratio"),
    Rule(f"{_AR}.actor.optim.min_lr_ratio", ALIAS, "actor.optim.min_lr_ratio"),
    Rule(f"{_AR}.actor.optim.weight_decay", ALIAS, "actor.optim.weight_decay"),
    Rule(f"{_AR}.actor.optim.betas", ALIAS, "actor.optim.betas"),
    Rule(f"{_AR}.actor.optim.clip_grad", ALIAS, "actor.grad_clip"),
    Rule(f"{_AR}.actor.optim.warmup_style", SPECIAL, "actor.optim.lr_scheduler", convert=_warmup_style),
    Rule(f"{_AR}.actor.optim.lr_scheduler_type", ALIAS, "actor.optim.lr_scheduler"),
    Rule(f"{_AR}.actor.optim.total_training_steps", IGNORED, note="derived from trainer.total_training_steps"),
    Rule(f"{_AR}.actor.optim.num_cycles", IGNORED, only=(0.5,), note="cosine decays over half a cycle"),
    Rule(f"{_AR}.actor.fsdp_config.param_offload", ALIAS, "actor.fsdp.param_offload"),
    Rule(f"{_AR}.actor.fsdp_config.reshard_after_forward", ALIAS, "actor.fsdp.reshard_after_forward"),
    Rule(f"{_AR}.actor.fsdp_config.optimizer_offload", IGNORED, only=(False,), note=_off("optimizer offload")),
    Rule(f"{_AR}.actor.fsdp_config.offload_policy", IGNORED, only=(False,), note=_off("FSDP2 CPU offload policy")),
    Rule(f"{_AR}.actor.fsdp_config.fsdp_size", IGNORED, only=(-1,), note="FSDP spans every rank"),
    Rule(f"{_AR}.actor.fsdp_config.wrap_policy.*", IGNORED, note="each decoder layer is one FSDP unit"),
    Rule(f"{_AR}.actor.fsdp_config.model_dtype", IGNORED, note="master weights are fp32; see model.dtype"),
    Rule(f"{_AR}.actor.fsdp_config.mixed_precision.*", IGNORED, note="bf16 compute, fp32 reduce: actor.fsdp"),
    # -- reference ------------------------------------------------------------------------------
    Rule(f"{_AR}.ref.log_prob_micro_batch_size_per_gpu", ALIAS, "ref.log_prob_micro_batch_size_per_device"),
    Rule(
        f"{_AR}.ref.log_prob_micro_batch_size",
        UNSUPPORTED,
        note="the deprecated global size; use ref.log_prob_micro_batch_size_per_device",
    ),
    Rule(f"{_AR}.ref.fsdp_config.param_offload", ALIAS, "ref.param_offload"),
    Rule(f"{_AR}.ref.fsdp_config.*", IGNORED, note="the reference shares the actor's FSDP layout"),
    Rule(f"{_AR}.ref.log_prob_use_dynamic_bsz", IGNORED, only=(False,), note=_off("dynamic batch size")),
    Rule(f"{_AR}.ref.log_prob_max_token_len_per_gpu", IGNORED, note="only used with dynamic batch size"),
    Rule(f"{_AR}.ref.strategy", IGNORED, only=("fsdp", "fsdp2"), note="always FSDP2"),
    Rule(f"{_AR}.ref.ulysses_sequence_parallel_size", IGNORED, only=(1,), note=_off("sequence parallelism")),
    # -- rollout --------------------------------------------------------------------------------
    Rule(f"{_AR}.rollout.name", ALIAS, "rollout.name"),
    Rule(f"{_AR}.rollout.mode", IGNORED, note="the engine runs in the trainer's processes (verl's sync mode)"),
    Rule(f"{_AR}.rollout.n", ALIAS, "rollout.n"),
    Rule(f"{_AR}.rollout.temperature", ALIAS, "rollout.temperature"),
    Rule(f"{_AR}.rollout.top_p", ALIAS, "rollout.top_p"),
    Rule(f"{_AR}.rollout.top_k", ALIAS, "rollout.top_k"),
    Rule(f"{_AR}.rollout.do_sample", IGNORED, only=(True,), note="training rollouts always sample"),
    Rule(f"{_AR}.rollout.response_length", ALIAS, "rollout.max_new_tokens"),
    Rule(f"{_AR}.rollout.prompt_length", IGNORED, note="data.max_prompt_length bounds prompts"),
    Rule(f"{_AR}.rollout.dtype", IGNORED, note="the engine uses model.dtype"),
    Rule(f"{_AR}.rollout.ignore_eos", IGNORED, only=(False,), note=_off("ignore_eos")),
    Rule(f"{_AR}.rollout.gpu_memory_utilization", ALIAS, "rollout.gpu_memory_utilization"),
    Rule(f"{_AR}.rollout.tensor_model_parallel_size", ALIAS, "rollout.tensor_parallel_size"),
    Rule(f"{_AR}.rollout.enforce_eager", ALIAS, "rollout.enforce_eager"),
    Rule(f"{_AR}.rollout.free_cache_engine", ALIAS, "rollout.free_cache_engine"),
    Rule(f"{_AR}.rollout.max_num_seqs", ALIAS, "rollout.max_num_seqs"),
    Rule(f"{_AR}.rollout.update_weights_bucket_megabytes", ALIAS, "rollout.weight_sync_bucket_mb"),
    Rule(f"{_AR}.rollout.log_prob_micro_batch_size_per_gpu", ALIAS, "rollout.log_prob_micro_batch_size_per_device"),
    Rule(
        f"{_AR}.rollout.log_prob_micro_batch_size",
        UNSUPPORTED,
        note="the deprecated global size; use rollout.log_prob_micro_batch_size_per_device",
    ),
    Rule(f"{_AR}.rollout.log_prob_use_dynamic_bsz", IGNORED, only=(False,), note=_off("dynamic batch size")),
    Rule(f"{_AR}.rollout.log_prob_max_token_len_per_gpu", IGNORED, note="only used with dynamic batch size"),
    Rule(f"{_AR}.rollout.enable_chunked_prefill", IGNORED, note="vLLM's default is kept"),
    Rule(f"{_AR}.rollout.max_num_batched_tokens", IGNORED, note="vLLM's default is kept"),
    Rule(f"{_AR}.rollout.max_model_len", IGNORED, note="prompt + response length bounds it"),
    Rule(f"{_AR}.rollout.load_format", IGNORED, note="weights load from model.path, then sync from the trainer"),
    Rule(f"{_AR}.rollout.disable_log_stats", IGNORED, note="vLLM's statistics log is always off"),
    Rule(f"{_AR}.rollout.layered_summon", IGNORED, note="weights sync in buckets (rollout.weight_sync_bucket_mb)"),
    Rule(f"{_AR}.rollout.calculate_log_probs", IGNORED, note="rollout/logprob_diff is always logged"),
    Rule(f"{_AR}.rollout.engine_kwargs.*", IGNORED, note="vLLM's defaults are kept"),
    Rule(f"{_AR}.rollout.val_kwargs.n", ALIAS, "rollout.val_kwargs.n"),
    Rule(f"{_AR}.rollout.val_kwargs.temperature", ALIAS, "rollout.val_kwargs.temperature"),
    Rule(f"{_AR}.rollout.val_kwargs.top_p", ALIAS, "rollout.val_kwargs.top_p"),
    Rule(f"{_AR}.rollout.val_kwargs.top_k", ALIAS, "rollout.val_kwargs.top_k"),
    Rule(
        f"{_AR}.rollout.val_kwargs.do_sample",
        SPECIAL,
        "rollout.val_kwargs.temperature",
        note="false sets temperature 0 (greedy); true keeps rollout.val_kwargs.temperature",
        convert=_val_do_sample,
    ),
    Rule(f"{_AR}.rollout.multi_turn.enable", IGNORED, only=(False,), note=_off("multi-turn / tool rollouts")),
    Rule(f"{_AR}.rollout.multi_turn.*", IGNORED, note="only read when multi_turn.enable=true, which is an error"),
    Rule(f"{_AR}.rollout.agent.*", IGNORED, note="agent loops are not implemented; their settings are unused"),
    # -- critic, reward model, reward function --------------------------------------------------
    Rule("critic.*", IGNORED, note="GRPO has no critic"),
    Rule("reward_model.enable", IGNORED, only=(False,), note="rule-based rewards only (no reward model)"),
    Rule("reward_model.reward_manager", IGNORED, only=("naive", "prime"), note="items are graded in a process pool"),
    Rule("reward_model.launch_reward_fn_async", IGNORED, note="grading always runs in worker processes"),
    Rule("reward_model.*", IGNORED, note="only read when reward_model.enable=true, which is an error"),
    Rule("custom_reward_function.path", ALIAS, "reward.custom_function.path"),
    Rule("custom_reward_function.name", ALIAS, "reward.custom_function.name"),
    Rule("custom_reward_function.reward_kwargs", ALIAS, "reward.custom_function.reward_kwargs"),
    # -- algorithm ------------------------------------------------------------------------------
    Rule("algorithm.kl_ctrl.kl_coef", ALIAS, "algorithm.kl_coef"),
    Rule("algorithm.kl_ctrl.type", IGNORED, only=("fixed",), note="a fixed KL coefficient"),
    Rule("algorithm.kl_ctrl.*", IGNORED, note="only used by the adaptive controller"),
    Rule("algorithm.gamma", IGNORED, only=(1.0, 1), note="GRPO scores whole responses"),
    Rule("algorithm.lam", IGNORED, only=(1.0, 1), note="GRPO scores whole responses"),
    Rule("algorithm.use_pf_ppo", IGNORED, only=(False,), note=_off("PF-PPO reweighting")),
    # -- trainer --------------------------------------------------------------------------------
    Rule("trainer.n_gpus_per_node", LAUNCHER, note="torchrun --nproc_per_node"),
    Rule("trainer.nnodes", LAUNCHER, note="torchrun --nnodes"),
    Rule("trainer.max_actor_ckpt_to_keep", ALIAS, "trainer.max_ckpt_to_keep"),
    Rule("trainer.max_critic_ckpt_to_keep", IGNORED, note="GRPO has no critic"),
    Rule("trainer.critic_warmup", IGNORED, only=(0,), note="GRPO has no critic"),
    Rule(
        "trainer.resume_from_path",
        SPECIAL,
        "trainer.resume_mode",
        note="the path becomes trainer.resume_mode (verl's resume_mode=resume_path)",
        convert=_resume_path,
        priority=1,
    ),
    Rule("trainer.log_val_generations", IGNORED, note="a few validation samples are always logged"),
    Rule("trainer.validation_data_dir", IGNORED, note="npu_rl.eval --output-dir writes every generation"),
    Rule("trainer.rollout_data_dir", IGNORED, note="not written"),
    Rule("trainer.default_hdfs_dir", IGNORED, note="local checkpoints only"),
    Rule("trainer.del_local_ckpt_after_load", IGNORED, only=(False,), note="checkpoints are kept"),
    Rule("trainer.balance_batch", IGNORED, note="batches are split evenly by prompt"),
    Rule("trainer.use_legacy_worker_impl", IGNORED, note="one worker implementation"),
    Rule("trainer.tensorboard_dir", UNSUPPORTED, note="set the TENSORBOARD_DIR environment variable instead"),
    Rule("trainer.val_only", UNSUPPORTED, note="use python -m npu_rl.eval --model <folder> --data <parquet>"),
    Rule("ray_init.*", IGNORED, note="no Ray: processes come from torchrun"),
    Rule("global_profiler.*", IGNORED, note="profiling is not wired to the config"),
)

# Top-level groups that only verl has: an unknown key under them is verl's, with no equivalent here.
VERL_GROUPS = ("actor_rollout_ref", "critic", "reward_model", "custom_reward_function", "ray_init", "global_profiler")
_REF_RE = re.compile(r"\$\{([^{}]*)\}")


class _Compat:
    """One translation: the rules' matches, the notices printed, and the config error type."""

    def __init__(self) -> None:
        from npu_rl.config import Config, ConfigError

        self.error = ConfigError
        self.defaults = dataclasses.asdict(Config())
        self.groups, self.leaves = _native_paths(Config)
        self.notices: list[str] = []


def _native_paths(cls: type, prefix: str = "") -> tuple[set[str], set[str]]:
    """Dotted paths of the native config: nested groups, and leaf keys."""
    groups, leaves = set(), set()
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            groups.add(path)
            sub_groups, sub_leaves = _native_paths(type(default), path + ".")
            groups |= sub_groups
            leaves |= sub_leaves
        else:
            leaves.add(path)
    return groups, leaves


def find_rule(key: str) -> tuple[Rule | None, str]:
    """The rule for dotted verl `key` and the native key it maps to (exact rules win over patterns)."""
    parts = key.split(".")
    best: tuple[Rule | None, str] = (None, "")
    for rule in RULES:
        pattern = rule.verl.split(".")
        if pattern[-1] == "*":
            if len(parts) < len(pattern) or parts[: len(pattern) - 1] != pattern[:-1]:
                continue
            rest = ".".join(parts[len(pattern) - 1 :])
            native = rule.native.replace("*", rest) if rule.native else ""
            if best[0] is None:
                best = (rule, native)
        elif pattern == parts:
            return rule, rule.native
    return best


def _leaves(node: Any, path: str, compat: _Compat, out: list[tuple[str, Any]]) -> None:
    """(dotted key, value) pairs; descends only into groups, so mapping-valued keys stay whole."""
    rule = find_rule(path)[0] if path else None
    exact = rule is not None and rule.verl == path
    if not path or (isinstance(node, dict) and path not in compat.leaves and not exact):
        if not isinstance(node, dict):
            raise compat.error(f"the config must be a mapping, got {node!r}")
        for key, value in node.items():
            _leaves(value, f"{path}.{key}" if path else str(key), compat, out)
        return
    out.append((path, node))


def _torchrun_hint(nodes: Any, per_node: Any) -> str:
    multi = f"--nnodes {nodes} --node_rank <this node> --master_addr <node 0> " if nodes != 1 else ""
    return f"torchrun {multi}--nproc_per_node {per_node} -m npu_rl.train --config <yaml> [overrides]"


def _check_world(launcher: dict[str, Any], compat: _Compat) -> None:
    """verl sizes its Ray cluster from the config; here the launcher decides, so they must agree."""
    if not launcher:
        return
    per_node = launcher.get("trainer.n_gpus_per_node", 1)
    nodes = launcher.get("trainer.nnodes", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (per_node, nodes)):
        raise compat.error(f"trainer.n_gpus_per_node / trainer.nnodes must be positive integers, got {launcher}")
    wanted = per_node * nodes
    hint = _torchrun_hint(nodes, per_node)
    from npu_rl.config.environment import world_size

    world = world_size()
    if world != wanted:
        launch = "this is a single process" if world == 1 else f"this launch has WORLD_SIZE={world}"
        raise compat.error(
            f"trainer.n_gpus_per_node={per_node} x trainer.nnodes={nodes} = {wanted} processes (verl keys), but "
            f"{launch}: npu_rl takes its processes from the launcher. Launch with: {hint}"
        )
    compat.notices.append(f"verl keys trainer.n_gpus_per_node/nnodes: this run's world size ({wanted}) agrees")


def _translate(key: str, value: Any, compat: _Compat, launcher: dict[str, Any]) -> list[tuple[str, Any]]:
    """Native (key, value) pairs for one input key; native keys pass through unchanged."""
    top = key.split(".", 1)[0]
    per_device = key.removesuffix("_per_gpu") + "_per_device"
    if key.endswith("_per_gpu") and per_device in compat.leaves:  # verl's spelling of any native key
        compat.notices.append(f"verl spelling {key} -> {per_device}")
        return [(per_device, value)]
    if key in compat.leaves or (top not in VERL_GROUPS and find_rule(key)[0] is None):
        return [(key, value)]  # native, or unknown under a native group: the config builder reports it
    rule, native = find_rule(key)
    if rule is None:
        raise compat.error(
            f"verl key '{key}' has no equivalent in npu_rl (docs/verl_migration.md lists every verl key it accepts)"
        )
    note = f" ({rule.note})" if rule.note else ""
    if rule.kind == ALIAS:
        compat.notices.append(f"verl key {key} -> {native}")
        return [(native, value)]
    if rule.kind == SPECIAL:
        assert rule.convert is not None
        pairs = rule.convert(value)
        target = ", ".join(f"{k}={v!r}" for k, v in pairs) or "no change"
        compat.notices.append(f"verl key {key}={value!r} -> {target}{note}")
        return pairs
    if rule.kind == LAUNCHER:
        launcher[key] = value
        return []
    if rule.kind == IGNORED and (rule.only is _ANY or value in rule.only):
        compat.notices.append(f"verl key {key} ignored{note}")
        return []
    if rule.kind == IGNORED:
        allowed = ", ".join(repr(v) for v in rule.only)
        raise compat.error(f"verl key '{key}={value!r}' has no equivalent in npu_rl: only {allowed} is accepted{note}")
    raise compat.error(f"verl key '{key}' has no equivalent in npu_rl{note}")


def _rank(key: str, override_keys: list[str]) -> int:
    """0 for a value from the YAML file, 1 + the index of the last override that set it otherwise."""
    rank = 0
    for i, over in enumerate(override_keys):
        if key == over or key.startswith(over + "."):
            rank = i + 1
    return rank


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _lookup(key: str, flat: dict[str, Any], compat: _Compat) -> Any:
    native = key if key in compat.leaves else find_rule(key)[1]
    if native in flat:
        return flat[native]
    if native in compat.leaves:
        value: Any = compat.defaults
        for part in native.split("."):
            value = value[part]
        return value
    raise compat.error(f"interpolation ${{{key}}}: no such config key")


def _resolve(value: Any, key: str, flat: dict[str, Any], compat: _Compat, seen: tuple[str, ...] = ()) -> Any:
    """`${a.b}` / `${oc.env:VAR[,default]}` in `value` (recursively in lists and mappings)."""
    if isinstance(value, list):
        return [_resolve(v, key, flat, compat, seen) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, key, flat, compat, seen) for k, v in value.items()}
    if not isinstance(value, str) or "${" not in value:
        return value

    def one(expr: str) -> Any:
        expr = expr.strip()
        if expr.startswith("oc.env:"):
            name, _, default = expr.removeprefix("oc.env:").partition(",")
            found = os.environ.get(name.strip())
            if found is None and not default:
                raise compat.error(f"{key}: ${{{expr}}} but the environment variable {name.strip()} is not set")
            return found if found is not None else default.strip()
        if ":" in expr or not re.fullmatch(r"[A-Za-z_][\w.]*", expr):
            raise compat.error(f"{key}: cannot resolve ${{{expr}}}; only ${{a.b}} and ${{oc.env:VAR}} are supported")
        target = expr if expr in compat.leaves else (find_rule(expr)[1] or expr)
        if target in seen:
            raise compat.error(f"{key}: interpolation cycle {' -> '.join((*seen, target))}")
        return _resolve(_lookup(expr, flat, compat), target, flat, compat, (*seen, target))

    whole = _REF_RE.fullmatch(value.strip())
    if whole:
        return one(whole.group(1))  # `${x}` alone keeps x's type
    result = _REF_RE.sub(lambda m: str(one(m.group(1))), value)
    if "${" in result:
        raise compat.error(f"{key}: cannot resolve {value!r}")
    return result


def to_native(tree: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The config tree with verl keys rewritten to ours and `${...}` resolved (see the module docstring).

    `tree` is the YAML file with `overrides` already applied; the override list gives each value's
    precedence, so a later override wins even when one spells the key the verl way and the other ours.
    """
    from npu_rl.config import parse_override

    compat = _Compat()
    pairs: list[tuple[str, Any]] = []
    _leaves(tree, "", compat, pairs)
    override_keys = [".".join(parse_override(text)[0]) for text in overrides]
    launcher: dict[str, Any] = {}
    native: list[tuple[tuple[int, int], str, str, Any]] = []
    for key, value in pairs:
        rule = find_rule(key)[0] if key not in compat.leaves else None
        rank = (rule.priority if rule is not None else 0, _rank(key, override_keys))
        for target, new in _translate(key, value, compat, launcher):
            native.append((rank, target, key, new))
    _check_world(launcher, compat)
    flat: dict[str, Any] = {}
    source: dict[str, tuple[tuple[int, int], str]] = {}
    for rank, target, key, value in sorted(native, key=lambda item: item[0]):
        if target in flat and source[target][0] == rank and flat[target] != value:
            raise compat.error(
                f"'{source[target][1]}' and '{key}' both set {target} ({flat[target]!r} vs {value!r}); keep one"
            )
        flat[target], source[target] = value, (rank, key)
    if flat.get("trainer.resume_mode") == "resume_path":
        raise compat.error("trainer.resume_mode=resume_path (verl) needs trainer.resume_from_path=<global_step_N dir>")
    out: dict[str, Any] = {}
    for target, value in flat.items():
        _set(out, target, _resolve(value, target, flat, compat))
    if os.environ.get("RANK", "0") == "0":  # once per run, not once per rank
        for line in dict.fromkeys(compat.notices):
            print(f"[npu_rl] {line}", file=sys.stderr)
    return out


def markdown_table() -> str:
    """The migration table of docs/verl_migration.md, generated from RULES."""
    what = {
        ALIAS: "renamed",
        SPECIAL: "converted",
        IGNORED: "accepted, no effect",
        LAUNCHER: "launcher",
        UNSUPPORTED: "error: no equivalent",
    }
    lines = ["| verl key | npu_rl | what happens |", "|---|---|---|"]
    for rule in RULES:
        native = f"`{rule.native}`" if rule.native else "-"
        detail = what[rule.kind]
        if rule.kind == IGNORED and rule.only is not _ANY:
            detail = f"accepted when {' / '.join(repr(v) for v in rule.only)}, else error"
        if rule.note:
            detail += f": {rule.note}"
        lines.append(f"| `{rule.verl}` | {native} | {detail} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
