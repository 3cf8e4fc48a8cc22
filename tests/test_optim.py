"""npu_rl.optim: the learning-rate schedules, step for step as verl's (bench/verl_parity.py runs verl's own)."""

from __future__ import annotations

import pytest
import torch

from npu_rl.config import OptimConfig
from npu_rl.optim import build_scheduler


def _rates(total: int, **cfg: object) -> list[float]:
    """The rate each of `total` optimizer steps uses (what actor/lr logs), as multiples of lr."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = build_scheduler(opt, total, OptimConfig(lr=1.0, **cfg))
    rates = []
    for _ in range(total):
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return rates


def test_warmup_starts_at_zero_as_in_verl():
    # verl's get_constant_schedule_with_warmup: step / warmup, so its first step has rate 0
    assert _rates(6, lr_warmup_steps=4) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # the ratio form: int(0.3 * 10) = 3 warmup steps
    assert _rates(10, lr_warmup_steps_ratio=0.3)[:5] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0])


COS_PI_4 = 2**-0.5  # cos(pi / 4)
COS_PI_8 = (2 + 2**0.5) ** 0.5 / 2  # cos(pi / 8)


@pytest.mark.parametrize(
    ("cycles", "expected"),
    [
        # warmup 2, then progress p = (step - 2) / 8 and rate 0.1 + 0.9 * (1 + cos(2 pi cycles p)) / 2
        (0.5, {2: 1.0, 4: 0.1 + 0.9 * (1 + COS_PI_4) / 2, 6: 0.55, 9: 0.1 + 0.9 * (1 - COS_PI_8) / 2}),
        # a whole wave: at the floor half way (cos pi = -1), back up towards 1 (cos 7 pi / 4 at step 9)
        (1.0, {2: 1.0, 6: 0.1, 9: 0.1 + 0.9 * (1 + COS_PI_4) / 2}),
    ],
)
def test_cosine_follows_num_cycles_down_to_the_floor(cycles, expected):
    rates = _rates(10, lr_warmup_steps=2, lr_scheduler="cosine", min_lr_ratio=0.1, num_cycles=cycles)
    assert rates[:2] == [0.0, 0.5]
    for step, rate in expected.items():
        assert rates[step] == pytest.approx(rate), step
    assert min(rates[2:]) >= 0.1
