"""The GRPO trainer. `GRPOTrainer.train_step` is the whole algorithm in one place:

    rollout -> reward -> (old logprobs) -> (ref logprobs) -> advantages -> PPO update -> weight sync

Everything it calls is either a pure function (npu_rl.core_algos) or an engine behind a small
interface chosen by config (rollout, reward, trackers, checkpoints, device and distribution).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npu_rl import actor, core_algos, device, distributed
from npu_rl.checkpoint import CheckpointManager
from npu_rl.config import Config, format_path, save_config
from npu_rl.data import BatchSampler, PromptRecord, build_datasets
from npu_rl.metrics import Timer, data_metrics, global_sum, perf_metrics
from npu_rl.model import load_model, load_tokenizer, num_parameters
from npu_rl.reward_manager import RewardItem, RewardManager
from npu_rl.rollout import RolloutOutput, SamplingParams, build_rollout, eos_and_pad_ids
from npu_rl.tracking import Tracking


def prompt_seed(seed: int, step: int, index: int, validation: bool = False) -> int:
    """The sampling seed of one prompt at one step: independent of batch layout, ranks and resumes.

    Validation uses its own stream, the same at every step, so validations differ only by the weights.
    """
    return int(np.random.SeedSequence([seed, int(validation), step, index]).generate_state(1)[0])


def shard_prompts(records: list[PromptRecord], mini_batch: int, rank: int, world: int) -> list[PromptRecord]:
    """This rank's prompts: an equal slice of every mini-batch, so the ranks' mini-batch k together
    hold exactly the prompts of the single-process mini-batch k (same updates at any world size)."""
    per_rank = mini_batch // world
    return [
        r
        for start in range(0, len(records), mini_batch)
        for r in records[start + rank * per_rank : start + (rank + 1) * per_rank]
    ]


class GRPOTrainer:
    NUM_LOGGED_SAMPLES = 4  # validation completions sent to the trackers each validation

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.acc = device.select(cfg.trainer.device)
        self.dist = distributed.init_distributed(self.acc)
        if self.acc.type == "cpu" and cfg.trainer.num_threads > 0:
            torch.set_num_threads(cfg.trainer.num_threads)
        if cfg.actor.ppo_mini_batch_size % self.dist.world_size:
            raise ValueError(
                f"actor.ppo_mini_batch_size ({cfg.actor.ppo_mini_batch_size}) must be divisible by the "
                f"world size ({self.dist.world_size})"
            )
        device.seed_everything(cfg.trainer.seed)
        self.log_dir = Path(format_path(cfg.trainer.log_dir, cfg))
        self.tokenizer = load_tokenizer(cfg.model)
        self.train_data, self.val_data = build_datasets(cfg.data, self.tokenizer)
        self.sampler = BatchSampler(
            self.train_data.records, cfg.data.train_batch_size, shuffle=cfg.data.shuffle, seed=cfg.data.seed
        )
        steps = cfg.trainer.total_epochs * self.sampler.steps_per_epoch
        self.total_steps = cfg.trainer.total_training_steps if cfg.trainer.total_training_steps > 0 else steps

        model = load_model(cfg.model, self.acc, trainable=True)
        self.num_params = num_parameters(model)
        self.model = self._place(model, trainable=True)
        self.ref = None
        if cfg.needs_ref:
            self.ref = self._place(load_model(cfg.model, self.acc, trainable=False), trainable=False)
        self.device = self.acc.torch_device(self.dist.local_rank)
        self.optimizer = actor.build_optimizer(self.model, cfg.actor.optim)
        self.scheduler = actor.build_scheduler(self.optimizer, self.total_steps, cfg.actor.optim)
        self.rollout = build_rollout(cfg, self.model, self.tokenizer, self.acc, self.dist)
        self.pad_token_id = eos_and_pad_ids(self.tokenizer, model)[1]
        self.reward = RewardManager(cfg.reward)
        self.val_reward = RewardManager(cfg.reward, strict=False)
        self.checkpoints = CheckpointManager(
            format_path(cfg.trainer.default_local_dir, cfg), cfg.trainer.max_ckpt_to_keep, self.dist
        )
        self.global_step = 0
        self.tracking: Tracking | None = None
        if self.dist.is_main:
            save_config(cfg, self.log_dir / "config.yaml")
            self.tracking = Tracking(cfg.trainer.logger, str(self.log_dir), self.total_steps, config=cfg)
            for name, count in self.train_data.filtered.items():
                print(f"[npu_rl] filtered {count} prompts longer than {cfg.data.max_prompt_length} tokens in {name}")

    def _place(self, model: torch.nn.Module, trainable: bool) -> torch.nn.Module:
        """Shard across ranks (FSDP2 moves each shard to the device itself), or move whole when alone."""
        if self.dist.is_distributed:
            fsdp = self.cfg.actor.fsdp
            if not trainable:
                fsdp = dataclasses.replace(fsdp, param_offload=self.cfg.ref.param_offload)
            return distributed.shard_model(model, fsdp, self.acc, self.dist, trainable=trainable)
        return model.to(self.acc.torch_device(self.dist.local_rank))

    # ------------------------------------------------------------------------------------------
    def sampling_params(self, validate: bool = False) -> SamplingParams:
        r = self.cfg.rollout
        if validate:
            v = r.val_kwargs
            return SamplingParams(v.n, v.temperature, v.top_p, v.top_k, r.max_new_tokens)
        return SamplingParams(r.n, r.temperature, r.top_p, r.top_k, r.max_new_tokens)

    def _generate(self, records: list[PromptRecord], params: SamplingParams, step: int | None) -> RolloutOutput:
        """Sample for `records` at training step `step`, or for validation when `step` is None."""
        seeds = [prompt_seed(self.cfg.trainer.seed, step or 0, r.index, step is None) for r in records]
        # The hf backend samples from the (possibly sharded) policy itself: hold its full weights.
        gather = distributed.gathered_params(self.model) if self.cfg.rollout.name == "hf" else nullcontext()
        self.rollout.wake_up()
        try:
            with gather:
                return self.rollout.generate([r.prompt_ids for r in records], params, seeds=seeds)
        finally:
            self.rollout.sleep()

    def _grade(self, records: list[PromptRecord], out: RolloutOutput, n: int, manager: RewardManager) -> Any:
        texts = out.decode(self.tokenizer)
        rows = zip([r for r in records for _ in range(n)], texts, out.truncated, strict=True)
        items = [
            RewardItem(rec.data_source, text, rec.ground_truth, rec.extra_info, cut, rec.messages or rec.prompt_text)
            for rec, text, cut in rows
        ]
        return manager.score(items), texts

    def _logprobs(self, model: torch.nn.Module, batch: actor.PolicyBatch, micro_batch_size: int) -> torch.Tensor:
        return actor.compute_logprobs(model, batch, self.cfg.rollout.temperature, micro_batch_size, self.device)

    # ------------------------------------------------------------------------------------------
    def train_step(self, records: list[PromptRecord]) -> dict[str, float]:
        """One GRPO step on this rank's share of the step's prompts."""
        cfg, step = self.cfg, self.global_step
        timer = Timer(self.acc.synchronize)
        params = self.sampling_params()
        with timer.section("step"):
            with timer.section("gen"):
                out = self._generate(records, params, step)
            with timer.section("reward"):
                graded, _ = self._grade(records, out, params.n, self.reward)
                scores = torch.tensor(graded.scores, dtype=torch.float32)

            batch = actor.build_policy_batch(
                [r.prompt_ids for r in records], out.response_ids, out.lengths, self.pad_token_id, params.n
            )
            mask = batch.response_mask
            batch.rollout_logprobs = out.logprobs
            on_policy = cfg.actor.ppo_epochs == 1 and cfg.actor.ppo_mini_batch_size == cfg.data.train_batch_size
            kl_in_reward = cfg.algorithm.use_kl_in_reward and self.ref is not None
            if not on_policy or kl_in_reward:  # several updates per rollout, or KL priced into the reward
                with timer.section("old_log_prob"):
                    batch.old_logprobs = self._logprobs(
                        self.model, batch, cfg.rollout.log_prob_micro_batch_size_per_device
                    )
            if self.ref is not None:
                with timer.section("ref"):
                    batch.ref_logprobs = self._logprobs(self.ref, batch, cfg.ref.log_prob_micro_batch_size_per_device)

            with timer.section("adv"):
                rewards = scores
                if kl_in_reward:  # each sequence's reward pays for its summed divergence from the reference
                    kl = core_algos.kl_estimate(batch.old_logprobs, batch.ref_logprobs, cfg.algorithm.kl_penalty)
                    rewards = scores - cfg.algorithm.kl_coef * (kl * mask).sum(-1)
                group_ids = torch.tensor([r.index for r in records]).repeat_interleave(params.n)
                seq_adv = core_algos.ADV_ESTIMATORS[cfg.algorithm.adv_estimator](
                    rewards, group_ids, norm_by_std=cfg.algorithm.norm_adv_by_std_in_grpo
                )
                batch.advantages = seq_adv[:, None] * mask

            with timer.section("update_actor"):
                rows_per_mini = cfg.actor.ppo_mini_batch_size // self.dist.world_size * params.n
                actor_metrics = actor.update_policy(
                    self.model,
                    self.optimizer,
                    self.scheduler,
                    batch,
                    cfg.actor,
                    params.temperature,
                    rows_per_mini,
                    horizon=cfg.rollout.max_new_tokens,
                    device=self.device,
                    world_size=self.dist.world_size,
                )
            with timer.section("update_weights"):
                self.rollout.update_weights(distributed.iter_full_state_dict(self.model))

        metrics = {**actor_metrics, **timer.metrics()}
        metrics.update(
            data_metrics(
                scores,
                rewards,
                seq_adv,
                out.lengths,
                torch.tensor([len(r.prompt_ids) for r in records]).repeat_interleave(params.n),
                params.max_new_tokens,
                {**graded.components, "acc": [float(a) for a in graded.acc]},
            )
        )
        metrics["reward/timeouts"] = global_sum(graded.timeouts)
        metrics["reward/errors"] = global_sum(graded.errors)
        num_tokens = int(batch.attention_mask.sum())
        metrics.update(
            perf_metrics(
                num_tokens,
                metrics["timing_s/step"],
                metrics["timing_s/update_actor"],
                self.num_params,
                cfg.actor.ppo_epochs,
                self.dist.world_size,
                self.acc.peak_flops(),
            )
        )
        metrics.update(self.acc.memory_stats())
        return metrics

    # ------------------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """val-core/<data_source>/acc/mean@N on the validation set, graded leniently."""
        if self.val_data is None:
            return {}
        params = self.sampling_params(validate=True)
        records = self.val_data.records[self.dist.rank :: self.dist.world_size]
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        samples = []
        bs = self.cfg.data.val_batch_size
        for start in range(0, len(records), bs):
            chunk = records[start : start + bs]
            out = self._generate(chunk, params, step=None)
            graded, texts = self._grade(chunk, out, params.n, self.val_reward)
            for i, rec in enumerate(chunk):
                accs = graded.acc[i * params.n : (i + 1) * params.n]
                sums[rec.data_source][0] += sum(accs) / params.n
                sums[rec.data_source][1] += 1
            if not samples:  # a few completions to read by eye, the first sample of each prompt
                samples = [
                    {
                        "prompt": rec.prompt_text,
                        "response": texts[i * params.n],
                        "ground_truth": rec.ground_truth,
                        "score": graded.scores[i * params.n],
                    }
                    for i, rec in enumerate(chunk[: self.NUM_LOGGED_SAMPLES])
                ]
        sources = sorted({r.data_source for r in self.val_data.records})
        totals = distributed.all_reduce(
            torch.tensor([v for s in sources for v in sums[s]], dtype=torch.float64), op="sum"
        ).view(-1, 2)
        metrics = {
            f"val-core/{s}/acc/mean@{params.n}": float(t[0] / t[1].clamp(min=1))
            for s, t in zip(sources, totals, strict=True)
        }
        if self.tracking is not None and samples:
            self.tracking.log_samples(samples, self.global_step)
        return metrics

    # ------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        self.checkpoints.save(
            self.global_step,
            self.model,
            self.optimizer,
            self.scheduler,
            {"global_step": self.global_step, "sampler": self.sampler.state_dict()},
            self.model.config,
            self.tokenizer,
            getattr(self.model, "generation_config", None),
        )

    def maybe_resume(self) -> None:
        path = self.checkpoints.resolve(self.cfg.trainer.resume_mode)
        if path is None:
            return
        state = self.checkpoints.load(path, self.model, self.optimizer, self.scheduler)
        self.global_step = int(state["global_step"])
        self.sampler.load_state_dict(state["sampler"])
        # An engine with its own copy of the weights (vLLM) still holds model.path's: sync before sampling.
        self.rollout.update_weights(distributed.iter_full_state_dict(self.model))
        if self.dist.is_main:
            print(f"[npu_rl] resumed from {path} at step {self.global_step}")

    def log(self, metrics: dict[str, float]) -> None:
        if self.tracking is not None:
            self.tracking.log(metrics, self.global_step)

    def fit(self) -> dict[str, float]:
        """Train to `total_steps`, validating and checkpointing on schedule; returns the last metrics."""
        tcfg = self.cfg.trainer
        self.maybe_resume()
        last: dict[str, float] = {}
        if tcfg.val_before_train and self.global_step == 0 and self.val_data is not None:
            self.log(self.validate())
        while self.global_step < self.total_steps:
            batch = self.sampler.next_batch()
            mine = shard_prompts(batch, self.cfg.actor.ppo_mini_batch_size, self.dist.rank, self.dist.world_size)
            start = time.perf_counter()
            last = self.train_step(mine)
            self.global_step += 1
            last["training/global_step"] = self.global_step
            last["training/epoch"] = self.sampler.epoch
            is_last = self.global_step == self.total_steps
            if self.val_data is not None and tcfg.test_freq > 0 and (self.global_step % tcfg.test_freq == 0 or is_last):
                last.update(self.validate())
            if (tcfg.save_freq > 0 and self.global_step % tcfg.save_freq == 0) or is_last:
                self.save_checkpoint()
            last["timing_s/step_total"] = time.perf_counter() - start
            self.log(last)
        return last

    def close(self) -> None:
        if self.tracking is not None:
            self.tracking.close()
        self.reward.close()
        self.val_reward.close()
        close_rollout = getattr(self.rollout, "close", None)
        if close_rollout is not None:  # before the process group goes: vLLM's shutdown uses it
            close_rollout()
        distributed.destroy()
