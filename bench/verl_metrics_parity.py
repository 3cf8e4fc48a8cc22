"""npu_rl's step and validation metrics against verl's own metric functions, on random batches.

verl's `compute_data_metrics`, `compute_timing_metrics` and `process_validation_metrics`
(verl/trainer/ppo/metric_utils.py) and `log_seqlen_unbalance` (verl/utils/seqlen_balancing.py) are
parsed out of a checkout (verl is not installed) and run on a stand-in DataProto holding the rows
npu_rl's recorders get (npu_rl.metrics: record_data, record_advantages, record_critic, the timings;
npu_rl.balance.seqlen_balance), reduced through `StepStats` as a training step reduces them; and on
the graded validation prompts npu_rl.evaluation.validation_metrics gets (verl's "pred" are the
extracted answers, a missing one a vote of its own).

    python bench/verl_metrics_parity.py --verl /path/to/verl [--trials 100]

Rows: prompts of 1 to P tokens, left-padded to P as verl pads them (some exactly P: the prompt clip
ratio), responses of 1 to R tokens (some exactly R), tool-answer holes in the response mask of some
rows, 0 / 0.5 / 1 scores on the last token, a per-token KL shaping in the token rewards, advantages,
returns and critic values; step timings for verl's sections; 4 ranks' contiguous shares and a
shuffled equal-sized partition for global_seqlen. Validation: two data sources, 1 to 8 samples per
prompt, 0 / 0.5 / 1 rewards, correctness, answers from three values or none. Printed: the worst
difference of every metric both log, relative to max(1, |verl's value|) (validation metrics by
source/variable/name, whichever of val-core / val-aux npu_rl files them under), and verl's metrics
npu_rl does not log. Exit 1 above 1e-6.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import types
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npu_rl.balance import seqlen_balance
from npu_rl.data import PromptRecord
from npu_rl.evaluation import GradedPrompt, validation_metrics
from npu_rl.metrics import StepStats, record_advantages, record_critic, record_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _source_functions import source_functions

PROMPT, RESPONSE, RANKS = 12, 16, 4
SECTIONS = ("gen", "reward", "old_log_prob", "ref", "values", "adv", "update_critic", "update_actor", "step")


def load_verl(checkout: Path) -> dict[str, Any]:
    """verl's data, timing and sequence-balance metric functions, by name."""
    namespace: dict[str, Any] = {
        "torch": torch, "np": np, "Any": Any, "Callable": Callable, "DataProto": object, "defaultdict": defaultdict,
        "partial": partial,
    }  # fmt: skip
    wanted = {"compute_data_metrics", "compute_timing_metrics", "_compute_response_info", "process_validation_metrics"}
    wanted |= {"bootstrap_metric", "calc_maj_val"}
    functions = source_functions(checkout / "verl/trainer/ppo/metric_utils.py", wanted.__contains__, namespace)
    source_functions(checkout / "verl/utils/seqlen_balancing.py", "log_seqlen_unbalance".__eq__, functions)
    return functions


def random_step(seed: int) -> dict[str, Any]:
    """One step's rows as npu_rl's trainer holds them (lengths, per-row scores, [rows, R] token tensors)."""
    gen = torch.Generator().manual_seed(seed)
    rows = RANKS * int(torch.randint(1, 5, (), generator=gen))
    prompts = torch.randint(1, PROMPT + 1, (rows,), generator=gen)
    responses = torch.randint(1, RESPONSE + 1, (rows,), generator=gen)
    prompts[0], responses[1] = PROMPT, RESPONSE  # both clip ratios nonzero
    within = torch.arange(RESPONSE)[None, :] < responses[:, None]
    mask = within.clone()
    for row in range(0, rows, 3):  # a tool answer inside the response: not trained on, still counted in length
        start = int(torch.randint(0, int(responses[row]), (), generator=gen))
        mask[row, start : start + 2] = False
    mask = mask & within
    scores = torch.randint(0, 3, (rows,), generator=gen).float() / 2
    last = (responses - 1).clamp(min=0)
    token_scores = torch.zeros(rows, RESPONSE).index_put_((torch.arange(rows), last), scores)
    token_rewards = token_scores - 0.01 * torch.rand(rows, RESPONSE, generator=gen) * mask
    values = torch.randn(rows, RESPONSE, generator=gen) * mask
    returns = (token_rewards.flip(-1).cumsum(-1).flip(-1) + 0.1 * torch.randn(rows, RESPONSE, generator=gen)) * mask
    advantages = (returns - values) * mask
    timings = {name: float(t) for name, t in zip(SECTIONS, torch.rand(len(SECTIONS), generator=gen) * 10, strict=True)}
    return {
        "prompts": prompts, "responses": responses, "within": within, "mask": mask, "scores": scores,
        "token_scores": token_scores, "token_rewards": token_rewards, "values": values, "returns": returns,
        "advantages": advantages, "timings": timings, "partition": torch.randperm(rows, generator=gen),
    }  # fmt: skip


def ours(step: dict[str, Any]) -> dict[str, float]:
    """npu_rl's metrics of the step, recorded and reduced as `GRPOTrainer.train_step` does."""
    stats = StepStats()
    for name, seconds in step["timings"].items():
        stats.add_max(f"timing_s/{name}", seconds)
    record_data(
        stats, step["scores"], step["token_rewards"].sum(-1), step["responses"], step["prompts"], RESPONSE, PROMPT, {}
    )
    record_advantages(stats, step["advantages"], step["returns"], step["mask"])
    record_critic(stats, step["values"], step["returns"], step["mask"])
    metrics = stats.reduce()
    tokens = (step["prompts"] + step["responses"]).tolist()
    share = len(tokens) // RANKS
    before = [sum(tokens[r * share : (r + 1) * share]) for r in range(RANKS)]
    parts = step["partition"].view(RANKS, share).tolist()
    after = [sum(tokens[i] for i in part) for part in parts]
    metrics.update({f"global_seqlen/{k}": v for k, v in seqlen_balance(before, after).items()})
    return metrics


