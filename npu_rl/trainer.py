"""The GRPO trainer. `GRPOTrainer.train_step` is the whole algorithm in one place:

    rollout -> reward -> (old logprobs) -> (ref logprobs) -> advantages -> PPO update -> weight sync

Everything it calls is either a pure function (npu_rl.core_algos, npu_rl.algos) or an engine behind a
small interface chosen by config (rollout, reward, trackers, checkpoints, device and distribution);
generation, grading and dynamic sampling are npu_rl.step_rollouts.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import torch

from npu_rl import actor, core_algos, critic, device, distributed, lora, optim
from npu_rl.algos import rollout_correction, token_baselines
from npu_rl.algos.adaptive_entropy import AdaptiveEntropy
from npu_rl.algos.advantages import AdvantageInputs, place_scores, reward_inputs
from npu_rl.checkpoint import CheckpointManager
from npu_rl.compute import build_plan, policy_plan
from npu_rl.config import Config, format_path
from npu_rl.data import BatchSampler, PromptRecord, build_datasets
from npu_rl.evaluation import EvalConfig, evaluate_records, validation_metrics
from npu_rl.generation_dump import dump_rollouts, dump_validation
from npu_rl.metrics import (
    StepStats,
    Timer,
    perf_metrics,
    record_advantages,
    record_critic,
    record_data,
    record_variance_proxies,
)
from npu_rl.model import load_model, load_tokenizer, mix_into, num_parameters
from npu_rl.profiling import StepProfiler
from npu_rl.progress import Progress
from npu_rl.resume import (
    RUN_CONFIG,
    apply_optim_config,
    config_yaml,
    open_run,
    record_start,
    restore_trainer_state,
    trainer_state,
)
from npu_rl.reward_manager import RewardManager
from npu_rl.reward_model import RewardModel
from npu_rl.rollout import SamplingParams, build_rollout, dataset_options, eos_and_pad_ids
from npu_rl.rollout.tool_metrics import record_tool_metrics
from npu_rl.run_guard import NonFiniteGuard, StopRequested, StopSignals
from npu_rl.step_rollouts import StepRollouts
from npu_rl.tracking import Tracking


class GRPOTrainer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.acc = device.select(cfg.trainer.device)  # decided once; everything below is handed this
        self.dist = distributed.init_distributed(self.acc)
        if self.acc.type == "cpu":
            torch.set_num_threads(device.cpu_threads(cfg.trainer.num_threads))
        device.seed_everything(cfg.trainer.seed, self.acc)
        self.log_dir = Path(format_path(cfg.trainer.log_dir, cfg))
        self.tokenizer = load_tokenizer(cfg.model)
        self.train_data, self.val_data = build_datasets(cfg.data, self.tokenizer, **dataset_options(cfg))
        self.sampler = BatchSampler.for_training(self.train_data.records, cfg.data)
        self.total_steps = cfg.trainer.steps(self.sampler.steps_per_epoch)

        start = open_run(cfg, self.dist, self.log_dir)  # lock, clean up, pick the checkpoint, check the config
        self.run_lock, self._resume_from, self._config_changes = start.lock, start.resume_from, start.changes
        model = load_model(cfg.model, self.acc, trainable=True)
        if cfg.actor.lora.rank > 0:
            model = lora.wrap(model, cfg.actor.lora.rank, cfg.actor.lora.alpha, cfg.actor.lora.target_modules)
        self.num_params = num_parameters(model)
        self.model = self._place(model, trainable=True)
        self.plan = policy_plan(self.model, self.acc, cfg)
        self.ref, self.ref_plan = None, None
        if cfg.needs_ref and lora.is_lora(self.model):  # the base under the adapters: no second copy
            self.ref, self.ref_plan = self.model, self.plan
        elif cfg.needs_ref:
            self.ref = self._place(load_model(cfg.model, self.acc, trainable=False), trainable=False)
            self.ref_plan = build_plan(
                self.ref, self.acc, cfg.actor.forward, cfg.rollout.decoder, head_chunk=cfg.actor.head_chunk_tokens
            )
        self.device = self.acc.torch_device(self.dist.local_rank)
        self.optimizer = optim.build_optimizer(self.model, cfg.actor.optim)
        self.scheduler = optim.build_scheduler(self.optimizer, self.total_steps, cfg.actor.optim)
        place = functools.partial(self._place, trainable=True)  # PPO with GAE: the policy's decoder, a value head
        self.critic = critic.Critic.build(cfg, self.acc, place, self.total_steps) if cfg.use_critic else None
        self.rollout = build_rollout(cfg, self.model, self.tokenizer, self.acc, self.dist, self.plan)
        self.pad_token_id = eos_and_pad_ids(self.tokenizer, model)[1]
        scorer = RewardModel(cfg.reward.model, self.acc, self.dist.local_rank) if cfg.reward.uses_model else None
        self.step_rollouts = StepRollouts(cfg, self.rollout, self.tokenizer, self.sampler, self.dist, scorer)
        self.val_reward = RewardManager(cfg.reward, strict=False, model=scorer)
        v, r = cfg.rollout.val_kwargs, cfg.rollout  # min_p and the repetition penalty apply to both, as in verl
        self.val_cfg = EvalConfig(
            v.n, v.temperature, v.top_p, v.top_k, r.max_new_tokens, cfg.data.val_batch_size, cfg.trainer.seed,
            r.min_p, r.repetition_penalty,
        )  # fmt: skip
        self.checkpoints = CheckpointManager(
            format_path(cfg.trainer.default_local_dir, cfg), cfg.trainer.max_ckpt_to_keep, self.dist, self.acc
        )
        self.kl_ctrl = core_algos.AdaptiveKLController.from_config(cfg.algorithm)
        self.entropy_control = AdaptiveEntropy.from_config(cfg.actor)
        self.global_step = 0
        profile_dir = format_path(cfg.trainer.profile_dir, cfg)
        self.profiler = StepProfiler(cfg.trainer.profile_steps, profile_dir, self.dist.rank, self.acc.type)
        self.tracking: Tracking | None = None
        if self.dist.is_main:
            record_start(cfg, self.log_dir, self._resume_from)
            self.tracking = Tracking(cfg.trainer.logger, str(self.log_dir), self.total_steps, config=cfg)
            for name, count in self.train_data.filtered.items():
                print(f"[npu_rl] filtered {count} prompts longer than {cfg.data.max_prompt_length} tokens in {name}")
            plans = self.plan.describe() + ("" if self.critic is None else f", critic {self.critic.plan.describe()}")
            print(f"[npu_rl] device {self.acc.type}, world size {self.dist.world_size}, {plans}")

    def _place(self, model: torch.nn.Module, trainable: bool) -> torch.nn.Module:
        """Shard across ranks (FSDP2 moves each shard to the device itself), or move whole when alone."""
        if self.dist.is_distributed:
            fsdp = self.cfg.actor.fsdp
            if not trainable:
                fsdp = dataclasses.replace(fsdp, param_offload=self.cfg.ref.param_offload)
            return distributed.shard_model(model, fsdp, self.acc, self.dist, trainable=trainable)
        return model.to(self.acc.torch_device(self.dist.local_rank))

    # ------------------------------------------------------------------------------------------
    def sampling_params(self) -> SamplingParams:
        return SamplingParams.for_training(self.cfg.rollout)

    # ------------------------------------------------------------------------------------------
    def train_step(self, records: list[PromptRecord]) -> dict[str, float]:
        """One GRPO step on this rank's share of the step's prompts."""
        cfg = self.cfg
        timer = Timer(self.acc.synchronize)
        stats = StepStats()
        params = self.sampling_params()
        with timer.section("step"):
            rollout, graded = self.step_rollouts.sample(records, params, timer, self.global_step, stats)
            dump_rollouts(
                cfg.trainer.rollout_data_dir, self.global_step + 1, rollout, graded, self.tokenizer, self.dist.is_main
            )
            scores = torch.tensor(graded.scores, dtype=torch.float32)

            batch = actor.build_policy_batch(rollout, self.pad_token_id)
            mask = batch.response_mask
            batch.rollout_logprobs = rollout.logprobs
            on_policy = cfg.actor.ppo_epochs == 1 and cfg.actor.ppo_mini_batch_size == cfg.data.train_batch_size
            kl_in_reward = cfg.algorithm.use_kl_in_reward and self.ref is not None
            correction = cfg.algorithm.rollout_correction
            estimator = core_algos.ADV_ESTIMATORS[cfg.algorithm.adv_estimator]
            wants_sum_pi_squared = getattr(estimator, "needs_sum_pi_squared", False)  # set by register_adv_estimator
            sum_pi_squared = None
            if correction.bypass_mode:  # the engine's log-probs stand for the old policy: no extra forward
                batch.old_logprobs = rollout.logprobs
            # several updates per rollout, KL priced into the reward, the engine's logprobs corrected, or
            # an estimator that reads the old policy's sum of squared probabilities
            elif not on_policy or kl_in_reward or correction.enabled or wants_sum_pi_squared:
                with timer.section("old_log_prob"):
                    batch.old_logprobs, _, sum_pi_squared = actor.compute_logprobs(
                        self.model, batch, params.temperature, cfg.rollout.log_prob_micro_batch_size_per_device,
                        self.plan, self.device, cfg.token_budgets()["rollout.log_prob_max_token_len_per_device"],
                        with_sum_pi_squared=wants_sum_pi_squared,
                    )  # fmt: skip
            if self.critic is not None:
                with timer.section("values"):
                    batch.values = self.critic.values(batch, self.device)
            if self.ref is not None:
                with timer.section("ref"), lora.adapters_disabled(self.ref):
                    batch.ref_logprobs = actor.compute_logprobs(
                        self.ref, batch, params.temperature, cfg.ref.log_prob_micro_batch_size_per_device,
                        self.ref_plan, self.device, cfg.token_budgets()["ref.log_prob_max_token_len_per_device"],
                    ).logprobs  # fmt: skip

            with timer.section("adv"):
                token_rewards = place_scores(scores, mask)
                if kl_in_reward:  # every token pays for its divergence from the reference
                    token_rewards = token_rewards - self._reward_kl(batch, stats) * mask
                rewards = token_rewards.sum(-1)
                all_sum = lambda t: distributed.all_reduce(t, "sum")  # noqa: E731
                weight = None
                if correction.enabled:  # rejected tokens leave the advantages and the update (verl's order)
                    mask, weight, corr_stats = rollout_correction.correct(
                        correction, batch.old_logprobs, rollout.logprobs, mask, all_sum
                    )
                    batch.response_mask = mask
                    stats.add_all("rollout_corr", corr_stats)
                a = cfg.algorithm
                inputs = AdvantageInputs(
                    token_rewards, mask, rollout.group, batch.values, a.gamma, a.lam, a.norm_adv_by_std_in_grpo,
                    all_sum=all_sum, old_logprobs=batch.old_logprobs, sum_pi_squared=sum_pi_squared, is_weights=weight,
                    **reward_inputs(graded),
                )  # fmt: skip
                batch.advantages, batch.returns = estimator(inputs)
                if sum_pi_squared is not None:  # verl logs its variance proxies whenever it has sum pi^2
                    record_variance_proxies(stats, token_baselines.variance_proxy_rows(inputs, batch.advantages))
                record_advantages(stats, batch.advantages, batch.returns, mask)  # before the IS weights, as verl
                if weight is not None:  # scaling A by w > 0 scales every clipped/dual-clipped token loss by w
                    batch.advantages = batch.advantages * weight

            mini_groups = cfg.actor.ppo_mini_batch_size // self.dist.world_size
            if self.critic is not None:
                with timer.section("update_critic"):
                    self.critic.update(
                        batch, cfg.actor.ppo_epochs, mini_groups, cfg.rollout.max_new_tokens, stats, self.device,
                        self.dist.world_size,
                    )  # fmt: skip
                record_critic(stats, batch.values, batch.returns, mask)
            if cfg.actor.mask_truncated_completions:
                batch = actor.without_truncated(batch, rollout.truncated)
            if self.global_step >= cfg.trainer.critic_warmup:  # the critic learns alone during its warm-up
                with timer.section("update_actor"):
                    actor.update_policy(
                        self.model, self.optimizer, self.scheduler, batch, cfg.actor, params.temperature, self.plan,
                        mini_groups, horizon=cfg.actor.loss_scale_factor or cfg.rollout.max_new_tokens, stats=stats,
                        device=self.device, world_size=self.dist.world_size, entropy_control=self.entropy_control,
                        bypass=correction if correction.bypass_mode else None,
                    )  # fmt: skip
            with timer.section("update_weights"):
                self.rollout.update_weights(lora.merged_tensors(distributed.iter_full_state_dict(self.model)))

        timer.record(stats)
        judged = [float(a) for a in graded.acc if a is not None]
        components = {**graded.components, **({"acc": judged} if judged else {})}
        record_data(
            stats, scores, rewards, rollout.lengths, rollout.prompt_lengths, params.max_new_tokens,
            cfg.data.max_prompt_length, components,
        )  # fmt: skip
        record_tool_metrics(stats, rollout.row_metrics)
        if graded.baselines is not None:  # remax: the greedy answers' scores, one per sampled row
            stats.add_values("critic/reward_baselines", torch.tensor(graded.baselines))
        stats.add_sum("reward/timeouts", graded.timeouts)
        stats.add_sum("reward/errors", graded.errors)
        stats.add_sum("perf/total_num_tokens", int(batch.attention_mask.sum()))
        metrics = stats.reduce()  # the step's one metrics collective
        metrics.update(
            perf_metrics(metrics, self.num_params, cfg.actor.ppo_epochs, self.dist.world_size, self.acc.peak_flops())
        )
        metrics.update(self.acc.memory_stats())
        return metrics

    def _reward_kl(self, batch: actor.PolicyBatch, stats: StepStats) -> torch.Tensor:
        """coef * per-token KL for the reward, then the coefficient's update from this step's mean
        per-sequence token-mean KL over all ranks (verl's apply_kl_penalty with its kl_ctrl)."""
        mask = batch.response_mask
        kl = core_algos.kl_estimate(batch.old_logprobs, batch.ref_logprobs, self.cfg.algorithm.kl_penalty) * mask
        coef = self.kl_ctrl.value
        seq_kl = kl.sum(-1) / mask.sum(-1).clamp(min=1)
        total = distributed.all_reduce(torch.tensor([float(seq_kl.sum()), float(len(seq_kl))], dtype=torch.float64))
        current = float(total[0] / total[1].clamp(min=1))
        self.kl_ctrl.update(current, int(total[1]))
        stats.add_max("actor/reward_kl_penalty", current)  # equal on every rank
        stats.add_max("actor/reward_kl_penalty_coeff", coef)
        return coef * kl

    # ------------------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """The validation set through the evaluator's path, this rank's share of the prompts; metrics
        over all ranks (npu_rl.evaluation.validation_metrics) and a few samples for the trackers."""
        if self.val_data is None:
            return {}
        records = self.val_data.records[self.dist.rank :: self.dist.world_size]
        graded = evaluate_records(
            self.rollout, records, self.tokenizer, self.val_reward, self.val_cfg, progress=self.dist.is_main
        )
        metrics = validation_metrics(
            graded,
            sorted({r.data_source for r in self.val_data.records}),
            self.val_cfg.n,
            self.cfg.rollout.multi_turn.enable,
            lambda t: distributed.all_reduce(t, op="sum"),
            lambda t: distributed.all_reduce(t, op="max"),
        )
        dump_validation(
            self.cfg.trainer.validation_data_dir, self.global_step, graded, self.tokenizer, self.dist.is_main
        )
        if self.tracking is not None and graded:
            samples = [
                {"prompt": g.record.prompt_text, "response": g.responses[0], "ground_truth": g.record.ground_truth,
                 "score": g.scores[0]}
                for g in graded[: self.cfg.trainer.log_val_generations]
            ]  # fmt: skip
            self.tracking.log_samples(samples, self.global_step)
        return metrics

    # ------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        what = f"saving checkpoint of step {self.global_step} to {self.checkpoints.root}"
        with Progress(what, total=1, unit="checkpoint", enabled=self.dist.is_main) as bar:
            self.checkpoints.save(
                self.global_step,
                self.model,
                self.optimizer,
                self.scheduler,
                trainer_state(self.global_step, self.sampler, self.kl_ctrl, self.entropy_control),
                self.model.config,
                self.tokenizer,
                getattr(self.model, "generation_config", None),
                extra_files={RUN_CONFIG: config_yaml(self.cfg)},
                others=self._others(),
            )
            bar.update()

    def _others(self) -> dict[str, tuple]:
        """Modules checkpointed beside the actor: the critic, and a reference that moves (ref.sync_steps)."""
        c = self.critic
        others = {} if c is None else {"critic": (c.model, c.optimizer, c.scheduler)}
        return {**others, "ref": (self.ref, None, None)} if self.cfg.ref.sync_steps else others

    def maybe_resume(self) -> None:
        path = self._resume_from
        if path is None:
            return
        changed = {key for key, *_ in self._config_changes}
        with Progress(f"loading checkpoint {path}", total=1, unit="checkpoint", enabled=self.dist.is_main) as bar:
            state = self.checkpoints.load(path, self.model, self.optimizer, self.scheduler, self._others())
            bar.update()
        self.global_step = restore_trainer_state(state, changed, self.sampler, self.kl_ctrl, self.entropy_control)
        if any(key.startswith("actor.optim.") or key.startswith("trainer.total_") for key in changed):
            apply_optim_config(self.optimizer, self.scheduler, self.cfg.actor.optim)
        # An engine with its own copy of the weights (vLLM) still holds model.path's: sync before sampling.
        self.rollout.update_weights(lora.merged_tensors(distributed.iter_full_state_dict(self.model)))
        if self.dist.is_main:
            print(f"[npu_rl] resumed from {path} at step {self.global_step}")
            if changed:
                print(f"[npu_rl] applied from step {self.global_step + 1} on: {', '.join(sorted(changed))}")

    def log(self, metrics: dict[str, float]) -> None:
        if self.tracking is not None:
            self.tracking.log(metrics, self.global_step)

    def fit(self) -> dict[str, float]:
        """Train to `total_steps`, validating and checkpointing on schedule; returns the last metrics
        (with trainer.val_only, only validate the model or the resumed checkpoint, as verl does).

        Each step's row (validation included) is logged durably before the checkpoint covering it is
        published, so a kill at any point loses no logged step. A first SIGTERM/SIGINT finishes the
        step, saves and exits with `StopRequested` (status 128 + signal); a second exits at once.
        """
        tcfg = self.cfg.trainer
        self.maybe_resume()
        if tcfg.val_only:  # verl's: the current (or resumed) policy's validation, logged, and nothing else
            last = self.validate()
            self.log(last)
            return last
        last: dict[str, float] = {}
        nonfinite = NonFiniteGuard(tcfg.max_nonfinite_steps, self.dist.is_main)
        with StopSignals() as stop:
            if tcfg.val_before_train and self.global_step == 0 and self.val_data is not None:
                self.log(self.validate())
            while self.global_step < self.total_steps:
                start = time.perf_counter()
                with self.profiler.step(self.global_step + 1):
                    last = self.train_step(self.step_rollouts.next_prompts())
                self.global_step += 1
                if self.cfg.ref.sync_steps and self.global_step % self.cfg.ref.sync_steps == 0:  # TR-DPO
                    mix_into(self.ref, self.model, self.cfg.ref.mixup_alpha)
                last["training/global_step"] = self.global_step
                last["training/epoch"] = self.sampler.epoch
                is_last = self.global_step == self.total_steps
                val_due = tcfg.test_freq > 0 and (self.global_step % tcfg.test_freq == 0 or is_last)
                if self.val_data is not None and val_due:
                    last.update(self.validate())
                last["timing_s/step_total"] = time.perf_counter() - start  # the checkpoint save is not counted
                self.log(last)  # durable (fsynced) before the checkpoint that covers this step
                nonfinite.check(last, self.global_step, self.model, self.checkpoints.latest)
                signum = int(distributed.all_reduce(torch.tensor(float(stop.signum)), "max"))  # ranks stop together
                if (tcfg.save_freq > 0 and self.global_step % tcfg.save_freq == 0) or is_last or signum:
                    self.save_checkpoint()
                if signum and not is_last:
                    raise StopRequested(self._stopped(signum))
        return last

    def _stopped(self, signum: int) -> int:
        """Say where the run stopped; the exit status (128 + signal, as if the signal had ended it)."""
        if self.dist.is_main:
            print(
                f"[npu_rl] stopped by signal {signum} after step {self.global_step}; checkpoint saved in "
                f"{self.checkpoints.root}. Run the same command again to resume",
                flush=True,
            )
        return 128 + signum

    def close(self) -> None:
        if self.tracking is not None:
            self.tracking.close()
        if self.run_lock is not None:
            self.run_lock.release()
        self.step_rollouts.close()
        self.val_reward.close()
        self.rollout.close()  # before the process group goes: vLLM's shutdown uses it
        distributed.destroy()
