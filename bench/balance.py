"""How much `trainer.balance_batch` evens out the ranks' tokens (npu_rl.balance), on seeded steps.

    python bench/balance.py                      # 2, 4 and 8 ranks, the sample's batch shape
    python bench/balance.py --ranks 8 --steps 50

Each simulated step is the Ascend sample's shape spread over R ranks: 256 prompts x 8 samples in
mini-batches of 256 prompts (the sample: one update per step) or 64 (four), prompts of 60-400
tokens, responses with a long tail (70 % 50-400 tokens, 30 % 600-1024, the limit). Each rank's
graded rollouts are built as the trainer holds them and `balance_groups` runs for every rank with
the gather simulated in one process (the real code path minus the collective). Reported per rank
count and mini-batch size, over the steps (median / worst): the heaviest rank's tokens over the
mean rank's, before and after (summed over the step's mini-batches, each of which a synchronous
pass waits out), and the share of a token-bound training pass the slowest rank no longer waits
(1 - heaviest after / heaviest before). Also the pickled size of one rank's rollouts, which is what
the one all-gather moves. No timing: the figures do not depend on the machine.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npu_rl.balance import balance_groups, group_costs
from npu_rl.data import PromptRecord
from npu_rl.reward_manager import RewardBatch
from npu_rl.rollout.batch import RolloutBatch

PROMPTS, N, LIMIT = 256, 8, 1024


def rank_rollouts(gen: torch.Generator, rank: int, groups: int) -> tuple[RolloutBatch, RewardBatch]:
    plens = torch.randint(60, 401, (groups,), generator=gen).tolist()
    records = [PromptRecord(rank * groups + g, [5] * p, "", [], "s", "0", "math", {}, "x", rank * groups + g)
               for g, p in enumerate(plens)]  # fmt: skip
    rows = groups * N
    short = torch.randint(50, 401, (rows,), generator=gen)
    long = torch.randint(600, LIMIT + 1, (rows,), generator=gen)
    lengths = torch.where(torch.rand(rows, generator=gen) < 0.7, short, long)
    ids = torch.where(torch.arange(LIMIT)[None, :] < lengths[:, None], 7, 0)
    group = torch.arange(groups).repeat_interleave(N)
    batch = RolloutBatch(ids, torch.zeros(ids.shape), lengths, ["stop"] * rows, group, torch.arange(N).repeat(groups),
                         records=records)  # fmt: skip
    return batch, RewardBatch([0.0] * rows, [False] * rows)


def mini_batch_maxima(batches: list[RolloutBatch], mini_groups: int) -> tuple[int, float]:
    """Summed over mini-batches: the heaviest rank's tokens (what a synchronous pass waits for), and
    the mean rank's."""
    heaviest = mean = 0.0
    for start in range(0, batches[0].num_groups, mini_groups):
        tokens = [sum(group_costs(b)[start : start + mini_groups]) for b in batches]
        heaviest, mean = heaviest + max(tokens), mean + statistics.mean(tokens)
    return int(heaviest), mean


def run(world: int, mini_batch: int, steps: int, seed: int) -> tuple[list[float], list[float], list[float], int]:
    before, after, saved = [], [], []
    size, mini_groups = 0, mini_batch // world
    for step in range(steps):
        gen = torch.Generator().manual_seed(seed * 1000 + step)
        ranks = [rank_rollouts(gen, r, PROMPTS // world) for r in range(world)]
        size = len(pickle.dumps(ranks[0]))
        out = [balance_groups(*ranks[r], mini_groups, r, world, gather=lambda obj, x=ranks: x)[0] for r in range(world)]
        heaviest, mean = mini_batch_maxima([b for b, _ in ranks], mini_groups)
        balanced, _ = mini_batch_maxima(out, mini_groups)
        before.append(heaviest / mean)
        after.append(balanced / mean)
        saved.append(1 - balanced / heaviest)
    return before, after, saved, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--mini-batch", type=int, nargs="+", default=[256, 64], help="prompts per mini-batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{PROMPTS} prompts x {N} samples per step, {args.steps} seeded steps; median / worst step")
    print(f"{'ranks':>5} {'mini-batch':>10} {'max/mean before':>16} {'max/mean after':>16} {'slowest waits less':>19} "
          f"{'gathered MB':>11}")  # fmt: skip
    for mini_batch in args.mini_batch:
        for world in args.ranks:
            before, after, saved, size = run(world, mini_batch, args.steps, args.seed)
            cells = [f"{statistics.median(v):.3f} / {max(v):.3f}" for v in (before, after)]
            cells.append(f"{statistics.median(saved):.1%} / {max(saved):.1%}")
            print(f"{world:>5} {mini_batch:>10} {cells[0]:>16} {cells[1]:>16} {cells[2]:>19} {size / 2**20:>11.1f}")


if __name__ == "__main__":
    main()