def verls(verl: dict[str, Any], step: dict[str, Any]) -> dict[str, float]:
    """verl's metrics of the same step, from a DataProto stand-in (prompts left-padded to P)."""
    prompt_mask = torch.arange(PROMPT)[None, :] >= (PROMPT - step["prompts"])[:, None]
    tensors = {
        "attention_mask": torch.cat([prompt_mask, step["within"]], dim=-1).long(),
        "responses": torch.zeros(len(step["prompts"]), RESPONSE, dtype=torch.long),
        "response_mask": step["mask"].long(),
        "token_level_scores": step["token_scores"],
        "token_level_rewards": step["token_rewards"],
        "advantages": step["advantages"],
        "returns": step["returns"],
        "values": step["values"],
    }
    batch = types.SimpleNamespace(batch=tensors, non_tensor_batch={}, meta_info={})
    metrics = {**verl["compute_data_metrics"](batch, use_critic=True)}
    metrics.update(verl["compute_timing_metrics"](batch, step["timings"]))
    seqlen = tensors["attention_mask"].sum(-1).tolist()
    parts = step["partition"].view(RANKS, -1).tolist()
    metrics.update(verl["log_seqlen_unbalance"](seqlen_list=seqlen, partitions=parts, prefix="global_seqlen"))
    return {key: float(value) for key, value in metrics.items()}


def random_validation(seed: int) -> tuple[list[GradedPrompt], int]:
    """Graded validation prompts of two data sources with n samples each (source "b" never judged)."""
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 9, (), generator=gen))
    graded = []
    for index in range(int(torch.randint(2, 7, (), generator=gen))):
        source = "ab"[index % 2]
        scores = (torch.randint(0, 3, (n,), generator=gen).float() / 2).tolist()
        acc = [s == 1.0 for s in scores] if source == "a" else [None] * n
        answers = [[None, "1", "2", "3"][i] for i in torch.randint(0, 4, (n,), generator=gen).tolist()]
        record = PromptRecord(index, [1], "p", [], source, "1", "math", {}, "f", index)
        graded.append(GradedPrompt(record, ["r"] * n, acc, scores, answers, [1] * n, ["stop"] * n))
    return graded, n


def verl_validation(verl: dict[str, Any], prompts: list[GradedPrompt], var: str, values: list[float]) -> dict:
    """verl's process_validation_metrics of one variable over `prompts` (its "[none]" for a missing answer)."""
    sources = [g.record.data_source for g in prompts for _ in g.answers]
    uids = [str(g.record.index) for g in prompts for _ in g.answers]
    votes = [a if a is not None else "[none]" for g in prompts for a in g.answers]
    return verl["process_validation_metrics"](sources, uids, {var: values, "pred": votes})


def compare_validation(verl: dict[str, Any], seed: int) -> dict[str, float]:
    """The relative difference of every validation metric verl computes (reward over all prompts, acc
    over the judged ones), keyed val/<variable>/<name with @k> (worst over the sources and sizes)."""
    graded, n = random_validation(seed)
    mine = validation_metrics(graded, ["a", "b"], n, False, lambda t: t)
    ours = {key.split("/", 1)[1]: value for key, value in mine.items()}  # without the val-core / val-aux section
    judged = [g for g in graded if g.judged]
    tables = [verl_validation(verl, graded, "reward", [s for g in graded for s in g.scores])]
    if judged:
        tables.append(verl_validation(verl, judged, "acc", [float(a) for g in judged for a in g.acc]))
    out: dict[str, float] = {}
    for table in tables:
        for source, variables in table.items():
            for var, metrics in variables.items():
                for name, value in metrics.items():
                    mine_value = ours.get(f"{source}/{var}/{name}")
                    diff = math.inf if mine_value is None else abs(mine_value - value) / max(1.0, abs(value))
                    key = f"val/{var}/{re.sub(r'@[0-9]+', '@k', name)}"  # every sample count k in one row
                    out[key] = max(out.get(key, 0.0), diff)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verl", type=Path, required=True, help="a verl checkout (the folder holding verl/)")
    parser.add_argument("--trials", type=int, default=100, help="random steps")
    args = parser.parse_args(argv)
    verl = load_verl(args.verl)
    worst: dict[str, float] = {}
    missing: set[str] = set()
    for seed in range(args.trials):
        step = random_step(seed)
        mine, theirs = ours(step), verls(verl, step)
        missing |= set(theirs) - set(mine)
        for key in set(theirs) & set(mine):
            a, b = mine[key], theirs[key]
            diff = 0.0 if (math.isnan(a) and math.isnan(b)) else abs(a - b) / max(1.0, abs(b))
            worst[key] = max(worst.get(key, 0.0), diff if not math.isnan(diff) else math.inf)
        if "process_validation_metrics" in verl:
            for key, diff in compare_validation(verl, seed).items():
                worst[key] = max(worst.get(key, 0.0), diff)
    unlogged = sorted(missing) or "none"
    print(f"[verl_metrics_parity] {args.trials} random steps; verl metrics not logged here: {unlogged}")
    print(f"{'metric':40s} {'worst rel. diff':>15s}")
    for key in sorted(worst):
        print(f"{key:40s} {worst[key]:15.2e}")
    return 1 if max(worst.values(), default=math.inf) > 1e-6 else 0


if __name__ == "__main__":
    sys.exit(main())
