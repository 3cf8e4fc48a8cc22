"""npu_rl's policy losses and advantage estimators against verl's own functions, on random batches.

verl is not a dependency, so this runs against a verl checkout the user points at: the functions of
`verl/trainer/ppo/core_algos.py` (`compute_policy_loss_<name>`, `compute_<name>_outcome_advantage`,
`compute_gae_advantage_return`, `agg_loss`) and the masked statistics of `verl/utils/torch_functional.py`
they call are parsed out of the files (decorators dropped) and run on the same inputs as npu_rl's
registered function of the same name.

    python bench/verl_parity.py --verl /path/to/verl [--trials 200]

Losses: rows of random length (some empty), advantages with ties and zeros, log-ratios of a few tenths,
so clips, dual clips and the covariance selections all occur; clip_cov's random choice is seeded alike on
both sides; compared: the reduced loss, its gradient and verl's metrics. verl's geo_mean averages the rows
of its micro-batch with torch.mean (empty rows included), npu_rl the non-empty sequences: verl's value is
rescaled by rows / non-empty rows first (docs/algorithms.md). Estimators: groups of 1 to 4 samples,
scores with ties (0, 0.5, 1) on each row's last token, critic values for gae; compared: advantages and
returns on the valid tokens. The script exits 1 when any difference exceeds 1e-6.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import math
import os
import sys
import types
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from npu_rl import core_algos
from npu_rl.algos import rollout_correction, token_baselines
from npu_rl.algos.advantages import AdvantageInputs, place_scores
from npu_rl.config import ActorConfig, OptimConfig
from npu_rl.config.objective import RolloutCorrectionConfig
from npu_rl.metrics import StepStats, record_variance_proxies
from npu_rl.optim import build_scheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _source_functions import source_functions


class _VerlConfig(types.SimpleNamespace):
    """The attributes verl's functions read from its ActorConfig / AlgoConfig (and their dict-style `get`)."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def load_verl(checkout: Path) -> dict[str, Any]:
    """verl's loss and estimator functions, by name, from a checkout."""
    stats = {"masked_sum", "masked_mean", "masked_var", "masked_whiten"}
    helpers = source_functions(
        checkout / "verl" / "utils" / "torch_functional.py",
        lambda name: name in stats or name in SCHEDULES.values(),
        {
            "torch": torch,
            "math": math,
            "Optimizer": torch.optim.Optimizer,
            "LambdaLR": torch.optim.lr_scheduler.LambdaLR,
        },
    )
    namespace: dict[str, Any] = {
        "torch": torch,
        "np": np,
        "defaultdict": defaultdict,
        "Any": Any,
        "Optional": Optional,
        "os": os,
        "get_device_name": lambda: "cpu",  # groupwise's device policy: CPU here
        "verl_F": types.SimpleNamespace(**{name: helpers[name] for name in stats if name in helpers}),
        "ActorConfig": _VerlConfig,
        "AlgoConfig": type("AlgoConfig", (), {}),  # losses assert their config is not one
    }
    groupwise = checkout / "verl" / "utils" / "groupwise.py"  # the _vectorized estimators' helpers
    if groupwise.exists():
        source_functions(groupwise, lambda name: True, namespace)
    ppo = checkout / "verl" / "trainer" / "ppo"
    functions = source_functions(
        ppo / "core_algos.py", lambda name: name.startswith("compute_") or name == "agg_loss", namespace
    )
    metric_utils = ppo / "metric_utils.py"  # the variance proxies logged with the optimal token baselines
    if metric_utils.exists():
        source_functions(metric_utils, lambda name: name == "compute_variance_proxy_metrics", functions)
    correction = ppo / "rollout_corr_helper.py"
    if correction.exists():
        data_proto = type("DataProto", (), {"from_dict": staticmethod(lambda tensors: _VerlConfig(batch=tensors))})
        corr = source_functions(correction, lambda name: True, {**namespace, "math": math, "DataProto": data_proto})
        functions["rollout_correction_weights"] = corr["compute_rollout_correction_weights"]
        functions["rollout_rejection_mask"] = corr["compute_rollout_rejection_mask"]
        _stand_in_module("verl.trainer.ppo.rollout_corr_helper", corr)  # bypass mode imports it at call time
    functions.update({name: helpers[name] for name in SCHEDULES.values() if name in helpers})
    return functions


