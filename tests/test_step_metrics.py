"""npu_rl.metrics: verl's step metrics as verl computes them (token-weighted advantages, explained variance,
time per token), reduced through one StepStats; bench/verl_metrics_parity.py runs verl's own functions."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from npu_rl.metrics import StepStats, record_advantages, record_critic, record_data

MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 1]])


def test_advantages_and_returns_are_averaged_over_valid_tokens():
    advantages = torch.tensor([1.0, -1.0, 0.5])[:, None] * torch.ones(3, 4) * MASK
    stats = StepStats()
    record_advantages(stats, advantages + 100 * (1 - MASK), advantages, MASK)  # masked entries are ignored
    metrics = stats.reduce()
    # verl's masked_select: the 3-token row weighs three times the 1-token row (a per-row mean would be 1/6)
    assert metrics["critic/returns/mean"] == pytest.approx((3 - 1 + 1.5) / 7)
    assert metrics["critic/advantages/max"] == 1.0 and metrics["critic/returns/min"] == -1.0  # no 100s


def test_explained_variance_is_verls_over_every_share_of_tokens():
    gen = torch.Generator().manual_seed(0)
    values, returns = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen) + 3
    stats = StepStats()
    for share in range(2):  # two ranks' (or calls') sums add up to the whole batch's statistics
        record_critic(stats, values[share], returns[share], MASK)
    metrics = stats.reduce()
    valid = MASK.bool()
    r = torch.cat([returns[0][valid], returns[1][valid]]).double()
    v = torch.cat([values[0][valid], values[1][valid]]).double()
    expected = 1 - torch.var(r - v) / (torch.var(r) + 1e-5)
    assert metrics["critic/vf_explained_var"] == pytest.approx(float(expected), rel=1e-9)
    assert metrics["critic/values/mean"] == pytest.approx(float(v.mean()))
    assert not [key for key in metrics if key.startswith("_")], "the private sums are popped"
    one = StepStats()
    record_critic(one, values[0], returns[0], torch.tensor([[1, 0, 0, 0]] + [[0] * 4] * 2))
    assert math.isnan(one.reduce()["critic/vf_explained_var"])  # one token: torch.var is NaN for verl too


def test_time_per_token_uses_response_tokens_for_generation_and_all_tokens_for_the_rest():
    stats = StepStats()
    for name, seconds in (("gen", 3.0), ("update_actor", 6.0), ("reward", 1.0)):
        stats.add_max(f"timing_s/{name}", seconds)
    responses, prompts = torch.tensor([10, 20]), torch.tensor([5, 5])
    record_data(stats, torch.zeros(2), torch.zeros(2), responses, prompts, 20, 5, {})
    metrics = stats.reduce()
    assert metrics["timing_per_token_ms/gen"] == pytest.approx(3000 / 30)
    assert metrics["timing_per_token_ms/update_actor"] == pytest.approx(6000 / 40)
    assert "timing_per_token_ms/reward" not in metrics and "timing_per_token_ms/ref" not in metrics  # verl's list
    assert metrics["response_length/clip_ratio"] == 0.5 and metrics["prompt_length/clip_ratio"] == 1.0


# our own minimal stand-ins for verl's metric functions (the real ones are run by hand, bench/README.md)
STAND_IN_METRICS = """
def _compute_response_info(batch):
    width = batch.batch["responses"].shape[-1]
    mask = batch.batch["attention_mask"]
    return {"prompt_length": mask[:, :-width].sum(-1).float(), "response_length": mask[:, -width:].sum(-1).float()}


def compute_data_metrics(batch, use_critic=True):
    valid = batch.batch["response_mask"].bool()
    advantages = batch.batch["advantages"]
    per_row = (advantages * valid).sum(-1) / valid.sum(-1)  # WRONG_ON_PURPOSE: a per-row mean
    return {
        "critic/score/mean": batch.batch["token_level_scores"].sum(-1).mean().item(),
        "critic/advantages/mean": (per_row.mean() if WRONG else advantages[valid].mean()).item(),
        "response/aborted_ratio": 0.0,
    }


def compute_timing_metrics(batch, timing_raw):
    tokens = _compute_response_info(batch)["response_length"].sum().item()
    return {"timing_per_token_ms/gen": timing_raw["gen"] * 1000 / tokens}


def process_validation_metrics(data_sources, sample_uids, infos_dict, seed=42):
    out = {}
    for var, values in infos_dict.items():
        if isinstance(values[0], str):
            continue
        prompts = {}
        for source, uid, value in zip(data_sources, sample_uids, values):
            prompts.setdefault(source, {}).setdefault(uid, []).append(value)
        for source, by_uid in prompts.items():
            means = [sum(v) / len(v) for v in by_uid.values()]
            n = len(next(iter(by_uid.values())))
            out.setdefault(source, {})[var] = {f"mean@{n}": sum(means) / len(means)}
    return out
"""

STAND_IN_SEQLEN = """
def log_seqlen_unbalance(seqlen_list, partitions, prefix):
    sums = [sum(seqlen_list[i] for i in part) for part in partitions]
    return {f"{prefix}/balanced_max": max(sums)}
"""


@pytest.mark.parametrize("wrong", [False, True])
def test_verl_metrics_parity_script_finds_agreement_and_disagreement(tmp_path, wrong):
    (tmp_path / "verl" / "trainer" / "ppo").mkdir(parents=True)
    (tmp_path / "verl" / "utils").mkdir()
    metric_utils = f"WRONG = {wrong}\n" + STAND_IN_METRICS
    (tmp_path / "verl" / "trainer" / "ppo" / "metric_utils.py").write_text(metric_utils)
    (tmp_path / "verl" / "utils" / "seqlen_balancing.py").write_text(STAND_IN_SEQLEN)
    script = Path(__file__).resolve().parents[1] / "bench" / "verl_metrics_parity.py"
    done = subprocess.run(
        [sys.executable, str(script), "--verl", str(tmp_path), "--trials", "5"], capture_output=True, text=True
    )
    assert done.returncode == int(wrong), done.stdout + done.stderr
    assert "not logged here: ['response/aborted_ratio']" in done.stdout
    worst = {line.split()[0]: float(line.split()[1]) for line in done.stdout.splitlines()[2:]}
    assert set(worst) == {"critic/score/mean", "critic/advantages/mean", "timing_per_token_ms/gen",
                          "global_seqlen/balanced_max", "val/reward/mean@k", "val/acc/mean@k"}  # fmt: skip
    assert worst["val/reward/mean@k"] == worst["val/acc/mean@k"] == 0
    assert (worst["critic/advantages/mean"] > 1e-3) == wrong and worst["global_seqlen/balanced_max"] == 0
