"""trainer.balance_batch (npu_rl.balance): the ranks trade whole groups so that every mini-batch's
tokens are even across ranks, while each mini-batch keeps exactly its groups and every row keeps its
grades. Ranks are simulated in one process (the gather is the only collective); the torchrun
1-vs-2-rank training equality (tests/test_distributed.py, tests/test_algorithms_dist.py) runs with it on.
"""

from __future__ import annotations

import pytest
import torch

from npu_rl.balance import balance_groups, equal_size_parts, group_costs
from npu_rl.data import PromptRecord
from npu_rl.reward_manager import RewardBatch
from npu_rl.rollout.batch import RolloutBatch

N = 2  # samples per prompt


def rank_batch(rank: int, lengths: list[int]) -> tuple[RolloutBatch, RewardBatch]:
    """A rank's graded rollouts: groups of N rows with the given response lengths, prompts of 3 tokens;
    every row's score, acc, component and metric encode (uid, sample) so they can be followed."""
    groups = len(lengths) // N
    records = [PromptRecord(100 * rank + g, [1, 2, 3], "p", [], "s", "1", "math", {}, "f", 100 * rank + g)
               for g in range(groups)]  # fmt: skip
    width = max(lengths)
    lens = torch.tensor(lengths)
    ids = torch.where(torch.arange(width)[None, :] < lens[:, None], 7, 0)
    group = torch.arange(groups).repeat_interleave(N)
    sample = torch.arange(N).repeat(groups)
    tag = [float(100 * rank + g) + s / 10 for g, s in zip(group.tolist(), sample.tolist(), strict=True)]
    batch = RolloutBatch(ids, -ids.float(), lens, ["stop"] * len(lens), group, sample, records=records,
                         row_metrics={"turns": torch.tensor(tag)})  # fmt: skip
    grades = RewardBatch(tag, [t % 2 > 0.5 for t in tag], {"tier": list(tag), "graded_all": [0.0] * 7},
                         timeouts=rank + 1, errors=10 * rank)  # fmt: skip
    return batch, grades


def test_equal_size_parts_are_equal_sized_balanced_and_deterministic():
    costs = [90, 10, 80, 20, 70, 30, 60, 40]
    parts = equal_size_parts(costs, 2)
    assert [len(p) for p in parts] == [4, 4] and sorted(i for p in parts for i in p) == list(range(8))
    assert [sum(costs[i] for i in p) for p in parts] == [200, 200]
    assert equal_size_parts(costs, 2) == parts and equal_size_parts(costs, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="equal parts"):
        equal_size_parts(costs, 3)


def test_ranks_trade_groups_within_each_mini_batch_and_rows_keep_their_grades():
    # rank 0 drew the long responses, rank 1 the short ones; 4 groups each, mini-batches of 2 groups per rank
    ranks = [rank_batch(0, [40, 38, 30, 35, 44, 41, 39, 33]), rank_batch(1, [3, 5, 2, 4, 6, 1, 2, 2])]

    def gather(obj):
        return ranks

    results = [balance_groups(*ranks[r], mini_groups=2, rank=r, world=2, gather=gather) for r in range(2)]
    out = [(batch, grades) for batch, grades, _ in results]
    before = [sum(group_costs(b)) for b, _ in ranks]
    after = [sum(group_costs(b)) for b, _ in out]
    assert sum(after) == sum(before) and max(after) - min(after) < (max(before) - min(before)) / 4
    # verl's global_seqlen/*: each rank's rows (prompt + response tokens) before and after, alike on every rank
    rows_before = [int(b.lengths.sum()) + 3 * len(b.lengths) for b, _ in ranks]
    rows_after = [int(b.lengths.sum()) + 3 * len(b.lengths) for b, _ in out]
    assert rows_before == [324, 49]
    seqlen = {"min": 49, "max": 324, "minmax_diff": 275, "mean": 186.5}
    seqlen |= {"balanced_min": min(rows_after), "balanced_max": max(rows_after)}
    assert results[0][2] == results[1][2] == seqlen and seqlen["balanced_max"] - seqlen["balanced_min"] < 275 / 4
    for k in range(2):  # mini-batch k: the same prompts as before over the two ranks, two on each
        was = {r.index for b, _ in ranks for r in b.records[2 * k : 2 * k + 2]}
        now = [{r.index for r in b.records[2 * k : 2 * k + 2]} for b, _ in out]
        assert now[0] | now[1] == was and not now[0] & now[1] and [len(s) for s in now] == [2, 2]
    for batch, grades in out:
        assert batch.num_groups == 4 and batch.group.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        rows = zip(batch.group.tolist(), batch.sample.tolist(), strict=True)
        tag = [float(batch.records[g].index) + s / 10 for g, s in rows]
        assert grades.scores == tag and grades.components["tier"] == tag  # per-row values followed their rows
        assert batch.row_metrics["turns"].tolist() == pytest.approx(tag)
        assert grades.acc == [t % 2 > 0.5 for t in tag]
        assert (batch.lengths == (batch.response_ids == 7).sum(-1)).all()  # ids padded to the widest rank
    # what the grader did stays with the rank that did it
    assert [(g.timeouts, g.errors, len(g.components["graded_all"])) for _, g in out] == [(1, 0, 7), (2, 10, 7)]


def test_a_rank_alone_keeps_its_rows_and_logs_the_trivial_seqlen():
    batch, grades = rank_batch(0, [4, 2, 5, 1])

    def gather(obj):
        raise AssertionError("nothing to exchange alone")

    out, out_grades, seqlen = balance_groups(batch, grades, mini_groups=2, rank=0, world=1, gather=gather)
    assert out is batch and out_grades is grades
    assert seqlen == {"min": 24, "max": 24, "minmax_diff": 0, "balanced_min": 24, "balanced_max": 24, "mean": 24}


def test_the_balance_bench_runs_and_evens_out_a_long_tail():
    """bench/balance.py (its figures are in bench/README.md) on one seeded step of 4 ranks."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "balance.py"
    spec = importlib.util.spec_from_file_location("balance_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before, after, saved, size = bench.run(world=4, mini_batch=64, steps=1, seed=0)
    assert after[0] < before[0] and after[0] < 1.01 and saved[0] > 0 and size > 0