def _stand_in_module(name: str, attributes: dict[str, Any]) -> None:
    """Make `from <name> import ...` find `attributes` (only where verl itself is not installed)."""
    if importlib.util.find_spec(name.split(".")[0]) is not None:
        return
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:depth]), types.ModuleType(".".join(parts[:depth])))
    sys.modules[name].__dict__.update(attributes)


def verl_config(cfg: ActorConfig) -> _VerlConfig:
    params = cfg.policy_loss_params
    policy_loss = _VerlConfig(
        clip_cov_ratio=params.clip_cov_ratio,
        clip_cov_lb=params.clip_cov_lb,
        clip_cov_ub=params.clip_cov_ub,
        kl_cov_ratio=params.kl_cov_ratio,
        ppo_kl_coef=params.ppo_kl_coef,
    )
    return _VerlConfig(
        clip_ratio=cfg.clip_ratio_low,
        clip_ratio_low=cfg.clip_ratio_low,
        clip_ratio_high=cfg.clip_ratio_high,
        clip_ratio_c=cfg.clip_ratio_c,
        tau_pos=params.tau_pos,
        tau_neg=params.tau_neg,
        policy_loss=policy_loss,
        global_batch_info={},
    )


def random_loss_batch(seed: int, rows: int = 6, width: int = 9) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, width + 1, (rows,), generator=gen)
    lengths[0] = width
    mask = (torch.arange(width)[None] < lengths[:, None]).float()
    old = -torch.rand(rows, width, generator=gen) * 3
    logprob = old + torch.randn(rows, width, generator=gen) * 0.3
    advantages = torch.randn(rows, generator=gen).round(decimals=1)[:, None].expand(rows, width) * mask
    return logprob, old, advantages, mask


def compare_loss(name: str, verl_fn: Any, agg_mode: str, trials: int) -> tuple[float, float]:
    """Worst |loss or gradient difference| and worst |metric difference| over `trials` batches."""
    cfg = ActorConfig(clip_ratio_low=0.2, clip_ratio_high=0.28, loss_agg_mode=agg_mode)
    params = cfg.policy_loss_params
    params.clip_cov_ratio, params.kl_cov_ratio, params.clip_cov_lb, params.clip_cov_ub = 0.1, 0.05, 0.0, 1.0
    params.ppo_kl_coef = 0.3
    worst_value = worst_metric = 0.0
    for seed in range(trials):
        logprob, old, advantages, mask = random_loss_batch(seed)
        logprob.requires_grad_()
        torch.manual_seed(seed)
        loss_mat, stats = core_algos.POLICY_LOSSES[name](logprob, old, advantages, mask, cfg)
        ours = core_algos.aggregate_loss(loss_mat, mask, core_algos.policy_agg_mode(name, agg_mode))
        (our_grad,) = torch.autograd.grad(ours, logprob)
        torch.manual_seed(seed)
        theirs, metrics = verl_fn(old, logprob, advantages, mask, agg_mode, verl_config(cfg))
        if name == "geo_mean":
            theirs = theirs * len(mask) / (mask.sum(-1) > 0).sum()
        (their_grad,) = torch.autograd.grad(theirs, logprob)
        worst_value = max(worst_value, (ours - theirs).abs().item(), (our_grad - their_grad).abs().max().item())
        for key, value in metrics.items():
            worst_metric = max(worst_metric, abs(stats[key.removeprefix("actor/")].item() - value))
    return worst_value, worst_metric


def random_estimator_batch(seed: int, width: int = 7, holes: bool = False) -> AdvantageInputs:
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 5, (4,), generator=gen)
    group = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    lengths = torch.randint(1, width + 1, (len(group),), generator=gen)
    mask = (torch.arange(width)[None] < lengths[:, None]).float()
    scores = torch.randint(0, 3, (len(group),), generator=gen).float() / 2
    scores += 1e-4 * torch.randint(0, 2, (len(group),), generator=gen)  # near-ties: variances under 1e-6
    values = torch.randn(len(group), width, generator=gen) * mask
    greedy = (torch.randint(0, 3, (len(sizes),), generator=gen).float() / 2)[group]  # remax: per prompt
    logits = torch.randn(len(group), width, 11, generator=gen) * 2  # optimal token baselines: an 11-word policy
    sampled = torch.randint(0, 11, (len(group), width), generator=gen)
    old = core_algos.logprobs_from_logits(logits, sampled)
    if holes:  # tool answers inside responses (never the first token)
        mask[(torch.rand(mask.shape, generator=gen) < 0.15) & (mask.cumsum(-1) > 1)] = 0
    return AdvantageInputs(
        place_scores(scores, mask), mask, group, values, gamma=0.99, lam=0.95, baselines=greedy, old_logprobs=old,
        sum_pi_squared=core_algos.sum_pi_squared_from_logits(logits),
        is_weights=torch.rand(mask.shape, generator=gen) * 2 if seed % 2 else None,
    )  # fmt: skip


