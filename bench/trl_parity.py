"""npu_rl's versions of TRL's GRPO pieces against TRL's own code, on random batches.

TRL is not a dependency, so this runs against a TRL checkout the user points at: the static methods of
`GRPOTrainer` in `trl/trainer/grpo_trainer.py` that npu_rl reimplements are parsed out of the file
(decorators dropped) and run on the same inputs as npu_rl's function:

- `get_off_policy_mask` (DeepSeek-V3.2's off-policy sequence masking) against
  `npu_rl.algos.off_policy_mask.off_policy_keep` (`actor.off_policy_mask_threshold`);
- `get_gamma_weights` (VESPO's sequence weight) against `actor.policy_loss=vespo`'s per-token loss
  -phi A log pi (the weight is recovered from it) for both advantage signs.

    python bench/trl_parity.py --trl /path/to/trl [--trials 200]

Batches: rows of random length (some empty), advantages of both signs and zeros (one per sequence, as
TRL has them), log-ratios from a few hundredths to a few units (so masks flip and gamma weights span
their range). Prints the worst difference per row; exits 1 when any exceeds 1e-6.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from npu_rl import core_algos
from npu_rl.algos.off_policy_mask import off_policy_keep
from npu_rl.config import ActorConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _source_functions import source_functions

WANTED = ("get_off_policy_mask", "get_gamma_weights")


def load_trl(checkout: Path) -> dict:
    """TRL's static methods of GRPOTrainer that npu_rl has its own version of, by name."""
    path = checkout / "trl" / "trainer" / "grpo_trainer.py"
    if not path.is_file():
        raise SystemExit(f"{path} not found: --trl must be a TRL checkout (the folder holding trl/)")
    return source_functions(path, WANTED.__contains__, {"torch": torch, "math": math}, within_class="GRPOTrainer")


def random_batch(seed: int, rows: int = 6, width: int = 9) -> tuple[torch.Tensor, ...]:
    """(sequence advantages [N, 1], log pi [N, T], sampler/old log pi [N, T], mask [N, T])."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, width + 1, (rows,), generator=gen)
    mask = (torch.arange(width)[None] < lengths[:, None]).float()
    advantages = torch.randint(-2, 3, (rows, 1), generator=gen).float() / 2
    logprob = -torch.rand(rows, width, generator=gen) * 3
    scale = 10 ** torch.empty(rows, 1).uniform_(-2, 0.5, generator=gen)
    old = logprob + torch.randn(rows, width, generator=gen) * scale
    return advantages, logprob, old, mask


def compare_off_policy_mask(trl_fn, trials: int) -> float:
    worst = 0.0
    for seed in range(trials):
        advantages, logprob, sampler, mask = random_batch(seed)
        for threshold in (0.05, 0.5, 2.0):
            theirs = trl_fn(advantages, logprob, sampler, mask, threshold)  # [N, 1]
            ours = off_policy_keep(advantages.expand_as(mask), logprob, sampler, mask, threshold)
            worst = max(worst, float((ours - theirs.expand_as(ours)).abs().max()))
    return worst


def compare_gamma_weights(trl_fn, trials: int) -> float:
    worst = 0.0
    cfg = ActorConfig()
    for seed in range(trials):
        advantages, logprob, old, mask = random_batch(seed)
        theirs = trl_fn(advantages, logprob - old, mask, None)  # [N, 1], TRL's default k and lambda
        loss_mat, _ = core_algos.POLICY_LOSSES["vespo"](logprob, old, advantages.expand_as(mask), mask, cfg)
        # ours is -phi A log pi: compare it with TRL's phi in the same expression, on valid tokens
        expected = -theirs * advantages * logprob
        worst = max(worst, float(((loss_mat - expected) * mask).abs().max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trl", type=Path, required=True, help="a TRL checkout (the folder holding trl/)")
    parser.add_argument("--trials", type=int, default=200, help="random batches per row")
    args = parser.parse_args(argv)
    trl = load_trl(args.trl)
    missing = [name for name in WANTED if name not in trl]
    print(f"[trl_parity] {args.trials} random batches per row; not in this checkout: {missing or 'none'}")
    rows = {
        "get_off_policy_mask vs actor.off_policy_mask_threshold": (compare_off_policy_mask, "get_off_policy_mask"),
        "get_gamma_weights vs actor.policy_loss=vespo": (compare_gamma_weights, "get_gamma_weights"),
    }
    worst = 0.0
    for label, (compare, name) in rows.items():
        if name in trl:
            value = compare(trl[name], args.trials)
            worst = max(worst, value)
            print(f"{label:56s} {value:10.2e}")
    return 1 if worst > 1e-6 else 0


if __name__ == "__main__":
    sys.exit(main())
