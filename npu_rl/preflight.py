"""`npu-rl-train --check ...`: read and check everything a run reads, without loading weights.

A mistake in data, reward or model settings otherwise shows only after the weights are loaded, the
reference copy made and the vLLM engine started: minutes on a card, and on a shared cluster a
queue wait first. With `--check` the trainer's own functions read the config, the tokenizer, every
train and validation row, the tool / interaction files, the reward functions (custom files
imported), the model's config.json (the model built on the meta device: parameter count, the
compute plan the run would take and what one hf-rollout generate call holds) and, on an
accelerator, whether vLLM's memory share is free; then it prints what it found and exits (0, or 2
with the usual one-line error). Nothing is written, no
run directory is locked, no weights are read: it runs on a login node without a card too (the
plan it reports is then the CPU's; `trainer.device` / NPU_RL_DEVICE pick another).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from npu_rl import device
from npu_rl.compute import policy_plan
from npu_rl.config import Config
from npu_rl.data import BatchSampler, build_datasets
from npu_rl.model import MODEL_FILES, load_tokenizer, num_parameters, pretrained, resolve_dtype
from npu_rl.reward_manager import spec_from_config
from npu_rl.rollout import dataset_options
from npu_rl.rollout.base import SamplingParams
from npu_rl.rollout.kv_budget import DecodeShape
from npu_rl.storage import fmt_bytes
from reward.scoring import Scorer


def _meta_model(cfg: Config) -> torch.nn.Module:
    """The policy built from its config.json on the meta device: shapes without memory or weights."""
    trust = cfg.model.trust_remote_code
    config = pretrained(AutoConfig, cfg.model.path, "model.path", MODEL_FILES, trust_remote_code=trust)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust)


def check_run(cfg: Config) -> list[str]:
    """The summary lines of a run's checks; raises the run's own user errors on the first problem."""
    acc = device.select(cfg.trainer.device)
    acc.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # under torchrun: this rank's own card
    tokenizer = load_tokenizer(cfg.model)
    train, val = build_datasets(cfg.data, tokenizer, **dataset_options(cfg))
    sampler = BatchSampler.for_training(train.records, cfg.data)
    steps = cfg.trainer.steps(sampler.steps_per_epoch)
    filtered = sum(train.filtered.values())
    dropped = f" ({filtered} over data.max_prompt_length={cfg.data.max_prompt_length} filtered)" if filtered else ""
    lines = [
        f"data: {len(train.records)} training prompts{dropped}, {len(val.records) if val else 0} validation "
        f"prompts; {sampler.steps_per_epoch} steps per epoch, {steps} steps in all",
    ]
    terms = [f"{term[0]} x {term[1]:g}" for term in Scorer(spec_from_config(cfg.reward, cfg.reward.strict)).terms]
    model_term = " (+ the reward model, not loaded)" if cfg.reward.uses_model else ""
    lines.append(f"reward: {', '.join(terms) or 'the reward model alone (not loaded)'}{model_term if terms else ''}")
    model = _meta_model(cfg)
    plan = policy_plan(model, acc, cfg)
    dtype = resolve_dtype(cfg.model.dtype, acc)
    lines.append(
        f"model: {type(model).__name__}, {_count(num_parameters(model))} parameters, "
        f"{str(dtype).removeprefix('torch.')}; {plan.describe()}"
    )
    if cfg.rollout.name == "hf":
        lines.append(_hf_rollout_line(cfg, model, dtype, plan.decoder == "fast"))
    lines.append(f"device: {_device_line(acc, cfg)}")
    return lines


def _hf_rollout_line(cfg: Config, model: torch.nn.Module, dtype: torch.dtype, fast: bool) -> str:
    """What one generate call of the hf rollout holds at the configured sizes (npu_rl.rollout.kv_budget)."""
    params = SamplingParams.for_training(cfg.rollout)
    prompt = cfg.data.max_prompt_length
    per_prompt = DecodeShape.of(model, dtype).bytes_per_prompt(params, prompt, fast)
    prompts = cfg.rollout.micro_batch_size
    return (
        f"rollout: hf, up to rollout.micro_batch_size={prompts} prompts x {params.n} samples x ({prompt} + "
        f"{params.max_new_tokens}) tokens per generate call: about {fmt_bytes(prompts * per_prompt)} of KV cache "
        "and sampler (on a card, fewer prompts per call where that is not free)"
    )


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _device_line(acc: device.Accelerator, cfg: Config) -> str:
    memory = acc.memory_free_total()
    if memory is None:
        return "cpu"
    free, total = memory
    line = f"{acc.type} ({acc.device_name()}), {free / 1024**3:.1f} of {total / 1024**3:.1f} GiB free"
    if cfg.rollout.name == "vllm":
        from npu_rl.rollout.vllm import check_engine_memory

        check_engine_memory(cfg.rollout.gpu_memory_utilization, acc)
        line += f"; rollout.gpu_memory_utilization={cfg.rollout.gpu_memory_utilization} fits"
    return line


def report(cfg: Config) -> dict[str, Any]:
    """Print the checks' summary (the `--check` mode of npu_rl.train; under torchrun every rank checks
    its own device, the first prints); returns no metrics."""
    lines = check_run(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        for line in lines:
            print(f"[npu_rl check] {line}")
        print("[npu_rl check] ok: nothing was loaded onto a device or written; drop --check to train")
    return {}
