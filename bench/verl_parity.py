"""npu_rl's policy losses against verl's own functions, on random batches: loss, gradient and metrics.

verl is not a dependency, so this runs against a verl checkout the user points at: its
`verl/trainer/ppo/core_algos.py` is parsed, the `compute_policy_loss_<name>` functions and `agg_loss`
are taken out (decorators dropped) and run with a stand-in for the two `verl_F` helpers they call, on
the same inputs as npu_rl's registered loss of that name, reduced the way each side reduces it.

    python bench/verl_parity.py --verl /path/to/verl [--trials 200]

Every batch has rows of random length (some empty), random advantages with ties and zeros, and
log-ratios of a few tenths, so clips, dual clips and the covariance selections all occur. The random
choice of clip_cov is seeded identically on both sides. verl's geo_mean averages the rows of its
micro-batch with torch.mean (empty rows included), npu_rl the non-empty sequences: the script rescales
verl's value by rows / non-empty rows before comparing (docs/algorithms.md).
"""

from __future__ import annotations

import argparse
import ast
import sys
import types
from pathlib import Path
from typing import Any, Optional

import torch

from npu_rl import core_algos
from npu_rl.config import ActorConfig


class _VerlActorConfig(types.SimpleNamespace):
    """The attributes verl's loss functions read from its ActorConfig (and its dict-style `get`)."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def _masked_sum(values: torch.Tensor, mask: torch.Tensor, axis: Any = None) -> torch.Tensor:
    return (torch.where(mask.bool(), values, 0.0) * mask).sum(axis=axis)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: Any = None) -> torch.Tensor:
    return _masked_sum(values, mask, axis) / (mask.sum(axis=axis) + 1e-8)  # verl's torch_functional


def load_verl_losses(verl: Path) -> dict[str, Any]:
    """verl's `compute_policy_loss_*` functions (by loss name) from a checkout's core_algos.py."""
    path = verl / "verl" / "trainer" / "ppo" / "core_algos.py" if verl.is_dir() else verl
    tree = ast.parse(path.read_text(encoding="utf-8"))
    wanted = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and (node.name.startswith("compute_policy_loss_") or node.name == "agg_loss")
    ]
    for node in wanted:
        node.decorator_list = []
    namespace: dict[str, Any] = {
        "torch": torch,
        "Any": Any,
        "Optional": Optional,
        "verl_F": types.SimpleNamespace(masked_sum=_masked_sum, masked_mean=_masked_mean),
        "ActorConfig": _VerlActorConfig,
        "AlgoConfig": type("AlgoConfig", (), {}),
    }
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    prefix = "compute_policy_loss_"
    return {name.removeprefix(prefix): fn for name, fn in namespace.items() if name.startswith(prefix)}


def verl_config(cfg: ActorConfig) -> _VerlActorConfig:
    params = cfg.policy_loss_params
    policy_loss = types.SimpleNamespace(
        clip_cov_ratio=params.clip_cov_ratio,
        clip_cov_lb=params.clip_cov_lb,
        clip_cov_ub=params.clip_cov_ub,
        kl_cov_ratio=params.kl_cov_ratio,
        ppo_kl_coef=params.ppo_kl_coef,
    )
    return _VerlActorConfig(
        clip_ratio=cfg.clip_ratio_low,
        clip_ratio_low=cfg.clip_ratio_low,
        clip_ratio_high=cfg.clip_ratio_high,
        clip_ratio_c=cfg.clip_ratio_c,
        tau_pos=params.tau_pos,
        tau_neg=params.tau_neg,
        policy_loss=policy_loss,
        global_batch_info={},
    )


def random_batch(seed: int, rows: int = 6, width: int = 9) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, width + 1, (rows,), generator=gen)
    lengths[0] = width
    mask = (torch.arange(width)[None] < lengths[:, None]).float()
    old = -torch.rand(rows, width, generator=gen) * 3
    logprob = old + torch.randn(rows, width, generator=gen) * 0.3
    advantages = torch.randn(rows, generator=gen).round(decimals=1)[:, None].expand(rows, width) * mask
    return logprob, old, advantages, mask


def compare(name: str, verl_fn: Any, agg_mode: str, trials: int) -> tuple[float, float]:
    """Worst |loss or gradient difference| and worst |metric difference| over `trials` batches."""
    cfg = ActorConfig(clip_ratio_low=0.2, clip_ratio_high=0.28, loss_agg_mode=agg_mode)
    params = cfg.policy_loss_params
    params.clip_cov_ratio, params.kl_cov_ratio, params.clip_cov_lb, params.clip_cov_ub = 0.1, 0.05, 0.0, 1.0
    params.ppo_kl_coef = 0.3
    worst_value = worst_metric = 0.0
    for seed in range(trials):
        logprob, old, advantages, mask = random_batch(seed)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verl", type=Path, required=True, help="a verl checkout (or its core_algos.py)")
    parser.add_argument("--trials", type=int, default=200, help="random batches per loss and mode")
    args = parser.parse_args(argv)
    verl = load_verl_losses(args.verl)
    shared = [name for name in core_algos.POLICY_LOSSES.names() if name in verl]
    print(f"[verl_parity] {args.trials} random batches per row; verl losses not here: "
          f"{sorted(set(verl) - set(shared)) or 'none'}")  # fmt: skip
    print(f"{'loss':10s} {'loss_agg_mode':22s} {'loss/grad diff':>15s} {'metric diff':>12s}")
    failed = False
    for name in shared:
        for mode in ("token-mean", "seq-mean-token-mean"):
            value, metric = compare(name, verl[name], mode, args.trials)
            failed |= value > 1e-6 or metric > 1e-6
            print(f"{name:10s} {mode:22s} {value:15.2e} {metric:12.2e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