def call_verl_estimator(fn: Any, batch: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Call verl's estimator with the arguments its signature names (verl's uids become strings)."""
    offered = {
        "token_level_rewards": batch.token_rewards.clone(),
        "response_mask": batch.response_mask,
        "index": np.array([f"uid{g}" for g in batch.group.tolist()], dtype=object),
        "values": batch.values,
        "reward_baselines": batch.baselines,
        "old_log_probs": batch.old_logprobs,
        "sum_pi_squared": batch.sum_pi_squared,
        "rollout_is_weights": batch.is_weights,
        "gamma": batch.gamma,
        "lam": batch.lam,
        "norm_adv_by_std_in_grpo": batch.norm_by_std,
        "config": _VerlConfig(gamma=batch.gamma, lam=batch.lam, norm_adv_by_std_in_grpo=batch.norm_by_std),
    }
    names = inspect.signature(fn).parameters
    return fn(**{name: value for name, value in offered.items() if name in names})


# npu_rl carries reinforce_plus_plus's return through a response's mask-0 tokens (verl 0.9.1); verl main resets it
HOLES_DIFFER = {"reinforce_plus_plus"}


def compare_estimator(name: str, verl_fn: Any, trials: int, norm_by_std: bool) -> float:
    """Worst |advantage or return difference| on valid tokens over `trials` batches, half of them with
    tool-answer holes in the masks (groups of one skipped for grpo_passk, which both sides refuse)."""
    worst = 0.0
    for seed in range(trials):
        holes = seed % 2 == 1 and name not in HOLES_DIFFER
        batch = dataclasses.replace(random_estimator_batch(seed, holes=holes), norm_by_std=norm_by_std)
        if name == "grpo_passk" and (torch.bincount(batch.group) < 2).any():
            continue
        ours = core_algos.ADV_ESTIMATORS[name](batch)
        theirs = call_verl_estimator(verl_fn, batch)
        for mine, verls in zip(ours, theirs, strict=True):
            worst = max(worst, ((mine - verls) * batch.response_mask).abs().max().item())
    return worst


VERL_ESTIMATOR_NAMES = {"tir_optimal_token_baseline": "compute_multi_turn_optimal_token_baseline_advantage"}


def compare_variance_proxies(verl_fn: Any, trials: int) -> float:
    """Worst |difference| of the five variance_proxy/* metrics for the optimal token baseline's advantages
    (every other batch with rollout IS weights), against verl's compute_variance_proxy_metrics."""
    worst = 0.0
    for seed in range(trials):
        batch = random_estimator_batch(seed, holes=seed % 4 == 1)
        advantages, _ = core_algos.ADV_ESTIMATORS["optimal_token_baseline"](batch)
        grad_norm = 0.1 + seed % 7 / 10
        stats = StepStats()
        record_variance_proxies(stats, token_baselines.variance_proxy_rows(batch, advantages))
        stats.add_max("actor/grad_norm", grad_norm)
        ours = stats.reduce()
        tensors = {
            "old_log_probs": batch.old_logprobs,
            "sum_pi_squared": batch.sum_pi_squared,
            "advantages": advantages,
        }
        tensors["response_mask"] = batch.response_mask
        if batch.is_weights is not None:
            tensors["rollout_is_weights"] = batch.is_weights
        theirs = verl_fn(batch=types.SimpleNamespace(batch=tensors), gradient_norm=grad_norm)
        worst = max(worst, *(abs(ours[key] - float(value)) for key, value in theirs.items()))
    return worst


def verl_estimator(verl: dict[str, Any], name: str) -> Any:
    candidates = (f"compute_{name}_outcome_advantage", f"compute_{name}_advantage_return", f"compute_{name}_advantage")
    return next((verl[c] for c in (VERL_ESTIMATOR_NAMES.get(name), *candidates) if c in verl), None)


# rejection options with bounds that reject some but not most rows of random_loss_batch's log-ratios
REJECTIONS = {
    "token_k1": "0.6_1.5",
    "token_k2": "0.05",
    "token_k3": "0.05",
    "seq_sum_k1": "2.0",
    "seq_sum_k2": "0.3",
    "seq_sum_k3": "0.3",
    "seq_mean_k1": "0.9_1.1",
    "seq_mean_k2": "0.05",
    "seq_mean_k3": "0.05",
    "seq_max_k2": "0.15",
    "seq_max_k3": "0.15",
    "token_k1,seq_mean_k3,seq_max_k2": "0.6_1.5,0.05,0.15",
}


def compare_correction(verl: dict[str, Any], trials: int) -> dict[str, float]:
    """Worst |weight difference| per IS setting and count of differing mask entries per rejection option."""
    worst: dict[str, float] = defaultdict(float)
    for seed in range(trials):
        logprob, old, _, mask = random_loss_batch(seed)
        log_ratio = logprob - old
        for level in ("token", "sequence"):
            for normalize in (False, True):
                ours, _ = rollout_correction.importance_weights(log_ratio, mask, level, 2.0, normalize)
                theirs, _ = verl["rollout_correction_weights"](log_ratio, mask, level, 2.0, normalize)
                key = f"rollout_is={level}" + (" batch_normalize" if normalize else "")
                worst[key] = max(worst[key], (ours - theirs).abs().max().item())
        for options, threshold in REJECTIONS.items():
            rules = rollout_correction.parse_rejection(options, threshold)
            ours, _ = rollout_correction.rejection_mask(log_ratio, mask, rules)
            theirs, _ = verl["rollout_rejection_mask"](log_ratio, mask, options, threshold)
            worst[f"rollout_rs={options}"] += float((ours != theirs).sum())
    return worst


def compare_bypass(verl_fn: Any, loss_type: str, trials: int) -> tuple[float, float]:
    """Bypass mode (token weights, token_k1 rejection) against verl's: worst loss/gradient and metric gaps."""
    cfg = ActorConfig(clip_ratio_low=0.2, clip_ratio_high=0.28)
    correction = RolloutCorrectionConfig(
        rollout_is="token", rollout_rs="token_k1", rollout_rs_threshold="0.6_1.5", bypass_mode=True, loss_type=loss_type
    )
    verl_cfg = verl_config(cfg)
    verl_cfg.policy_loss.rollout_correction = _VerlConfig(**dataclasses.asdict(correction))
    worst_value = worst_metric = 0.0
    for seed in range(trials):
        logprob, rollout, advantages, mask = random_loss_batch(seed)
        if not mask.any():
            continue
        logprob.requires_grad_()
        loss_mat, stats, kept = rollout_correction.bypass_loss(logprob, rollout, advantages, mask, cfg, correction)
        ours = core_algos.aggregate_loss(loss_mat, kept, "token-mean")
        theirs, metrics = verl_fn(rollout, logprob, advantages, mask, "token-mean", verl_cfg)
        grads = [torch.autograd.grad(loss, logprob)[0] for loss in (ours, theirs)]
        worst_value = max(worst_value, (ours - theirs).abs().item(), (grads[0] - grads[1]).abs().max().item())
        worst_metric = max(worst_metric, abs(stats["ppo_kl"].item() - metrics["actor/ppo_kl"]))
        masked = metrics["rollout_corr/rollout_rs_masked_fraction"]
        worst_metric = max(worst_metric, abs(stats["rollout_rs_masked_fraction"].item() - masked))
    return worst_value, worst_metric


SCHEDULES = {"constant": "get_constant_schedule_with_warmup", "cosine": "get_cosine_schedule_with_warmup"}


def compare_schedule(kind: str, verl_fn: Any) -> float:
    """Largest difference of the learning rate at every step of a grid of runs (warmup steps or ratio, total
    steps, floor, cycles) between verl's scheduler, as its FSDP worker builds it, and npu_rl's."""
    worst = 0.0
    grid = [(10, 3, 0.0, 0.0, 0.5), (10, 0, 0.25, 0.1, 0.5), (37, 5, 0.0, 0.2, 1.5), (1, 1, 0.0, 0.0, 0.5)]
    for total, warmup, ratio, floor, cycles in [*grid, (50, 0, 0.0, 0.3, 2.0)]:
        cfg = OptimConfig(lr=1.0, lr_scheduler=kind, lr_warmup_steps=warmup, lr_warmup_steps_ratio=ratio,
                          min_lr_ratio=floor, num_cycles=cycles)  # fmt: skip
        ours_opt, verl_opt = (torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0) for _ in range(2))
        ours = build_scheduler(ours_opt, total, cfg)
        verl_warmup = warmup if warmup else int(ratio * total)  # verl's worker: -1 reads the ratio
        kwargs = {"num_training_steps": total, "min_lr_ratio": floor, "num_cycles": cycles} if kind == "cosine" else {}
        theirs = verl_fn(optimizer=verl_opt, num_warmup_steps=verl_warmup, **kwargs)
        for _ in range(total):
            worst = max(worst, abs(ours.get_last_lr()[0] - theirs.get_last_lr()[0]))
            for opt, sched in ((ours_opt, ours), (verl_opt, theirs)):
                opt.step()
                sched.step()
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verl", type=Path, required=True, help="a verl checkout (the folder holding verl/)")
    parser.add_argument("--trials", type=int, default=200, help="random batches per row")
    args = parser.parse_args(argv)
    verl = load_verl(args.verl)
    prefix = "compute_policy_loss_"
    verl_losses = {name.removeprefix(prefix) for name in verl if name.startswith(prefix)}
    losses = [name for name in core_algos.POLICY_LOSSES.names() if name in verl_losses]
    estimators = [name for name in core_algos.ADV_ESTIMATORS.names() if verl_estimator(verl, name)]
    verl_estimators = {
        name[8:].removesuffix("_outcome_advantage") for name in verl if name.endswith("_outcome_advantage")
    }
    bypass = "compute_policy_loss_bypass_mode" in verl and "rollout_correction_weights" in verl
    covered = {"bypass_mode", "reinforce"} if bypass else set()  # rollout_correction.bypass_mode and its loss_type
    print(f"[verl_parity] {args.trials} random batches per row; verl losses not here: "
          f"{sorted(verl_losses - set(losses) - covered) or 'none'}; verl estimators not here: "
          f"{sorted(verl_estimators - set(estimators)) or 'none'}")  # fmt: skip
    print(f"{'loss':10s} {'loss_agg_mode':22s} {'loss/grad diff':>15s} {'metric diff':>12s}")
    worst = 0.0
    for name in losses:
        for mode in ("token-mean", "seq-mean-token-mean"):
            value, metric = compare_loss(name, verl[f"{prefix}{name}"], mode, args.trials)
            worst = max(worst, value, metric)
            print(f"{name:10s} {mode:22s} {value:15.2e} {metric:12.2e}")
    print(f"{'estimator (adv/return diff)':33s} {'std-normed':>12s} {'no std':>12s}")
    for name in estimators:
        normed, plain = (compare_estimator(name, verl_estimator(verl, name), args.trials, on) for on in (True, False))
        worst = max(worst, normed, plain)
        print(f"{name:33s} {normed:12.2e} {plain:12.2e}")
    if "compute_variance_proxy_metrics" in verl and "optimal_token_baseline" in estimators:
        value = compare_variance_proxies(verl["compute_variance_proxy_metrics"], args.trials)
        worst = max(worst, value)
        print(f"{'variance_proxy/* (optimal_token_baseline)':33s} {value:12.2e}")
    if bypass:
        for loss_type in ("ppo_clip", "reinforce"):
            value, metric = compare_bypass(verl["compute_policy_loss_bypass_mode"], loss_type, args.trials)
            worst = max(worst, value, metric)
            print(f"{'bypass_mode':10s} {'loss_type=' + loss_type:22s} {value:15.2e} {metric:12.2e}")
    for kind, fn_name in SCHEDULES.items():
        if fn_name in verl:
            value = compare_schedule(kind, verl[fn_name])
            worst = max(worst, value)
            print(f"{'lr schedule ' + kind + ' (lr diff)':33s} {value:12.2e}")
    if "rollout_correction_weights" in verl:
        print(f"{'rollout correction':47s} {'weight diff / mask entries differing':>12s}")
        for key, value in compare_correction(verl, args.trials).items():
            worst = max(worst, value)
            print(f"{key:47s} {value:12.3g}")
    return 1 if worst > 1e-6 else 0


if __name__ == "__main__":
    sys.exit(main())
