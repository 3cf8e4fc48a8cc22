"""One step's graded rollouts: generation, grading, reward shaping and DAPO's dynamic sampling.

This is one job with its own state (the rollout engine it drives, the reward workers, the prompt
sampler it draws refills from), so it lives apart from the trainer, which asks for this rank's
rollouts and their scores and gets them, however many generation batches that took.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from npu_rl import distributed
from npu_rl.algos import dapo
from npu_rl.balance import balance_groups
from npu_rl.config import Config
from npu_rl.core_algos import ADV_ESTIMATORS
from npu_rl.data import BatchSampler, PromptRecord
from npu_rl.distributed import DistInfo
from npu_rl.metrics import StepStats, Timer
from npu_rl.reward_manager import ModelScorer, RewardBatch, RewardItem, RewardManager
from npu_rl.rollout import RolloutBatch, RolloutEngine, SamplingParams, generate
from npu_rl.rollout.tool_metrics import tool_shaping
from npu_rl.seeds import prompt_seed


def shard_prompts(records: list[PromptRecord], mini_batch: int, rank: int, world: int) -> list[PromptRecord]:
    """This rank's prompts: an equal slice of every mini-batch, so the ranks' mini-batch k together
    hold exactly the prompts of the single-process mini-batch k (same updates at any world size)."""
    per_rank = mini_batch // world
    return [
        r
        for start in range(0, len(records), mini_batch)
        for r in records[start + rank * per_rank : start + (rank + 1) * per_rank]
    ]


def add_term(graded: RewardBatch, name: str, values: list[float]) -> None:
    """Add a shaping term (weight 1) to the scores, as a term of its own (GDPO normalizes it apart) and a
    logged component."""
    graded.scores = [s + v for s, v in zip(graded.scores, values, strict=True)]
    if graded.terms:  # (a reward that reports no terms keeps reporting none)
        graded.terms = [[*row, v] for row, v in zip(graded.terms, values, strict=True)]
        graded.term_weights = [*graded.term_weights, 1.0]
    graded.components[name] = values


class StepRollouts:
    """Generates and grades this rank's rollouts of a step (reward workers owned here)."""

    def __init__(
        self,
        cfg: Config,
        engine: RolloutEngine,
        tokenizer,
        sampler: BatchSampler,
        dist: DistInfo,
        reward_model: ModelScorer | None = None,
    ) -> None:
        self.cfg, self.engine, self.tokenizer, self.sampler, self.dist = cfg, engine, tokenizer, sampler, dist
        self.reward = RewardManager(cfg.reward, model=reward_model)

    def grade(self, batch: RolloutBatch) -> RewardBatch:
        texts = batch.decode(self.tokenizer)
        rows = zip(batch.row_records, texts, batch.truncated, strict=True)
        return self.reward.score(
            [
                RewardItem(
                    rec.data_source, text, rec.ground_truth, rec.extra_info, cut, rec.messages or rec.prompt_text
                )
                for rec, text, cut in rows
            ]
        )

    def generate_and_grade(
        self, records: list[PromptRecord], params: SamplingParams, timer: Timer, step: int
    ) -> tuple[RolloutBatch, RewardBatch]:
        """One generation batch, graded; DAPO's overlong penalty and multi-turn tool shaping are added to
        the scores and logged as their own reward terms. An estimator with a greedy baseline (remax) also
        gets each prompt's greedy answer graded the same way, as `RewardBatch.baselines` (one per row)."""
        seeds = [prompt_seed(self.cfg.trainer.seed, step, r.index) for r in records]
        with timer.section("gen"):
            rollout = generate(self.engine, records, params, seeds)
        with timer.section("reward"):
            graded = self.shaped_grade(rollout, params.max_new_tokens)
        if getattr(ADV_ESTIMATORS[self.cfg.algorithm.adv_estimator], "greedy_baseline", False):
            greedy = dataclasses.replace(params, n=1, temperature=0.0)
            with timer.section("gen_max"):  # verl's timing name for ReMax's greedy pass
                answers = generate(self.engine, records, greedy, seeds)
            with timer.section("reward"):
                scores = self.shaped_grade(answers, params.max_new_tokens).scores
            graded.baselines = [scores[g] for g in rollout.group.tolist()]
        return rollout, graded

    def shaped_grade(self, rollout: RolloutBatch, max_new_tokens: int) -> RewardBatch:
        """The reward with its shaping terms: what the samples and (remax) the greedy answers both get."""
        graded = self.grade(rollout)
        ob = self.cfg.reward.overlong_buffer
        if ob.enable:
            penalty = dapo.overlong_penalty(rollout.lengths, max_new_tokens, ob.len, ob.penalty_factor)
            add_term(graded, "overlong_reward", penalty.tolist())
        shaping = tool_shaping(rollout.row_metrics, self.cfg.rollout.multi_turn)
        if shaping is not None:  # multi-turn tool-use shaping, logged as its own term
            add_term(graded, "tool_shaping", shaping.tolist())
        return graded

    def sample(
        self, records: list[PromptRecord], params: SamplingParams, timer: Timer, step: int, stats: StepStats
    ) -> tuple[RolloutBatch, RewardBatch]:
        """This rank's graded rollouts. With algorithm.filter_groups.enable they may take several generation
        batches of data.gen_batch_size prompts (DAPO dynamic sampling, `npu_rl.algos.dapo.dynamic_sampling`,
        drawing further batches from the sampler, each rank its shard) until the rank keeps its share of
        data.train_batch_size groups, logged as batch/num_gen_batches. With
        trainer.balance_batch the ranks then trade groups to even out their tokens (npu_rl.balance),
        logged as verl's global_seqlen/*."""
        fg = self.cfg.algorithm.filter_groups
        rollout, graded = self.generate_and_grade(records, params, timer, step)
        batches = 1
        if fg.enable:

            def more() -> tuple[RolloutBatch, RewardBatch]:
                return self.generate_and_grade(self.next_prompts(), params, timer, step)

            def any_rank_short(short: bool) -> bool:
                return float(distributed.all_reduce(torch.tensor([float(short)]), "sum")[0]) > 0

            need = self.cfg.data.train_batch_size // self.dist.world_size  # of data.gen_batch_size drawn
            rollout, graded, batches = dapo.dynamic_sampling(
                (rollout, graded), need, fg.metric, fg.max_num_gen_batches, more, any_rank_short
            )
        stats.add_max("batch/num_gen_batches", batches)  # ranks generate in lockstep
        if self.cfg.trainer.balance_batch:  # alone: nothing to trade (no timing), verl's trivial global_seqlen
            with timer.section("balance") if self.dist.world_size > 1 else contextlib.nullcontext():
                mini_groups = self.cfg.actor.ppo_mini_batch_size // self.dist.world_size
                rollout, graded, seqlen = balance_groups(
                    rollout, graded, mini_groups, self.dist.rank, self.dist.world_size
                )
            stats.add_all("global_seqlen", seqlen)  # the same on every rank
        return rollout, graded

    def next_prompts(self) -> list[PromptRecord]:
        """This rank's share of the sampler's next generation batch (data.gen_batch_size prompts, by default
        data.train_batch_size)."""
        batch = self.sampler.next_batch()
        return shard_prompts(batch, self.cfg.actor.ppo_mini_batch_size, self.dist.rank, self.dist.world_size)

    def close(self) -> None:
        self.reward.close()
